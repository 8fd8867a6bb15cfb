"""Memory a long-running server gives back, and the figures that tell a leak from an allocator.

glibc's malloc keeps memory freed by the program in its arenas (one per thread that allocated, up to
8 per core) and returns it to the system only now and then: after a load peak, resident memory stays
up although nothing holds it. `malloc_trim(0)` returns the free pages of every arena. With
`FREEZE_OMNI_MALLOC_TRIM_INTERVAL_S` the server calls it periodically (in a worker thread: it takes
each arena's lock in turn, briefly), and once more whenever its last session ends (an idle server then
holds what it uses, not what its last load left free) and counts what it gave back, so /metrics tells memory the
allocator held from memory something still uses. Before that idle trim, and whether or not trimming is on,
a full garbage collection frees what ended sessions left in reference cycles (tasks, frames, tracebacks):
Python collects its oldest generation only now and then, so without it an idle server holds tens of MB
of garbage one moment and not the next. Once the model is loaded, everything that exists is frozen out of
the collector (`gc.freeze`): it lives as long as the process, so a full collection walks only what sessions
made, not the few hundred thousand objects of the model and its libraries (200-300 ms on a 2-core CPU). `FREEZE_OMNI_TRACE_PYTHON_MEMORY` starts
`tracemalloc` (slower: every Python allocation is recorded) and reports the bytes Python objects
hold (and every 2 minutes logs the allocation sites that grew most): if those stay flat while resident
memory grows, the growth is not a Python-level leak.

Without glibc (musl, macOS) trimming is off and says so in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import threading
import time
import tracemalloc

from app.memory_census import heap_figures, libc_function, log_census_periodically
from app.process_stats import resident_bytes

log = logging.getLogger(__name__)


def _glibc_malloc_trim():  # noqa: ANN202 - a ctypes function or None
    trim = libc_function("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class MemoryUpkeep:
    """Periodic `malloc_trim`, optional `tracemalloc`, the garbage collector's upkeep, and their gauges."""

    def __init__(self, trim_interval_s: float, trace_python: bool, census_interval_s: float = 0.0) -> None:
        self.trim_interval_s = trim_interval_s
        self.trace_python = trace_python
        self.census_interval_s = census_interval_s
        self._census: asyncio.Task | None = None
        self.trims = 0
        self.released_bytes_total = 0.0
        self.last_released_bytes = 0.0
        self._malloc_trim = _glibc_malloc_trim() if trim_interval_s > 0 else None
        self._trimming = threading.Lock()  # the periodic and the idle trim may run at once
        self._idle_trim: asyncio.Task | None = None
        self.idle_collections = 0
        self.idle_collected_objects = 0
        self.last_idle_collection_s = 0.0
        self._froze = False
        self._task: asyncio.Task | None = None
        self._report: asyncio.Task | None = None

    def start(self) -> None:
        if self.census_interval_s > 0:
            self._census = asyncio.create_task(
                log_census_periodically(self.census_interval_s), name="memory-census"
            )
        if self.trace_python and not tracemalloc.is_tracing():
            tracemalloc.start()
            log.info("tracing Python memory (FREEZE_OMNI_TRACE_PYTHON_MEMORY): allocations are slower")
            self._report = asyncio.create_task(self._report_growth_periodically(120.0), name="memory-report")
        if self.trim_interval_s > 0:
            if self._malloc_trim is None:
                log.warning("no glibc malloc_trim here: FREEZE_OMNI_MALLOC_TRIM_INTERVAL_S has no effect")
                return
            self._task = asyncio.create_task(self._trim_periodically(), name="malloc-trim")

    async def stop(self) -> None:
        for task in (self._task, self._report, self._census, self._idle_trim):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.trace_python and tracemalloc.is_tracing():
            tracemalloc.stop()
        if self._froze:
            # What was loaded can be garbage now (a process that serves again, tests): collectable again.
            gc.unfreeze()
            self._froze = False

    def trim(self) -> float:
        """Give free heap pages back to the system now; returns the resident bytes that went."""
        if self._malloc_trim is None:
            return 0.0
        with self._trimming:
            before = resident_bytes() or 0.0
            self._malloc_trim(0)
            released = max(0.0, before - (resident_bytes() or before))
            self.trims += 1
            self.last_released_bytes = released
            self.released_bytes_total += released
        return released

    def freeze_what_is_loaded(self) -> None:
        """Once the model is loaded: collect the loading's garbage, then keep every object alive now out of
        later collections (they live as long as the process), so those walk only what sessions made."""
        started = time.perf_counter()
        gc.collect()
        gc.freeze()
        self._froze = True
        log.info(
            "kept %d loaded objects out of garbage collections (%.0f ms)",
            gc.get_freeze_count(),
            (time.perf_counter() - started) * 1e3,
        )

    def release_when_idle(self) -> None:
        """The server has just gone idle (its last session ended): collect the garbage its sessions left
        in reference cycles, then give back what the load freed now, not at the next periodic trim (when
        trimming is on; one at a time, in a worker thread)."""
        started = time.perf_counter()
        # On the event loop's thread: finalizers of asyncio objects must not run on another.
        collected = gc.collect()
        self.idle_collections += 1
        self.idle_collected_objects += collected
        self.last_idle_collection_s = time.perf_counter() - started
        log.debug(
            "idle: collected %d unreachable objects in %.0f ms",
            collected,
            self.last_idle_collection_s * 1e3,
        )
        if self._malloc_trim is None or (self._idle_trim is not None and not self._idle_trim.done()):
            return
        self._idle_trim = asyncio.create_task(asyncio.to_thread(self.trim), name="malloc-trim-idle")

    async def _trim_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.trim_interval_s)
            await asyncio.to_thread(self.trim)

    async def _report_growth_periodically(self, every_s: float) -> None:
        """While tracing: log the Python allocation sites that grew most since the first report."""
        first: tracemalloc.Snapshot | None = None
        while True:
            await asyncio.sleep(every_s)
            snapshot = await asyncio.to_thread(tracemalloc.take_snapshot)
            if first is None:
                first = snapshot
                continue
            top = snapshot.compare_to(first, "lineno")[:8]
            log.warning(
                "Python memory growth since the first snapshot (tracemalloc), top sites:\n%s",
                "\n".join(f"  {stat}" for stat in top),
            )

    def gauges(self) -> dict[str, float]:
        """/metrics figures: what the program holds from malloc and what malloc keeps free (glibc); trims
        made and what they gave back; Python-held bytes when traced."""
        gauges: dict[str, float] = {}
        heap = heap_figures()
        if heap:
            # In use: what the program holds (heap blocks and big mmapped blocks): a leak grows it.
            # Free: what the allocator keeps in its heaps for reuse (resident unless trimmed).
            gauges["malloc_in_use_bytes"] = heap["heap_in_use"] + heap["mmapped"]
            gauges["malloc_free_bytes"] = heap["heap_free"]
        gauges["idle_gc_collections"] = float(self.idle_collections)
        gauges["idle_gc_collected_objects"] = float(self.idle_collected_objects)
        gauges["idle_gc_last_seconds"] = self.last_idle_collection_s
        if self._malloc_trim is not None:
            gauges["malloc_trims"] = float(self.trims)
            gauges["malloc_trim_released_bytes"] = self.released_bytes_total
            gauges["malloc_trim_last_released_bytes"] = self.last_released_bytes
        if self.trace_python and tracemalloc.is_tracing():
            gauges["python_traced_bytes"] = float(tracemalloc.get_traced_memory()[0])
        return gauges
