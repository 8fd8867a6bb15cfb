"""A pool of engines, one per model replica (device); sessions are pinned to one for life."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from app.engine.engine import Engine
from app.engine.errors import CapacityError, SessionClosedError


@dataclass(frozen=True)
class SessionRef:
    """Where a session lives."""

    engine: Engine
    session_id: str


class EnginePool:
    """Places new sessions on the least loaded replica with room."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("a pool needs at least one engine")
        self.engines = list(engines)
        self._where: dict[str, Engine] = {}

    @property
    def capacity(self) -> int:
        return sum(e.settings.max_sessions for e in self.engines)

    @property
    def active_sessions(self) -> int:
        return sum(e.load for e in self.engines)

    async def start(self) -> None:
        for engine in self.engines:
            await engine.start()

    async def stop(self) -> None:
        for engine in self.engines:
            await engine.stop()
        self._where.clear()

    async def open_session(self, role: str | None = None, seed: int | None = None) -> SessionRef:
        """Admit a session on the replica with the most headroom, or raise `CapacityError` at once."""
        refusals: list[str] = []
        for engine in sorted(self.engines, key=self._busyness):
            if engine.free_sessions <= 0:
                continue
            try:
                session_id = await engine.open_session(role, seed)
            except CapacityError as error:
                refusals.append(str(error))
                continue
            self._where[session_id] = engine
            return SessionRef(engine, session_id)
        if refusals:
            raise CapacityError(f"{'; '.join(refusals)}; try again later")
        raise CapacityError(
            f"all {self.capacity} session places are taken ({len(self.engines)} replica(s)); try again later"
        )

    @staticmethod
    def _busyness(engine: Engine) -> tuple[float, float]:
        """Least measured load first, then fewest sessions per place."""
        return (engine.meter.predicted_load(engine.load + 1), engine.load / engine.settings.max_sessions)

    def get(self, session_id: str) -> SessionRef:
        engine = self._where.get(session_id)
        if engine is None:
            raise SessionClosedError(f"session {session_id}: no such session")
        return SessionRef(engine, session_id)

    async def close_session(self, session_id: str) -> None:
        engine = self._where.pop(session_id, None)
        if engine is not None:
            await engine.close_session(session_id)
