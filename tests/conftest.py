"""Shared fixtures: tiny checkpoints made here, once per test session, and a spoken question."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from app.model.tiny_llm import write_tiny_qwen2

if TYPE_CHECKING:
    import numpy as np

    from app.model.checkpoint import FreezeOmni
    from app.model.tiny import TinyPaths

SPOKEN_QUESTION = "What is two plus two?"


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 folder with a local tokenizer."""
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> TinyPaths:
    """The tiny Freeze-Omni (seed 0) written once: the checkpoint layout and its Qwen2 folder."""
    from app.model.tiny import make_tiny

    return make_tiny(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: TinyPaths) -> FreezeOmni:
    """The tiny Freeze-Omni loaded on CPU in fp32. Shared: tests must not change its weights."""
    from app.model.checkpoint import load_freeze_omni

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
