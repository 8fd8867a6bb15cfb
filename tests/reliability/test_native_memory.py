"""oneDNN's kernel cache and torch's cache of oneDNN computations are bounded by the server's settings
before torch loads; the operator's own wins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.config import Settings
from app.native_memory import (
    MKLDNN_LRU_CACHE_ENV,
    ONEDNN_CACHE_ENV,
    bound_mkldnn_lru_cache,
    bound_onednn_cache,
)

ROOT = Path(__file__).resolve().parents[2]


def test_the_setting_bounds_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ONEDNN_CACHE_ENV, raising=False)
    monkeypatch.delenv("DNNL_PRIMITIVE_CACHE_CAPACITY", raising=False)
    capacity = Settings().onednn_primitive_cache_capacity
    assert capacity < 1024  # oneDNN's own default holds far too many kernels for a server
    assert bound_onednn_cache(capacity) == capacity
    assert os.environ[ONEDNN_CACHE_ENV] == str(capacity)


def test_a_capacity_in_the_environment_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ONEDNN_CACHE_ENV, "512")
    assert bound_onednn_cache(8) == 512
    assert os.environ[ONEDNN_CACHE_ENV] == "512"


def test_torchs_computation_cache_is_bounded_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(MKLDNN_LRU_CACHE_ENV, raising=False)
    capacity = Settings().mkldnn_lru_cache_capacity
    assert capacity < 1024  # torch's own default
    assert bound_mkldnn_lru_cache(capacity) == capacity
    assert os.environ[MKLDNN_LRU_CACHE_ENV] == str(capacity)
    monkeypatch.setenv(MKLDNN_LRU_CACHE_ENV, "256")
    assert bound_mkldnn_lru_cache(8) == 256


def test_serve_sets_it_before_torch_loads(tmp_path: Path) -> None:
    """`freeze-omni serve` applies the setting before anything imports torch (which reads it once)."""
    probe = (
        "import sys, os\n"
        "def fake_run(settings):\n"
        "    print('torch loaded:', 'torch' in sys.modules, 'capacity:', os.environ.get('"
        + ONEDNN_CACHE_ENV
        + "'), 'lru:', os.environ.get('"
        + MKLDNN_LRU_CACHE_ENV
        + "'))\n"
        "import app.serving\n"
        "app.serving.run_server = fake_run\n"
        "import app.cli\n"
        "app.cli.run_server = fake_run\n"
        "app.cli.main(['serve', '--model-path', 'm', '--llm-path', 'l'])\n"
    )
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in (ONEDNN_CACHE_ENV, "DNNL_PRIMITIVE_CACHE_CAPACITY", MKLDNN_LRU_CACHE_ENV)
    }
    env |= {
        "PYTHONPATH": str(ROOT),
        "FREEZE_OMNI_ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16",
        "FREEZE_OMNI_MKLDNN_LRU_CACHE_CAPACITY": "32",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "capacity: 16 lru: 32" in done.stdout, done.stdout
