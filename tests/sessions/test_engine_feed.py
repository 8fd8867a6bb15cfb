"""The engine feed's bound: audio beyond `max_pending_seconds` is refused, turn markers never are."""

from __future__ import annotations

import numpy as np
import pytest

from app.model import CHUNK_SAMPLES, CHUNK_SECONDS
from app.sessions.engine_feed import EngineFeed
from app.sessions.turn_events import FeedChunk, QueueCommit, QueueDrop


async def _deliver(_event) -> None:
    return None


def feed(max_pending_seconds: float) -> EngineFeed:
    return EngineFeed(max_pending_seconds, lambda: None, lambda: 1, _deliver, _deliver)


def chunk() -> FeedChunk:
    return FeedChunk(1, np.zeros(CHUNK_SAMPLES, dtype=np.float32), act=True)


def test_chunks_past_the_pending_limit_are_refused_and_markers_still_queue() -> None:
    engine_feed = feed(max_pending_seconds=2 * CHUNK_SECONDS)
    accepted = [engine_feed.put(chunk()) for _ in range(5)]
    assert accepted == [True, True, True, False, False]  # the limit is checked before each chunk
    assert engine_feed.put(QueueCommit(1)) and engine_feed.put(QueueDrop())
    assert engine_feed.pending_seconds() == pytest.approx(5 * CHUNK_SECONDS)
