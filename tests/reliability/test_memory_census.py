"""The memory census names what the process holds: heap bytes in use, tensors by shape, object types."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
import torch

from app.memory_census import Census, arena_figures, heap_figures, resident_by_region
from app.memory_upkeep import MemoryUpkeep


class HeldThing:
    """A type only this test makes, to find among the grown types."""


def test_a_census_names_what_was_taken_since_the_first() -> None:
    first = Census.take()
    held_tensor = torch.zeros(512, 1024)  # 2 MiB
    held_things = [HeldThing() for _ in range(5000)]
    later = Census.take()
    report = later.against(first)
    assert later.tensors >= first.tensors + 1
    assert later.tensor_bytes - first.tensor_bytes >= 2 * 2**20
    assert "(512, 1024) torch.float32: +2.00 MB" in report
    assert "HeldThing +5000" in report
    del held_tensor, held_things


def test_heap_figures_count_bytes_in_use_by_any_thread() -> None:
    if not heap_figures():
        pytest.skip("no glibc mallinfo2 here")
    before = heap_figures()["heap_in_use"]
    held: list[bytes] = []

    def allocate() -> None:  # a worker thread: glibc serves it from an arena of its own
        held.extend(bytes(16 * 1024) for _ in range(2000))  # 32 MB in blocks under mmap's threshold

    worker = threading.Thread(target=allocate)
    worker.start()
    worker.join()
    grown = heap_figures()["heap_in_use"] - before
    assert grown > 28 * 2**20, grown
    arenas = arena_figures()
    assert len(arenas) >= 2  # the main thread's and the worker's
    assert all(held_bytes >= free for held_bytes, free in arenas.values())
    regions = resident_by_region()
    assert regions["main_heap"] > 0 and regions["files"] > 0
    held.clear()


def test_the_census_is_logged_periodically_when_asked(caplog: pytest.LogCaptureFixture) -> None:
    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith("memory census")]

    async def main() -> None:
        upkeep = MemoryUpkeep(trim_interval_s=0.0, trace_python=False, census_interval_s=0.05)
        upkeep.start()
        for _ in range(200):  # a census walks every object: on a busy machine it takes a while
            if len(lines()) >= 2:
                break
            await asyncio.sleep(0.05)
        await upkeep.stop()

    with caplog.at_level(logging.WARNING, logger="app.memory_census"):
        asyncio.run(main())
    logged = lines()
    assert len(logged) >= 2
    assert "resident" in logged[-1] and "tensors" in logged[-1] and "objects" in logged[-1]
