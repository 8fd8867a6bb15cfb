"""What the process holds right now (resident memory, open files, asyncio tasks), for /metrics.

Read from /proc where it exists (Linux); elsewhere the figure is left out rather than guessed.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> float | None:
    """Resident set size now (not the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return float(pages * _PAGE_BYTES)


def open_fds() -> float | None:
    """Open file descriptors (sockets included)."""
    try:
        return float(len(os.listdir("/proc/self/fd")))
    except OSError:
        return None


def asyncio_tasks() -> float:
    """Live tasks on the running event loop."""
    return float(len(asyncio.all_tasks()))


def process_gauges() -> dict[str, float]:
    """The figures that exist here, by gauge name."""
    figures = {"process_resident_bytes": resident_bytes(), "process_open_fds": open_fds()}
    gauges = {name: value for name, value in figures.items() if value is not None}
    gauges["asyncio_tasks"] = asyncio_tasks()
    return gauges
