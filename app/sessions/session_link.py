"""A session's stream of server messages, carried by whichever connection holds the session now.

`RealtimeSession` sends through a `SessionLink` instead of a socket. The link renders each event for
the session's dialect, numbers it in the session's `SentLog` (when the session is resumable) and
writes it to the current connection. When the connection is lost the link is detached: nothing is
written, the session's queues keep filling (the engine goes on generating, up to its audio-ahead
limit). A resume attaches a new connection: `session.created` first, then every message after the
ones the client says it received, paced again as answer audio, then the live stream.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from app.sessions.events import ServerEvent, SessionCreated
from app.sessions.outbound import Outbound, ReplayedMessage
from app.sessions.sent_log import ReplayGapError, SentLog
from app.socket_buffers import LAST_WORD

EXTENSION_FIELD = "freeze_omni"  # the extension object on session.created (and on shutdown errors)


class RawFrame(ServerEvent):
    """A binary frame as it was first written, sent again after a resume (its response number kept)."""

    type: str = "x.raw_frame"
    frame: bytes = b""

    def payload(self, dialect: Any = "ga") -> None:
        return None


class Connection(Protocol):
    """One WebSocket connection, as the link writes to it."""

    async def send_message(self, message: dict[str, Any]) -> bool:
        """Write an ASGI send message; False when the peer is gone."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


@dataclass
class ResumePoint:
    """Where a resumed stream goes on from: `received` messages the client has (the count it goes on
    from), `replayed` messages sent again; `problem` says what was wrong with the client's count."""

    received: int
    replayed: int
    problem: tuple[str, str] | None = None  # (error code, message)


