"""A bounded set of recent ids: what a session remembers of its conversation items."""

from __future__ import annotations


class RecentIds:
    """A set of the most recent ids, bounded: the oldest is forgotten when it is full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, item_id: str) -> None:
        self._ids.pop(item_id, None)
        self._ids[item_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]

    def discard(self, item_id: str) -> None:
        self._ids.pop(item_id, None)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)
