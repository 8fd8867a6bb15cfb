"""How late the server's event loop runs: a loop that cannot keep time cannot keep sessions.

Every session's timers (pings, idle and slow-client checks, answer pacing) run on the one event loop.
When the machine is overloaded the loop wakes late; a stall of seconds shows up to clients as late
answers, missed pongs or close handshakes that time out. `LoopWatch` measures it, logs each stall of
`STALL_S` or more (a warning with its length, so an operator, or the soak, can line endings up with
it) and reports the count and the worst in /metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time

log = logging.getLogger(__name__)

STALL_S = 1.0  # a wake-up this late is a stall worth a log line
_TICK_S = 0.1


class LoopWatch:
    """Measures the event loop's lateness while `run` runs."""

    def __init__(self) -> None:
        self.stalls = 0
        self.worst_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(_TICK_S)
            late = time.monotonic() - before - _TICK_S
            self.worst_s = max(self.worst_s, late)
            if late >= STALL_S:
                self.stalls += 1
                log.warning("event loop stalled for %.1f s (the machine is overloaded)", late)

    def gauges(self) -> dict[str, float]:
        return {"event_loop_stalls": float(self.stalls), "event_loop_worst_stall_seconds": self.worst_s}
