"""One connection's outgoing events: a control lane sent at once, and a paced lane for responses.

Control events (errors, session and input-buffer events) never wait behind answer audio. Events of
a response keep their order, and its audio is sent at most `ahead_s` ahead of real-time playback
(as Pipecat paces its output), so that when the user barges in there is little queued audio to
flush: `purge` drops what a cancelled response still had waiting.

A response can be held (`hold`: nothing more of it leaves, at once) and later resumed from a point of
its audio (`resume`: the replayed audio goes first, paced anew), which is how an interruption pauses an
answer and a backchannel lets it go on.

A resumable session's whole stream can be detached from its connection (`detach`: nothing leaves, the
queues keep filling, and a send in progress is not counted as a stall) and attached again, after
`replay` has put back in front what the lost connection swallowed (see `app.sessions.session_link`).

Bounded: a client that stops reading makes our socket sends block. `stalled_s` says for how long the
client has taken nothing (so how many seconds of real-time audio it has fallen behind), and control
events beyond `max_control_events` are not queued (`overflowed`): the session closes such a client
(see `RealtimeSession`) before its queues can grow without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.sessions.events import ServerEvent

# The response lane's tag for replayed control events: they keep their place among the replayed
# messages (a control event that went out between two audio deltas goes out between them again).
_REPLAYED = "(replayed)"


@dataclass
class _Item:
    event: ServerEvent | None = None  # None: a callback that runs when its turn comes
    response_id: str | None = None
    audio_seconds: float = 0.0
    on_sent: Callable[[], None] | None = None
    audio_offset_s: float = 0.0  # seconds of its response's audio sent before it (set when it leaves)


@dataclass(frozen=True)
class ReplayedMessage:
    """A message sent before on a connection that was lost, to be sent again (see `Outbound.replay`)."""

    event: ServerEvent
    response_id: str | None
    audio_seconds: float
    audio_offset_s: float


@dataclass
class _Pace:
    """The response's audio timeline: `sent_seconds` of it were sent; playback of second 0 began at `started`."""

    started: float | None = None
    sent_seconds: float = 0.0


@dataclass(frozen=True)
class QueuedAudio:
    """An audio delta to (re)send: the event, its playback seconds and what to run once it is sent."""

    event: ServerEvent
    seconds: float
    on_sent: Callable[[], None] | None = None


