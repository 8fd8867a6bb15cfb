"""A census of what the process holds, logged now and then, to find what makes resident memory grow.

Resident memory can grow for reasons that look alike from outside: the allocator keeping freed memory,
native caches (kernels, buffers), tensors some table keeps, or Python objects piling up. Each census
(`FREEZE_OMNI_MEMORY_CENSUS_INTERVAL_S`) logs, against the first one:

- glibc's own count of the bytes in use and the bytes it holds free (`mallinfo2`, all arenas);
- the live torch tensors reachable from Python, by count and by bytes of their storages;
- the Python object types whose count grew most (`gc.get_objects`).

If in-use heap bytes grow while tensors and objects stay flat, the holder is native (a library's
cache); if tensors or a type grow, the log names them. A census walks every object under the GIL
(tens of milliseconds with a few hundred thousand objects), so it is off by default.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import re
import sys
import tempfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from app.process_stats import resident_bytes

log = logging.getLogger(__name__)
_MB = 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",  # bytes of the main arena's heap (brk)
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",  # bytes in mmapped chunks (big blocks)
            "usmblks",
            "fsmblks",
            "uordblks",  # bytes in use (all arenas)
            "fordblks",  # bytes free in the arenas (kept by the allocator)
            "keepcost",
        )
    ]


def libc_function(name: str):  # noqa: ANN201 - a ctypes function or None
    """The C library's function `name`, or None where there is no such library or function (not glibc,
    or a glibc too old for it)."""
    library = ctypes.util.find_library("c")
    if library is None:
        return None
    try:
        return getattr(ctypes.CDLL(library), name)
    except (OSError, AttributeError):
        return None


def _glibc_mallinfo2():  # noqa: ANN202 - a ctypes function or None
    function = libc_function("mallinfo2")  # glibc >= 2.33
    if function is None:
        return None
    function.restype = _MallInfo2
    function.argtypes = []
    return function


_MALLINFO2 = _glibc_mallinfo2()
_HEAP_XML = re.compile(r'<heap nr="(\d+)">(.*?)</heap>', re.S)


def arena_figures() -> dict[str, tuple[float, float]]:
    """Each glibc arena's (bytes it holds from the system, bytes of those free), from `malloc_info`;
    {} without glibc. Arena 0 is the main thread's."""
    name = ctypes.util.find_library("c")
    if name is None:
        return {}
    libc = ctypes.CDLL(name)
    if not hasattr(libc, "malloc_info"):
        return {}
    libc.fopen.restype = ctypes.c_void_p
    libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    libc.fclose.argtypes = [ctypes.c_void_p]
    libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
    with tempfile.NamedTemporaryFile(suffix=".xml") as out:
        stream = libc.fopen(out.name.encode(), b"w")
        if not stream:
            return {}
        libc.malloc_info(0, stream)
        libc.fclose(stream)
        xml = Path(out.name).read_text()
    arenas = {}
    for number, body in _HEAP_XML.findall(xml):
        current = re.search(r'<system type="current" size="(\d+)"', body)
        free = sum(
            int(size) for size in re.findall(r'<total type="(?:fast|rest)" count="\d+" size="(\d+)"', body)
        )
        arenas[number] = (float(current[1]) if current else 0.0, float(free))
    return arenas


def heap_figures() -> dict[str, float]:
    """glibc's heap: bytes in use (small and mmapped blocks) and bytes kept free; {} without glibc."""
    if _MALLINFO2 is None:
        return {}
    info = _MALLINFO2()
    return {
        "heap_in_use": float(info.uordblks),
        "heap_free": float(info.fordblks),
        "mmapped": float(info.hblkhd),
    }


_GLIBC_HEAP_ALIGN = 64 * 2**20  # glibc's heaps of threads other than the main one are aligned to this


def resident_by_region() -> dict[str, float]:
    """Resident bytes by kind of mapping (Linux `/proc/self/smaps`): the main thread's heap (brk), other
    threads' glibc heaps, other anonymous memory (big blocks, Python's arenas), executable anonymous
    memory (JIT code), and files (libraries); {} where there is no smaps."""
    regions: dict[str, float] = {}
    kind = "files"
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return {}
    for line in lines:
        head = line.split(maxsplit=5)
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            name = head[5].strip() if len(head) > 5 else ""
            start = int(head[0].split("-")[0], 16)
            if name == "[heap]":
                kind = "main_heap"
            elif name:
                kind = "files"
            elif "x" in head[1]:
                kind = "jit_code"
            elif start % _GLIBC_HEAP_ALIGN == 0:
                kind = "thread_heaps"
            else:
                kind = "other_anonymous"
        elif line.startswith("Rss:"):
            regions[kind] = regions.get(kind, 0.0) + int(line.split()[1]) * 1024.0
    return regions


