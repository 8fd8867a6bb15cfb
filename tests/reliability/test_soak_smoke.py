"""A 60 s soak smoke: benchmarks/soak.py with a few users against a real `freeze-omni serve` process.

Every session must end with the close its behaviour documents, and once the last one has closed the
server must hold no session, task of a session, cache slot or extra file descriptor. (The 30-minute,
100-session figures are in benchmarks/RESULTS.md.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_soak_smoke(tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "soak.py"),
        "--sessions", "8", "--duration", "60", "--warm-up", "0", "--json", str(out),
        "--server-env", "FREEZE_OMNI_ADMISSION_MAX_LOAD=0",  # every session admitted: 8 users are few
    ]  # fmt: skip
    done = subprocess.run(
        command, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["sessions_served"] >= 30, result
    assert result["unexpected"] == {}, (result["unexpected"], result["unexpected_examples"])
    behaviours_seen = {key.split(":")[0] for key in result["closes"]}
    assert len(behaviours_seen) >= 6, result["closes"]
    leaks = result["leaks"]
    for label in (
        "live WebSocket sessions",
        "engine sessions",
        "tasks of live sessions",
        "LLM cache slots in use",
        "speech decoder cache slots in use",
    ):
        assert leaks[label]["end"] == 0, (label, leaks[label])
    assert leaks["asyncio tasks"]["growth"] <= 0, leaks["asyncio tasks"]
    assert leaks["open file descriptors"]["growth"] <= 0, leaks["open file descriptors"]
    # No warm-up here (the suite's time): the growth includes the first uses of every batch shape, so this
    # only catches a gross leak; the 50 MB bound is the 30-minute soak's, after its warm-up.
    assert leaks["resident memory (MB)"]["growth"] < 200, leaks["resident memory (MB)"]
    assert result["server_log_tracebacks"] == 0