@dataclass
class SessionLink:
    """Renders, numbers and writes one session's messages; survives its connections."""

    connection: Connection | None
    dialect: str
    log: SentLog | None = None  # None: the session cannot be resumed (nothing kept)
    greeting_extension: dict[str, Any] = field(default_factory=dict)  # on session.created
    on_close: Callable[[int, str], None] | None = None  # the session asked to close (it is over)
    outbound: Outbound | None = None  # set once the session exists
    ended: bool = False  # the server ended the session: it is not to be resumed
    _writers: dict[asyncio.Task, bool] = field(default_factory=dict)  # tasks writing now: abandoned?

    def render(self, event: ServerEvent | bytes, extension: dict[str, Any] | None = None) -> dict | None:
        """The ASGI message for `event`, or None when the event does not exist in the dialect."""
        if isinstance(event, RawFrame):
            event = event.frame
        if isinstance(event, bytes):  # a binary audio frame (app.sessions.binary_frames)
            return {"type": "websocket.send", "bytes": event}
        if extension is None and isinstance(event, SessionCreated):
            extension = self.greeting_extension
        payload = event.payload(self.dialect)
        if payload is None:
            return None
        if extension:
            payload[EXTENSION_FIELD] = extension
        return {"type": "websocket.send", "text": json.dumps(payload, separators=(",", ":"))}

    async def send(self, event: ServerEvent | bytes, extension: dict[str, Any] | None = None) -> None:
        """Number and write one message (a parked session only numbers and keeps it)."""
        message = self.render(event, extension)
        if message is None:
            return
        seq = None
        if self.log is not None and not isinstance(event, SessionCreated):
            seq = self._record(event).seq
        connection = self.connection
        if connection is None:
            return
        if await self._write(connection, message) and seq is not None:
            self.log.mark_written(seq)

    def _record(self, event: ServerEvent | bytes):
        item = self.outbound.emitting if self.outbound is not None else None
        # The item being sent is this event's (a binary frame is always the outbound's packet), unless
        # the event was sent directly (an error) while the outbound waits on a slow send.
        if item is not None and (item.event is event or isinstance(event, bytes | RawFrame)):
            return self.log.record(event, item.response_id, item.audio_seconds, item.audio_offset_s)
        return self.log.record(event)

    async def _write(self, connection: Connection, message: dict[str, Any]) -> bool:
        """Write, unless the link is detached meanwhile: a write stuck on a connection that looks alive but
        is not (a resume took the session over) is abandoned; the message is numbered, so the resume
        sends it again. (Racing each write against the detach in a task of its own cost 0.1 ms a message.)"""
        task = asyncio.current_task()
        assert task is not None
        self._writers[task] = False
        try:
            return await connection.send_message(message)
        except asyncio.CancelledError:
            if not self._writers.get(task):
                raise
            if task.uncancel() > 0:  # cancelled by someone else too: that one stands
                raise
            return False  # the cancel was ours, to abandon this write: not the caller's
        finally:
            self._writers.pop(task, None)

    async def close(self, code: int, reason: str, notice: ServerEvent | None = None) -> None:
        """The session ends itself (idle, expired, failed, slow client): close the connection, if any.
        `notice` (an error saying why) goes just before the close frame; neither waits for a client that
        reads nothing (`LAST_WORD`, see `app.socket_buffers`)."""
        self.ended = True
        connection = self.connection
        if self.on_close is not None:
            self.on_close(code, reason)
        if connection is None:
            return
        message = self.render(notice) if notice is not None else None
        if message is not None:
            message[LAST_WORD] = True
            if not await self._write(connection, message):
                return  # the peer is gone: there is nothing left to close
        await connection.close(code, reason)

    @property
    def attached(self) -> bool:
        return self.connection is not None

    def detach(self) -> Connection | None:
        """Stop writing (a lost connection, or one a resume takes over); returns the connection."""
        connection, self.connection = self.connection, None
        if self.outbound is not None:
            self.outbound.detach()
        current = asyncio.current_task()
        for writer, abandoned in list(self._writers.items()):
            if writer is not current and not abandoned:
                self._writers[writer] = True
                writer.cancel()
        return connection

    async def attach(
        self, connection: Connection, received: int | None, greeting: ServerEvent
    ) -> ResumePoint:
        """Carry on over `connection`: `greeting` first, then what the client missed, then the live stream.

        `received` is the client's count of messages it got (None: it did not say; the stream goes on
        from the first message no socket took).
        """
        assert self.log is not None and self.outbound is not None
        point = self._resume_point(received)
        replay = self.log.after(point.received)
        point.replayed = len(replay)
        self.log.rewind(point.received)
        extension = {**self.greeting_extension, "resumed": True, "received": point.received}
        extension["replayed"] = point.replayed
        self.connection = connection
        message = self.render(greeting, extension)
        if message is not None:
            await self._write(connection, message)
        self.outbound.replay(
            [
                ReplayedMessage(_as_event(m.event), m.response_id, m.audio_seconds, m.audio_offset_s)
                for m in replay
            ]
        )
        self.outbound.attach()
        return point

    def _resume_point(self, received: int | None) -> ResumePoint:
        log = self.log
        if received is None:
            start = log.written
        elif received > log.last_seq or received < 0:
            message = (
                f"received={received}, but this session has sent {log.last_seq} message(s) (besides "
                f"session.created); going on from the {log.written} the server wrote"
            )
            return self._kept_from(log.written, ("invalid_value", message))
        else:
            start = received
        return self._kept_from(start, None)

    def _kept_from(self, start: int, problem: tuple[str, str] | None) -> ResumePoint:
        try:
            self.log.after(start)
        except ReplayGapError as gap:
            kept_from = self.log.oldest_kept - 1
            message = f"{gap}: they are lost; going on from message {kept_from + 1}"
            return ResumePoint(kept_from, 0, problem or ("resume_incomplete", message))
        return ResumePoint(start, 0, problem)


def _as_event(event: ServerEvent | bytes) -> ServerEvent:
    """Replayed messages go back through the session's outbound, which takes events."""
    return RawFrame(frame=event) if isinstance(event, bytes) else event