def tensor_figures() -> tuple[int, float, Counter]:
    """Live torch tensors reachable from Python: count, bytes of their distinct storages, and bytes by
    shape (the biggest holders); (0, 0, {}) when torch is not loaded."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0, 0.0, Counter()
    count = 0
    seen: set[int] = set()
    total = 0.0
    by_shape: Counter = Counter()
    with warnings.catch_warnings():  # isinstance on some of torch's deprecated objects warns
        warnings.simplefilter("ignore")
        tensors = [obj for obj in gc.get_objects() if isinstance(obj, torch.Tensor)]
    for obj in tensors:
        if obj.device.type != "cpu":
            continue
        count += 1
        try:
            storage = obj.untyped_storage()
        except (RuntimeError, NotImplementedError):
            continue
        pointer = storage.data_ptr()
        if pointer in seen:
            continue
        seen.add(pointer)
        total += storage.nbytes()
        by_shape[f"{tuple(obj.shape)} {obj.dtype}"] += storage.nbytes()
    return count, total, by_shape


@dataclass
class Census:
    """One census of the process."""

    resident: float
    regions: dict[str, float]
    heap: dict[str, float]
    arenas: dict[str, tuple[float, float]]
    tensors: int
    tensor_bytes: float
    tensor_bytes_by_shape: Counter
    types: Counter = field(default_factory=Counter)

    @classmethod
    def take(cls) -> Census:
        tensors, tensor_bytes, by_shape = tensor_figures()
        types = Counter(type(obj).__qualname__ for obj in gc.get_objects())
        return cls(
            resident_bytes() or 0.0,
            resident_by_region(),
            heap_figures(),
            arena_figures(),
            tensors,
            tensor_bytes,
            by_shape,
            types,
        )

    def against(self, first: Census) -> str:
        """This census as a log message, with what changed since `first`."""
        lines = [f"resident {self.resident / _MB:.1f} MB ({(self.resident - first.resident) / _MB:+.1f})"]
        for name, value in self.regions.items():
            was = first.regions.get(name, 0.0)
            lines.append(f"resident {name} {value / _MB:.1f} MB ({(value - was) / _MB:+.1f})")
        for name, value in self.heap.items():
            was = first.heap.get(name, 0.0)
            lines.append(f"glibc {name} {value / _MB:.1f} MB ({(value - was) / _MB:+.1f})")
        if self.arenas:
            lines.append(
                "glibc arenas (held/free MB): "
                + ", ".join(
                    f"{n}: {held / _MB:.1f}/{free / _MB:.1f}" for n, (held, free) in self.arenas.items()
                )
            )
        lines.append(
            f"tensors {self.tensors} ({self.tensors - first.tensors:+d}), their storage "
            f"{self.tensor_bytes / _MB:.1f} MB ({(self.tensor_bytes - first.tensor_bytes) / _MB:+.1f})"
        )
        grown_shapes = (self.tensor_bytes_by_shape - first.tensor_bytes_by_shape).most_common(5)
        if grown_shapes:
            lines.append(
                "tensor bytes grown by shape: "
                + ", ".join(f"{shape}: {size / _MB:+.2f} MB" for shape, size in grown_shapes)
            )
        grown_types = (self.types - first.types).most_common(12)
        lines.append(
            f"objects {sum(self.types.values())} ({sum(self.types.values()) - sum(first.types.values()):+d}); "
            "grown most: " + ", ".join(f"{name} {count:+d}" for name, count in grown_types)
        )
        return "; ".join(lines)


async def log_census_periodically(every_s: float) -> None:
    """Log a census every `every_s` seconds against the first (taken `every_s` after start)."""
    first: Census | None = None
    while True:
        await asyncio.sleep(every_s)
        census = Census.take()
        if first is None:
            first = census
        log.warning("memory census: %s", census.against(first))
