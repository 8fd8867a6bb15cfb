"""The engine work of one session's turn taking, in order: chunks to hear, and the commit, release and
drop markers that must wait until every chunk before them has been heard.

One task (`run`) takes the work in order, calls the engine, and hands what comes back (the state head's
verdicts, a commit or release coming up) to turn taking as typed inputs. Work of a turn that has ended
meanwhile is skipped; a drop always reaches the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app.engine.errors import SessionClosedError
from app.engine.pool import SessionRef
from app.model import CHUNK_SAMPLES, INPUT_RATE
from app.sessions.turn_events import (
    CommitReached,
    FeedChunk,
    HeadVerdict,
    QueueCommit,
    QueueDrop,
    QueueRelease,
    ReleaseReached,
    TurnInput,
)

EngineWork = FeedChunk | QueueCommit | QueueRelease | QueueDrop


class EngineFeed:
    """Queues a session's engine work and carries it out in order."""

    def __init__(
        self,
        max_pending_seconds: float,
        engine_ref: Callable[[], SessionRef | None],
        current_turn: Callable[[], int],
        deliver: Callable[[TurnInput], Awaitable[None]],
        on_closed: Callable[[str], Awaitable[None]],
    ) -> None:
        self.max_pending_seconds = max_pending_seconds
        self._ref = engine_ref
        self._current_turn = current_turn
        self._deliver = deliver
        self._on_closed = on_closed
        self._queue: asyncio.Queue[EngineWork] = asyncio.Queue()

    def put(self, work: EngineWork) -> bool:
        """Queue `work`; False when it is a chunk dropped because more than `max_pending_seconds` of audio
        already waits (the client sends faster than real time, or the engine cannot keep up)."""
        if isinstance(work, FeedChunk) and self.pending_seconds() > self.max_pending_seconds:
            return False
        self._queue.put_nowait(work)
        return True

    def pending_seconds(self) -> float:
        """Audio waiting to be heard (every queued item counted as one chunk)."""
        return self._queue.qsize() * CHUNK_SAMPLES / INPUT_RATE

    async def run(self) -> None:
        """Carry the work out in order until the engine says the session is gone."""
        while True:
            work = await self._queue.get()
            ref = self._ref()
            if ref is None:
                continue
            engine, sid = ref.engine, ref.session_id
            try:
                if isinstance(work, QueueDrop):
                    await engine.drop_listen(sid)
                elif work.turn != self._current_turn():
                    continue  # the turn it belonged to has ended
                elif isinstance(work, FeedChunk):
                    decision = await engine.feed_chunk(sid, work.samples, act=work.act)
                    await self._deliver(HeadVerdict(work.turn, decision))
                elif isinstance(work, QueueCommit):
                    await self._deliver(CommitReached(work.turn, work.request))
                elif isinstance(work, QueueRelease):
                    await self._deliver(ReleaseReached(work.turn))
            except SessionClosedError as error:
                await self._on_closed(str(error))
                return
