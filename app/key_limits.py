"""Optional per-API-key session limit (`FREEZE_OMNI_MAX_SESSIONS_PER_KEY`): one key cannot take every place.

A session parked for a resume keeps its key's place (see `app.sessions.resumable`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class KeySessionLimiter:
    """Counts live sessions per key; `limit` 0 means none."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._live: Counter[str] = Counter()

    def live(self, key: str) -> int:
        return self._live[key]

    def acquire(self, key: str | None) -> bool:
        """Take a place for `key` (to `release` later); False (nothing taken) when it is full."""
        if key is None or self.limit <= 0:
            return True
        if self._live[key] >= self.limit:
            return False
        self._live[key] += 1
        return True

    def release(self, key: str | None) -> None:
        """Give back a place `acquire` took."""
        if key is None or self.limit <= 0 or key not in self._live:
            return
        self._live[key] -= 1
        if self._live[key] <= 0:
            del self._live[key]

    @contextmanager
    def hold(self, key: str | None) -> Iterator[bool]:
        """Hold a place for `key` while the block runs; yields False (and holds nothing) when it is full."""
        admitted = self.acquire(key)
        try:
            yield admitted
        finally:
            if admitted:
                self.release(key)
