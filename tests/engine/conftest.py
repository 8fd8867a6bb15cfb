"""Engine fixtures: several different spoken questions, and engines on the tiny model."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from app.model.wav import read_wav, resample

QUESTIONS = [
    "What is two plus two?",
    "Hello, how are you today?",
    "What colour is the sky?",
    "What day comes after Monday?",
    "What can you do?",
    "Tell me about the weather.",
    "Good morning.",
    "Is it raining?",
]


@pytest.fixture(scope="session")
def question_wavs(tmp_path_factory: pytest.TempPathFactory) -> list[np.ndarray]:
    """Sixteen different spoken questions (8 texts x 2 speeds/pitches), mono float32 at 16 kHz."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        pytest.fail("espeak-ng is not installed; install it with: apt-get install -y espeak-ng")
    folder = tmp_path_factory.mktemp("questions")
    wavs = []
    for index in range(16):
        path = Path(folder) / f"q{index}.wav"
        speed, pitch = (150, 40) if index < 8 else (190, 70)
        text = QUESTIONS[index % len(QUESTIONS)]
        subprocess.run(
            [espeak, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
            check=True,
            capture_output=True,
            timeout=60,
        )
        samples, rate = read_wav(path)
        wavs.append(resample(samples, rate, 16000))
    return wavs


def chunks_of(samples: np.ndarray, size: int = 2560) -> list[np.ndarray]:
    """Zero-pad to whole 160 ms chunks and split, as the offline pipeline does."""
    padded = np.concatenate([samples, np.zeros((-len(samples)) % size, dtype=np.float32)])
    return [padded[i : i + size] for i in range(0, len(padded), size)]
