"""Periodic malloc_trim gives freed heap memory back and counts it; tracemalloc figures are reported."""

from __future__ import annotations

import asyncio
import gc
import weakref

import pytest

from app.memory_upkeep import MemoryUpkeep


def test_trim_returns_freed_heap_memory_and_counts_it() -> None:
    upkeep = MemoryUpkeep(trim_interval_s=3600.0, trace_python=False)
    if upkeep._malloc_trim is None:
        pytest.skip("no glibc here")
    upkeep.trim()  # start from a trimmed heap
    # 100 MB in heap-sized blocks (under mmap's threshold); every other one freed leaves 50 MB of holes
    # that free() cannot hand back (live blocks sit above them) and malloc_trim can.
    blocks = [bytearray(64 * 1024) for _ in range(1600)]
    kept = blocks[::2]
    del blocks
    released = upkeep.trim()
    del kept
    assert released > 25 * 2**20, released  # most of the 50 MB of holes
    gauges = upkeep.gauges()
    assert gauges["malloc_trims"] == 2
    assert gauges["malloc_trim_last_released_bytes"] == released


def test_traced_python_memory_is_reported_while_tracing() -> None:
    async def main() -> tuple[dict[str, float], dict[str, float]]:
        upkeep = MemoryUpkeep(trim_interval_s=0.0, trace_python=True)
        upkeep.start()
        held = [bytearray(1024) for _ in range(10000)]
        during = upkeep.gauges()
        del held
        await upkeep.stop()
        return during, upkeep.gauges()

    during, after = asyncio.run(main())
    assert during["python_traced_bytes"] > 10 * 2**20 * 0.9
    assert "python_traced_bytes" not in after
    assert "malloc_trims" not in during  # trimming off


def test_what_the_program_holds_from_malloc_is_reported() -> None:
    upkeep = MemoryUpkeep(trim_interval_s=0.0, trace_python=False)
    before = upkeep.gauges()
    if "malloc_in_use_bytes" not in before:
        pytest.skip("no glibc mallinfo2 here")
    held = [bytearray(64 * 1024) for _ in range(400)]  # 25 MB the program holds
    during = upkeep.gauges()
    assert during["malloc_in_use_bytes"] - before["malloc_in_use_bytes"] > 20 * 2**20
    assert during["malloc_free_bytes"] >= 0
    del held


def test_an_idle_server_trims_once_at_once() -> None:
    """When the last session ends the server gives back what the load freed, without waiting for the
    periodic trim; a second request while one runs is not queued."""

    async def main() -> float:
        upkeep = MemoryUpkeep(trim_interval_s=3600.0, trace_python=False)
        if upkeep._malloc_trim is None:
            pytest.skip("no glibc here")
        upkeep.start()
        upkeep.release_when_idle()
        upkeep.release_when_idle()  # one is under way: nothing more
        await asyncio.wait_for(upkeep._idle_trim, 10)
        trims = upkeep.gauges()["malloc_trims"]
        await upkeep.stop()
        return trims

    assert asyncio.run(main()) == 1


def test_no_idle_trim_when_trimming_is_off() -> None:
    async def main() -> None:
        upkeep = MemoryUpkeep(trim_interval_s=0.0, trace_python=False)
        upkeep.release_when_idle()
        assert upkeep._idle_trim is None

    asyncio.run(main())


class Ended:
    """Garbage in a reference cycle, as a finished session's task and its frames leave."""

    def __init__(self) -> None:
        self.me = self


def test_an_idle_server_collects_what_sessions_left_in_cycles() -> None:
    """Garbage in reference cycles waits for Python's rare full collections; going idle collects it,
    with trimming off too."""

    async def main() -> tuple[bool, dict[str, float]]:
        upkeep = MemoryUpkeep(trim_interval_s=0.0, trace_python=False)
        ended = Ended()
        gone = weakref.ref(ended)
        del ended
        alive_before = gone() is not None
        upkeep.release_when_idle()
        assert gone() is None
        return alive_before, upkeep.gauges()

    gc.disable()
    try:
        alive_before, gauges = asyncio.run(main())
    finally:
        gc.enable()
    assert alive_before
    assert gauges["idle_gc_collections"] == 1
    assert gauges["idle_gc_collected_objects"] >= 1


def test_what_is_loaded_stays_out_of_collections_until_the_server_stops() -> None:
    """Objects alive when the model is loaded are frozen out of the collector; garbage made afterwards is
    still collected when idle; stopping makes the loaded objects collectable again."""

    async def main() -> tuple[int, int, bool]:
        upkeep = MemoryUpkeep(trim_interval_s=0.0, trace_python=False)
        upkeep.start()
        upkeep.freeze_what_is_loaded()
        frozen = gc.get_freeze_count()
        ended = Ended()
        gone = weakref.ref(ended)
        del ended
        upkeep.release_when_idle()
        await upkeep.stop()
        return frozen, gc.get_freeze_count(), gone() is None

    gc.disable()
    try:
        frozen, frozen_after_stop, collected = asyncio.run(main())
    finally:
        gc.unfreeze()
        gc.enable()
    assert frozen > 1000  # this interpreter's modules, classes and functions at least
    assert collected
    assert frozen_after_stop == 0