@dataclass
class Outbound:
    """Two FIFOs; the response lane's audio waits for its turn in real time."""

    send: Callable[[ServerEvent], Awaitable[None]]
    ahead_s: float = 0.5
    max_control_events: int = 1000
    overflowed: bool = False  # a control event was refused: the client is not reading
    _sending_since: float | None = None
    _control: deque[_Item] = field(default_factory=deque)
    _responses: deque[_Item] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _pace: dict[str, _Pace] = field(default_factory=dict)
    _held: set[str] = field(default_factory=set)
    _closed: bool = False
    _detached: bool = False
    emitting: _Item | None = None  # the item being sent right now (its lane, audio and offset)
    last_sent_at: float = field(default_factory=time.monotonic)  # when the last event went out

    def put(
        self, event: ServerEvent, response_id: str | None = None, on_sent: Callable[[], None] | None = None
    ) -> None:
        """Queue an event: with `response_id` in that response's ordered lane, else at once."""
        lane = self._responses if response_id is not None else self._control
        if response_id is None and len(self._control) >= self.max_control_events:
            self.overflowed = True
            return
        lane.append(_Item(event=event, response_id=response_id, on_sent=on_sent))
        self._ready.set()

    def put_audio(
        self, event: ServerEvent, response_id: str, seconds: float, on_sent: Callable[[], None] | None = None
    ) -> None:
        """Queue an audio delta of `seconds` of playback; it leaves no earlier than pacing allows."""
        self._responses.append(
            _Item(event=event, response_id=response_id, audio_seconds=seconds, on_sent=on_sent)
        )
        self._ready.set()

    def then(self, callback: Callable[[], None], response_id: str) -> None:
        """Run `callback` once everything queued before it for the response has been sent."""
        self._responses.append(_Item(response_id=response_id, on_sent=callback))
        self._ready.set()

    def purge(self, response_id: str) -> int:
        """Drop every queued item of a response (and any hold on it); returns how many were dropped."""
        kept = deque(item for item in self._responses if item.response_id != response_id)
        dropped = len(self._responses) - len(kept)
        self._responses = kept
        self._held.discard(response_id)
        self._ready.set()
        return dropped

    def hold(self, response_id: str) -> float:
        """Send nothing more of the response until `resume` or `purge`, from now on.

        Returns how much of its audio the client has played by now, in seconds: real time since its
        first audio left, at most what was sent (a client plays what it gets at real-time pace).
        """
        self._held.add(response_id)
        return self.played_s(response_id)

    def played_s(self, response_id: str) -> float:
        """How much of the response's audio the client has played by now: real time since its first
        audio left (underruns allowed for), at most what was sent."""
        pace = self._pace.get(response_id)
        if pace is None or pace.started is None:
            return 0.0
        return max(0.0, min(pace.sent_seconds, time.monotonic() - pace.started))

    def held(self, response_id: str) -> bool:
        """Whether the response is held."""
        return response_id in self._held

    def resume(self, response_id: str, from_seconds: float, replay: list[QueuedAudio]) -> None:
        """Send the held response again: first `replay` (its audio from `from_seconds` that the client
        dropped), then what was queued, paced as if playback restarted at `from_seconds` now."""
        replayed = [
            _Item(event=a.event, response_id=response_id, audio_seconds=a.seconds, on_sent=a.on_sent)
            for a in replay
        ]
        self._responses.extendleft(reversed(replayed))
        self._pace[response_id] = _Pace(started=time.monotonic() - from_seconds, sent_seconds=from_seconds)
        self._held.discard(response_id)
        self._ready.set()

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    @property
    def detached(self) -> bool:
        """Whether the stream is detached from any connection (a session parked for resume)."""
        return self._detached

    def detach(self) -> None:
        """Send nothing until `attach`; what is queued stays queued."""
        self._detached = True
        self._ready.set()

    def attach(self) -> None:
        """Send again (after a resume)."""
        self._detached = False
        self._ready.set()

    def replay(self, messages: list[ReplayedMessage]) -> None:
        """Put `messages` back in front of everything queued, in order, to go out first (control events
        queued meanwhile follow them).

        Each response with audio among them is paced anew from its first replayed audio: the client ran
        dry while its connection was down, so its playback restarts there. Audio of a held response is
        left out (its `resume` sends the audio again from where the client stopped playing).
        """
        items = []
        for message in messages:
            if message.audio_seconds > 0 and message.response_id in self._held:
                continue
            if message.audio_seconds > 0 and message.response_id is not None:
                replayed_from = self._pace.setdefault(message.response_id, _Pace())
                if not any(i.response_id == message.response_id and i.audio_seconds > 0 for i in items):
                    replayed_from.started = None
                    replayed_from.sent_seconds = message.audio_offset_s
            items.append(
                _Item(
                    event=message.event,
                    response_id=message.response_id or _REPLAYED,
                    audio_seconds=message.audio_seconds,
                )
            )
        # Control events queued while detached come after the replay (they happened after it), still
        # ahead of the responses' unsent events.
        for waiting in self._control:
            waiting.response_id = _REPLAYED
            items.append(waiting)
        self._control.clear()
        self._responses.extendleft(reversed(items))
        self._ready.set()

    def stalled_s(self) -> float:
        """How long the send in progress has been waiting for the client (0 when none is, or detached)."""
        started = self._sending_since
        return 0.0 if started is None or self._detached else time.monotonic() - started

    def queued_audio_s(self) -> float:
        """Seconds of answer audio queued and not yet sent."""
        return sum(item.audio_seconds for item in self._responses)

    def discard_all(self) -> None:
        """Drop everything queued (a client that is being closed for not reading)."""
        self._control.clear()
        self._responses.clear()
        self._pace.clear()
        self._held.clear()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until everything queued has been sent."""
        deadline = time.monotonic() + timeout
        while (self._control or self._responses) and time.monotonic() < deadline and not self._closed:
            await asyncio.sleep(0.01)

    async def run(self) -> None:
        """Send items until closed: control first, then the response lane as pacing allows."""
        while not self._closed:
            if self._detached:
                self._ready.clear()
                await self._ready.wait()
                continue
            if self._control:
                await self._emit(self._control.popleft())
                continue
            if not self._responses:
                self._ready.clear()
                await self._ready.wait()
                continue
            item = self._responses[0]
            if item.response_id in self._held:
                # A held response blocks its lane; control events still go out.
                self._ready.clear()
                await self._ready.wait()
                continue
            wait = self._wait_for(item)
            if wait > 0:
                # Wake early for control events or a purge; otherwise when the audio is due.
                self._ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._ready.wait(), min(wait, 0.05))
                continue
            self._responses.popleft()
            if item.audio_seconds > 0:
                pace = self._pace.setdefault(item.response_id, _Pace())
                now = time.monotonic()
                if pace.started is None or now - pace.started > pace.sent_seconds:
                    # First audio, or the client ran dry waiting for this delta: its playback
                    # (re)starts now, so the timeline does too (no burst to "catch up").
                    pace.started = now - pace.sent_seconds
                item.audio_offset_s = pace.sent_seconds
                pace.sent_seconds += item.audio_seconds
            await self._emit(item)

    async def _emit(self, item: _Item) -> None:
        if item.event is not None:
            self._sending_since = time.monotonic()
            self.emitting = item
            try:
                await self.send(item.event)
            finally:
                self._sending_since = None
                self.emitting = None
            self.last_sent_at = time.monotonic()
        if item.on_sent is not None:
            item.on_sent()

    def describe(self) -> dict:
        """What the queues hold and what the next response item waits for, for a log line."""
        head = self._responses[0] if self._responses else None
        return {
            "control": len(self._control),
            "responses": len(self._responses),
            "queued_audio_s": round(self.queued_audio_s(), 2),
            "head": None
            if head is None
            else {
                "event": head.event.type if head.event is not None else "(callback)",
                "response": head.response_id,
                "audio_s": head.audio_seconds,
                "wait_s": round(self._wait_for(head), 2),
            },
            "held": sorted(self._held),
            "detached": self._detached,
            "closed": self._closed,
            "sending_for_s": round(self.stalled_s(), 2),
        }

    def _wait_for(self, item: _Item) -> float:
        if item.audio_seconds <= 0:
            return 0.0
        pace = self._pace.get(item.response_id)
        if pace is None or pace.started is None:
            return 0.0
        return pace.sent_seconds - self.ahead_s - (time.monotonic() - pace.started)
