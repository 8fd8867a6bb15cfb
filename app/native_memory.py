"""Native memory that must be bounded before torch loads: oneDNN's cache of compiled kernels.

On a CPU, torch runs convolutions (the codec's, the speech encoder's) through oneDNN, which compiles a
kernel (JIT code) for every distinct tensor shape and keeps it in a process-wide cache of, by default,
1024 kernels. A server sees new shapes all the time (codec windows of every length, batches of every
size), so the cache fills with kernels used once, each holding its code: measured up to 100 MB of
JIT code for the tiny model's codec alone, and 34 to 36 MB in soak servers after six minutes, against
about 5 MB with 64 kernels, at no measured cost in throughput (see `benchmarks/RESULTS.md`, soak).

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


def bound_onednn_cache(capacity: int) -> int:
    """Set oneDNN's kernel cache capacity for this process, unless the environment already names one;
    returns the capacity in force (before torch has run a convolution, or it is too late)."""
    for name in (ONEDNN_CACHE_ENV, _LEGACY_CACHE_ENV):
        given = os.environ.get(name)
        if given is not None and given.strip().isdigit():
            return int(given)
    os.environ[ONEDNN_CACHE_ENV] = str(capacity)
    return capacity
