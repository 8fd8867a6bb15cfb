"""What the running app holds: settings, metrics, the engine pool once loaded, live sessions.

Draining (SIGTERM): the process stops admitting (`/readyz` says "draining", new sessions get 1013)
and says goodbye to each live session within the shutdown grace, so a load balancer moves them on.

A process that cannot serve says so: if an engine loop dies, `/readyz` turns 503 ("failed"), every
live session gets an `error` (`engine_failed`) and close 1011, and the process exits non-zero (see
`on_fatal`, which `app.serving` points at uvicorn's exit) so an orchestrator restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from app.config import Settings
from app.engine.engine import Engine
from app.engine.pool import EnginePool
from app.key_limits import KeySessionLimiter
from app.loop_watch import LoopWatch
from app.memory_upkeep import MemoryUpkeep
from app.metrics import Metrics
from app.model import load_freeze_omni
from app.sessions.close_codes import CloseCode
from app.sessions.resume_registry import ResumeRegistry

log = logging.getLogger(__name__)


class LiveSession(Protocol):
    """A served session, as shutdown sees it."""

    async def shutdown(self, code: int, reason: str, grace_s: float = 0.0) -> None: ...

    async def fail(self, code: str, message: str) -> None: ...


@dataclass
class ServerState:
    """Created by the app's lifespan; models load in the background so health checks answer at once."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    pool: EnginePool | None = None
    load_error: str | None = None
    sessions: set[LiveSession] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)
    draining: bool = False
    fatal_error: str | None = None  # set when an engine loop died: this process can no longer serve
    on_fatal: Callable[[], None] | None = None  # asks the process to exit (set by app.serving)
    key_sessions: KeySessionLimiter = field(init=False)
    resumable: ResumeRegistry = field(init=False)  # resume tokens; sessions parked for a resume
    memory: MemoryUpkeep = field(init=False)
    loop_watch: LoopWatch = field(default_factory=LoopWatch)
    _load_task: asyncio.Task | None = None
    _watch_task: asyncio.Task | None = None

    def __post_init__(self) -> None:
        self.key_sessions = KeySessionLimiter(self.settings.max_sessions_per_key)
        self.resumable = ResumeRegistry(self.settings.resume_grace_s)
        self.memory = MemoryUpkeep(
            self.settings.malloc_trim_interval_s,
            self.settings.trace_python_memory,
            census_interval_s=self.settings.memory_census_interval_s,
        )

    @property
    def ready(self) -> bool:
        return self.pool is not None and self.fatal_error is None

    @property
    def instance_id(self) -> str:
        """This process's name in `session.created` (for a fleet behind a load balancer)."""
        return self.settings.instance_name()

    def start_loading(self) -> None:
        self._load_task = asyncio.create_task(self._load(), name="load-models")

    async def wait_ready(self) -> None:
        if self._load_task is not None:
            await asyncio.shield(self._load_task)

    async def _load(self) -> None:
        settings = self.settings
        try:
            model_path, llm_path = settings.model_path, settings.llm_path
            if model_path is None or llm_path is None:
                from app.model import ensure_default_model

                paths = await asyncio.to_thread(ensure_default_model)
                model_path, llm_path = paths.model_path, paths.llm_path
                log.info("using the embedded default model from %s", paths.root)
            engines = []
            for index, device in enumerate(settings.devices):
                model = await asyncio.to_thread(
                    load_freeze_omni,
                    model_path,
                    llm_path,
                    device=device,
                    dtype=settings.dtype,
                    codec_dtype=settings.codec_dtype,
                    llm_weights=settings.llm_weights,
                    strict=settings.strict_load,
                )
                engines.append(Engine(model, settings.engine_settings(), name=f"replica-{index}-{device}"))
            pool = EnginePool(engines)
            await pool.start()
            self.pool = pool
            self._watch_task = asyncio.create_task(self._watch_engines(pool), name="watch-engines")
            self.memory.freeze_what_is_loaded()
            log.info(
                "ready: %d replica(s), %d session places, %.1f s after start",
                len(engines),
                pool.capacity,
                time.monotonic() - self.started_at,
            )
        except Exception as error:  # noqa: BLE001 - reported by /readyz and the logs
            self.load_error = f"{type(error).__name__}: {error}"
            log.exception("loading the model failed; the server stays up to report it on /readyz")

    async def _watch_engines(self, pool: EnginePool) -> None:
        """Wait for an engine loop to end; one that ends with an error makes the process unfit to serve."""
        loops = {e.loop_task: e for e in pool.engines if e.loop_task is not None}
        while loops:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                engine = loops.pop(task)
                if task.cancelled() or task.exception() is None:
                    continue  # stopped on purpose
                error = task.exception()
                log.critical(
                    "engine %s: its loop died; this process cannot serve", engine.name, exc_info=error
                )
                await self.fail(f"engine {engine.name} stopped: {type(error).__name__}: {error}")
                return

    async def fail(self, reason: str) -> None:
        """Turn unready, end every live session with 1011 and ask the process to exit."""
        self.fatal_error = reason
        sessions = list(self.sessions)
        log.error("failing %d live session(s) with 1011, then exiting: %s", len(sessions), reason)
        message = "the server failed and cannot go on serving; reconnect to reach another one"
        await asyncio.gather(*(s.fail("engine_failed", message) for s in sessions), return_exceptions=True)
        # Still listening for a moment: a probe or a client that reconnects reads why (/readyz 503
        # "failed", a 1013 with "restarting") instead of a refused connection.
        await asyncio.sleep(self.settings.failed_exit_delay_s)
        if self.on_fatal is not None:
            self.on_fatal()

    async def drain(self, code: int = CloseCode.GOING_AWAY, reason: str = "server shutting down") -> None:
        """Stop admitting, then end every live session (each is told to reconnect elsewhere)."""
        if not self.draining:
            log.info(
                "draining: refusing new sessions; closing %d live one(s) within %.1f s",
                len(self.sessions),
                self.settings.shutdown_grace_s,
            )
        self.draining = True
        sessions = list(self.sessions)
        started = time.monotonic()
        await asyncio.gather(
            *(s.shutdown(code, reason, grace_s=self.settings.shutdown_grace_s) for s in sessions),
            return_exceptions=True,
        )
        if sessions:
            log.info("drained %d session(s) in %.2f s", len(sessions), time.monotonic() - started)

    async def stop(self) -> None:
        await self.memory.stop()
        if self._watch_task is not None:
            self._watch_task.cancel()
        await self.drain()
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        if self.pool is not None:
            await self.pool.stop()
