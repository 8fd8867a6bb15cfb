"""One connection's tasks live and die together (as Moshi's server joins its per-connection coroutines).

`TaskSupervisor.spawn` starts a task of the session (outbound sender, feeder, watchdog, a response
streamer). A task that ends with an unexpected exception fails the whole session once: `on_failure`
runs in a task of its own (so cancelling the session's tasks cannot cancel it), and the session
ends it: an `error` to the client, close 1011, every engine resource freed. Tasks that end normally
or are cancelled are simply forgotten, so finished response streamers do not pile up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class TaskSupervisor:
    """The live tasks of one session and what to do when one of them fails."""

    def __init__(self, on_failure: Callable[[str, BaseException], Awaitable[None]]) -> None:
        self._on_failure = on_failure
        self._tasks: set[asyncio.Task] = set()
        self._failure: asyncio.Task | None = None
        self._stopping = False

    @property
    def failed(self) -> bool:
        """Whether a task failed (the session is being, or has been, ended)."""
        return self._failure is not None

    @property
    def live_tasks(self) -> int:
        """How many supervised tasks are running."""
        return len(self._tasks)

    def spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """Start a supervised task."""
        task = asyncio.create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._stopping:
            return
        error = task.exception()
        if error is None or self._failure is not None:
            return
        self._failure = asyncio.create_task(self._on_failure(task.get_name(), error), name="session-failure")

    async def stop(self) -> None:
        """Cancel every supervised task and wait for them (a failure handler in flight finishes)."""
        self._stopping = True
        tasks = list(self._tasks)
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        for task in tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        if self._failure is not None and self._failure is not current:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._failure
