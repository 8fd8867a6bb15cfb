"""Optional per-API-key session limit (`FREEZE_OMNI_MAX_SESSIONS_PER_KEY`): one key cannot take every place."""

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

    @contextmanager
    def hold(self, key: str | None) -> Iterator[bool]:
        """Hold a place for `key` while the block runs; yields False (and holds nothing) when it is full."""
        if key is None or self.limit <= 0:
            yield True
            return
        if self._live[key] >= self.limit:
            yield False
            return
        self._live[key] += 1
        try:
            yield True
        finally:
            self._live[key] -= 1
            if self._live[key] <= 0:
                del self._live[key]
