"""TEST-ONLY fault injection into the engine loop: proves that a process whose engine dies says so.

`FREEZE_OMNI_TEST_FAIL_ENGINE_AFTER_STEPS=N` (read once, when the first engine is built) makes every
engine loop raise `InjectedEngineFault` after its N-th step, as a bug in the loop would. Never set it
in production; it is not a setting and `freeze-omni serve --help` does not list it. Unset (the
default), the hook costs one comparison per step.
"""

from __future__ import annotations

import functools
import logging
import os

FAIL_AFTER_STEPS_ENV = "FREEZE_OMNI_TEST_FAIL_ENGINE_AFTER_STEPS"

log = logging.getLogger(__name__)


class InjectedEngineFault(RuntimeError):
    """The fault the test hook raises."""


@functools.cache
def fail_after_steps() -> int | None:
    """The step count after which engine loops fail, when the test hook is set."""
    value = os.environ.get(FAIL_AFTER_STEPS_ENV, "").strip()
    if not value:
        return None
    steps = int(value)
    log.warning("%s=%d: engine loops will fail on purpose (a test hook)", FAIL_AFTER_STEPS_ENV, steps)
    return steps


def raise_if_due(steps_done: int) -> None:
    """Raise the injected fault once the loop has done the configured number of steps."""
    limit = fail_after_steps()
    if limit is not None and steps_done >= limit:
        raise InjectedEngineFault(
            f"injected engine loop fault after {steps_done} steps ({FAIL_AFTER_STEPS_ENV})"
        )
