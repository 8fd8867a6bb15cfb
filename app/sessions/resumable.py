"""A served session that can outlive its connection: the `RealtimeSession`, its link, its resume token.

The route opens one per new session and passes it each connection's messages. When a connection is
lost without a close frame (a network change, a dropped TCP connection) the session is parked in the
`ResumeRegistry` for the grace time instead of ended: its answer goes on generating, its engine place
and its API key's place stay taken. A client that comes back with the token (`resume`) gets it over
the new connection; one that does not is ended when the grace time is over. A resume that arrives while
the old connection still looks alive takes over: the old connection is closed (4001).

Timers while parked: the idle timeout does not run (the client cannot send), the maximum session
length does (it counts from the session's start, across resumes), and draining (SIGTERM) or an engine
failure ends parked sessions at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from app.sessions.close_codes import CloseCode
from app.sessions.events import ErrorDetail, ErrorEvent, SessionCreated
from app.sessions.realtime import RealtimeSession
from app.sessions.resume_registry import ResumeRegistry
from app.sessions.session_link import Connection, SessionLink

log = logging.getLogger(__name__)
CLIENT_ENDED = (CloseCode.NORMAL, CloseCode.GOING_AWAY)  # a client closing with these ends its session
TAKEN_OVER_CLOSE = 4001  # the session was resumed on another connection


class ResumableSession:
    """One session across its connections; `on_ended` runs once when it is over for good."""

    def __init__(
        self,
        session: RealtimeSession,
        link: SessionLink,
        registry: ResumeRegistry,
        session_key: str,
        instance_id: str,
        api_key: str | None,
        on_ended: Callable[[ResumableSession], None],
    ) -> None:
        self.session = session
        self.link = link
        self.registry = registry
        self.session_key = session_key
        self.instance_id = instance_id
        self.api_key = api_key
        self._on_ended = on_ended
        self._ended = False
        self._closing_old: set[asyncio.Task] = set()
        self._ending: asyncio.Task | None = None
        link.on_close = self._closed_by_session
        self._grant_token()

    def _closed_by_session(self, code: int, reason: str) -> None:
        """The session closed itself (idle, expired, failed): a parked one ends now, in a task of its own
        (the caller is one of the session's tasks, which ending it cancels)."""
        if self.parked and self._ending is None:
            self._ending = asyncio.create_task(self.end(), name="end-parked")

    def _grant_token(self) -> None:
        extension: dict[str, Any] = {"session_key": self.session_key, "instance_id": self.instance_id}
        if self.registry.enabled:
            extension["resume_token"] = self.registry.issue(self, self.api_key)
            extension["resume_grace_s"] = self.registry.grace_s
        self.link.greeting_extension = extension

    @property
    def live_tasks(self) -> int:
        """The session's running tasks (none must outlive it)."""
        return self.session.live_tasks

    @property
    def parked(self) -> bool:
        return not self.link.attached and not self._ended

    # -- connections --------------------------------------------------------------------------------------
    def serves(self, connection: Connection) -> bool:
        """Whether `connection` still carries this session (a resume elsewhere takes it away)."""
        return self.link.connection is connection and not self._ended

    async def connection_lost(self, connection: Connection, close_code: int | None, can_park: bool) -> None:
        """`connection` ended: park the session for a resume, or end it.

        It is parked only when the client left without saying so (no close frame, or an odd code),
        the server did not end it, and `can_park` (the process is not draining).
        """
        if self.link.connection is not connection or self._ended:
            return  # a resume took the session over: the new connection carries it
        client_ended = close_code in CLIENT_ENDED
        if client_ended or self.link.ended or not can_park or not self.registry.park(self):
            await self.end()
            return
        self.link.detach()
        # The client cannot send while away: the idle clock stops (it restarts on resume), and the
        # registry ends the session after the grace time, well before the idle timeout would.
        self.session.last_activity = time.monotonic() + self.registry.grace_s
        log.info(
            "session %s: connection lost (close code %s); parked for %.1f s for a resume",
            self.session.session_id,
            close_code,
            self.registry.grace_s,
        )

    async def resume(self, connection: Connection, received: int | None) -> None:
        """Carry the session on over `connection` (the registry has handed it over)."""
        old = self.link.detach()
        if old is not None:  # the old connection still looked alive: it is closed, in the background
            task = asyncio.create_task(
                old.close(TAKEN_OVER_CLOSE, "session resumed on another connection"), name="close-taken-over"
            )
            self._closing_old.add(task)
            task.add_done_callback(self._closing_old.discard)
        self._grant_token()
        self.session.last_activity = time.monotonic()
        point = await self.link.attach(connection, received, SessionCreated(session=self.session.config))
        log.info(
            "session %s resumed%s: the client had %d message(s); %d sent again",
            self.session.session_id,
            " (took over a live connection)" if old is not None else "",
            point.received,
            point.replayed,
        )
        if point.problem is not None:
            code, message = point.problem
            self.session.metrics.count_error(code)
            detail = ErrorDetail(code=code, message=message, param="received")
            self.session.outbound.put(ErrorEvent(error=detail))

    # -- ending ---------------------------------------------------------------------------------------------
    async def end(self) -> None:
        """End the session for good: its token, its engine place, its key's place."""
        if self._ended:
            return
        self._ended = True
        self.link.ended = True
        self.registry.forget(self)
        self.link.detach()
        try:
            await self.session.close()
        finally:
            self._on_ended(self)

    async def expire(self) -> None:
        """The grace time is over and nobody resumed it."""
        log.info("session %s: not resumed in time; ended", self.session.session_id)
        await self.end()

    async def shutdown(self, code: int, reason: str, grace_s: float = 0.0) -> None:
        """Tell the client to reconnect elsewhere (with its key), then end the session with `code`."""
        if self.parked:
            await self.end()  # nobody to tell; a resume would find a draining process anyway
            return
        notice = ErrorDetail(
            type="server_error",
            code="server_shutting_down",
            message="this server is shutting down: reconnect with the same ?session= key "
            "to continue on another one",
        )
        hint = {"reconnect": True, "session_key": self.session_key}
        await self.link.send(ErrorEvent(error=notice), extension=hint)
        await self.session.shutdown(code, reason, grace_s=grace_s)
        await self.end()

    async def fail(self, code: str, message: str) -> None:
        """The server cannot go on: `error` (server_error) with a reconnect hint, then close 1011."""
        if self.parked:
            await self.end()
            return
        notice = ErrorDetail(type="server_error", code=code, message=message)
        hint = {"reconnect": True, "session_key": self.session_key}
        await self.link.send(ErrorEvent(error=notice), extension=hint)
        await self.session.shutdown(CloseCode.INTERNAL_ERROR, "server error", grace_s=1.0)
        await self.end()

    async def wait_closing(self) -> None:
        """Wait for taken-over connections to finish closing (tests, shutdown)."""
        for task in list(self._closing_old):
            with contextlib.suppress(Exception):
                await task
