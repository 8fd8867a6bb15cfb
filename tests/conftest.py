"""Shared fixtures: tiny checkpoints made here, once per test session, and a spoken question."""

from __future__ import annotations

import os

# One intra-op thread per test process: the suite runs several processes (pytest workers, live servers,
# CLI subprocesses) on 2 cores, and torch's default of one thread per core makes every small op wait for
# a descheduled peer thread (measured: one tiny-model offline turn 38 s with the default, 3.5 s with 1).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from app.model.fixtures.tiny_llm import write_tiny_qwen2

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

if TYPE_CHECKING:
    import numpy as np

    from app.model.checkpoint_io.layout import FreezeOmni
    from app.model.fixtures.tiny import TinyPaths

SPOKEN_QUESTION = "What is two plus two?"


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 folder with a local tokenizer."""
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> TinyPaths:
    """The tiny Freeze-Omni (seed 0) written once: the checkpoint layout and its Qwen2 folder."""
    from app.model.fixtures.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: TinyPaths) -> FreezeOmni:
    """The tiny Freeze-Omni loaded on CPU in fp32. Shared: tests must not change its weights."""
    from app.model.checkpoint_io.layout import load_freeze_omni

    return load_freeze_omni(tiny_model_dir.model_path, tiny_model_dir.llm_path)


@pytest.fixture(scope="session")
def spoken_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short English question spoken by espeak-ng (a 22050 Hz mono WAV)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed; install it with: apt-get install -y espeak-ng")
    path = tmp_path_factory.mktemp("spoken") / "question.wav"
    subprocess.run([espeak, "-w", str(path), SPOKEN_QUESTION], check=True, capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="session")
def spoken_16k(spoken_wav: Path) -> np.ndarray:
    """The spoken question as the model hears it: mono float32 at 16 kHz."""
    from app.model.wav import read_wav, resample

    samples, rate = read_wav(spoken_wav)
    return resample(samples, rate, 16000)


class LiveServer:
    """A real uvicorn server on a loopback port, running in its own thread and event loop."""

    def __init__(self, settings) -> None:
        import threading

        import uvicorn

        from app.serving import GracefulServer, uvicorn_config

        self.settings = settings
        config = uvicorn_config(settings)
        self.server: uvicorn.Server = GracefulServer(config)
        self.app = config.app
        self.thread = threading.Thread(target=self.server.run, name="live-server", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/v1/realtime"

    @property
    def state(self):
        """The app's `ServerState` (engines, metrics, live sessions)."""
        return self.app.state.server

    def start(self, timeout: float = 60.0) -> LiveServer:
        import time
        import urllib.request

        self.thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base_url + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"the server on {self.base_url} did not become ready in {timeout} s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def live_server_on(paths, **overrides) -> LiveServer:
    """Start a live server on the model at `paths` (a `TinyPaths`), seed 0, quiet logs, admission by
    measured load off; `overrides` are further settings."""
    from app.config import Settings

    values = {
        "model_path": paths.model_path,
        "llm_path": paths.llm_path,
        "port": free_port(),
        "seed": 0,
        "log_level": "warning",
        # Behaviour tests must not depend on this machine's speed; admission has its own tests.
        "admission_max_load": 0.0,
    }
    values.update(overrides)
    return LiveServer(Settings(**values)).start()


def freeze_omni_command() -> str:
    """The `freeze-omni` console script of this environment (beside its python, else on PATH)."""
    beside_python = Path(sys.executable).with_name("freeze-omni")
    found = str(beside_python) if beside_python.is_file() else shutil.which("freeze-omni")
    if found is None:
        pytest.fail("the freeze-omni console script is not installed: pip install -e . in the venv")
    return found


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def start_server(tiny_model_dir: TinyPaths):
    """Factory: `start_server(**settings)` starts a live server on the tiny model; stopped at the end."""
    servers: list[LiveServer] = []

    def start(**overrides) -> LiveServer:
        # The tiny model's weights are random, so what it answers hangs on tiny logit margins, and tests
        # tuned to its answers (their length, their text) need the same answers on every machine: its LLM
        # keeps fp32 weights, whatever `auto` picks for this CPU. The int8 default is served in the trained
        # model's server tests (tests/trained, tests/frameworks) and tested on the tiny model in tests/model.
        server = live_server_on(tiny_model_dir, **{"max_sessions": 4, "llm_weights": "dtype", **overrides})
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def made_audio(monkeypatch: pytest.MonkeyPatch):
    """Every answer's audio as the engine of an in-process server made it, by response id (a tap: it
    observes the answer streams and changes nothing). See tests/routes/resume_client.py."""
    from tests.routes.resume_client import record_made_audio

    return record_made_audio(monkeypatch)
