"""Native memory that must be bounded before torch loads: oneDNN's cache of compiled kernels, and
torch's own cache of oneDNN computations.

On a CPU, torch runs convolutions (the codec's, the speech encoder's) through oneDNN, which compiles a
kernel (JIT code) for every distinct tensor shape and keeps it in a process-wide cache of, by default,
1024 kernels. A server sees new shapes all the time (codec windows of every length, batches of every
size), so the cache fills with kernels used once, each holding its code: measured up to 100 MB of
JIT code for the tiny model's codec alone, and 34 to 36 MB in soak servers after six minutes, against
about 5 MB with 64 kernels, at no measured cost in throughput (see `benchmarks/RESULTS.md`, soak).

Above oneDNN, torch keeps its own per-thread LRU of oneDNN computations (ideep's, with their buffers),
also keyed by shape, 1024 entries by default (`LRU_CACHE_CAPACITY`): in the 100-user soak it was most of
the memory the program held that grew with time (`FREEZE_OMNI_MKLDNN_LRU_CACHE_CAPACITY`, see
`benchmarks/RESULTS.md`, fourth soak).

oneDNN reads its capacity from the environment (`ONEDNN_PRIMITIVE_CACHE_CAPACITY`) the first time it
needs it, so the server sets it (`FREEZE_OMNI_ONEDNN_PRIMITIVE_CACHE_CAPACITY`) before any model loads;
a capacity the operator put in the environment themselves wins. No torch import here.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
_LEGACY_CACHE_ENV = "DNNL_PRIMITIVE_CACHE_CAPACITY"  # oneDNN's older name, still read
MKLDNN_LRU_CACHE_ENV = "LRU_CACHE_CAPACITY"  # torch's ideep computation cache (read on first use)


def bound_onednn_cache(capacity: int) -> int:
    """Set oneDNN's kernel cache capacity for this process, unless the environment already names one;
    returns the capacity in force (before torch has run a convolution, or it is too late)."""
    return _bound_by_environment((ONEDNN_CACHE_ENV, _LEGACY_CACHE_ENV), capacity)


def bound_mkldnn_lru_cache(capacity: int) -> int:
    """Set the capacity of torch's own cache of oneDNN computations (ideep's, per thread, keyed by
    shape: 1024 by default), unless the environment already names one; returns the capacity in force."""
    return _bound_by_environment((MKLDNN_LRU_CACHE_ENV,), capacity)


def _bound_by_environment(names: tuple[str, ...], capacity: int) -> int:
    for name in names:
        given = os.environ.get(name)
        if given is not None and given.strip().isdigit():
            return int(given)
    os.environ[names[0]] = str(capacity)
    return capacity
