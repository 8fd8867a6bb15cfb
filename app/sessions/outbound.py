"""One connection's outgoing events, in order, with answer audio paced to real time.

Audio of a response is sent at most `ahead_s` ahead of real-time playback (as Pipecat paces its
output), so that when the user barges in there is little queued audio to flush: `purge` drops what
a cancelled response still had waiting, and the client has at most `ahead_s` buffered.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.sessions.events import ServerEvent


@dataclass
class _Item:
    event: ServerEvent | None = None  # None: a callback that runs when its turn comes
    response_id: str | None = None
    audio_seconds: float = 0.0
    on_sent: Callable[[], None] | None = None


@dataclass
class _Pace:
    started: float | None = None
    sent_seconds: float = 0.0


@dataclass
class Outbound:
    """A FIFO of events; audio items wait for their turn in real time."""

    send: Callable[[ServerEvent], Awaitable[None]]
    ahead_s: float = 0.5
    _items: deque[_Item] = field(default_factory=deque)
    _ready: asyncio.Event = field(default_factory=asyncio.Event)
    _pace: dict[str, _Pace] = field(default_factory=dict)
    _closed: bool = False

    def put(
        self, event: ServerEvent, response_id: str | None = None, on_sent: Callable[[], None] | None = None
    ) -> None:
        """Queue an event; tagged with `response_id` it is dropped if that response is purged."""
        self._items.append(_Item(event=event, response_id=response_id, on_sent=on_sent))
        self._ready.set()

    def put_audio(
        self, event: ServerEvent, response_id: str, seconds: float, on_sent: Callable[[], None] | None = None
    ) -> None:
        """Queue an audio delta of `seconds` of playback; it leaves no earlier than pacing allows."""
        self._items.append(
            _Item(event=event, response_id=response_id, audio_seconds=seconds, on_sent=on_sent)
        )
        self._ready.set()

    def then(self, callback: Callable[[], None]) -> None:
        """Run `callback` once everything queued before it has been sent."""
        self._items.append(_Item(on_sent=callback))
        self._ready.set()

    def purge(self, response_id: str) -> int:
        """Drop every queued item of a response; returns how many were dropped."""
        kept = deque(item for item in self._items if item.response_id != response_id)
        dropped = len(self._items) - len(kept)
        self._items = kept
        return dropped

    def audio_sent_seconds(self, response_id: str) -> float:
        pace = self._pace.get(response_id)
        return pace.sent_seconds if pace else 0.0

    def close(self) -> None:
        self._closed = True
        self._ready.set()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) until everything queued has been sent."""
        deadline = time.monotonic() + timeout
        while self._items and time.monotonic() < deadline and not self._closed:
            await asyncio.sleep(0.01)

    async def run(self) -> None:
        """Send items in order until closed."""
        while not self._closed:
            if not self._items:
                self._ready.clear()
                await self._ready.wait()
                continue
            item = self._items[0]
            if item.audio_seconds > 0:
                wait = self._wait_for(item)
                if wait > 0:
                    await asyncio.sleep(min(wait, 0.05))
                    continue  # re-check: the item may have been purged meanwhile
            self._items.popleft()
            if item.audio_seconds > 0:
                pace = self._pace.setdefault(item.response_id, _Pace())
                if pace.started is None:
                    pace.started = time.monotonic()
                pace.sent_seconds += item.audio_seconds
            if item.event is not None:
                await self.send(item.event)
            if item.on_sent is not None:
                item.on_sent()

    def _wait_for(self, item: _Item) -> float:
        pace = self._pace.get(item.response_id)
        if pace is None or pace.started is None:
            return 0.0
        played = time.monotonic() - pace.started
        return pace.sent_seconds - self.ahead_s - played
