"""Synthetic audio: espeak-ng speech, sox effects, numpy noise and coughs, and turn assembly.

Shared by the data generator and the tests (which make recordings training never saw). Nothing is
downloaded: espeak-ng and sox are Debian packages, everything else is numpy.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.model.wav import read_wav, read_wav_bytes, resample, wav_bytes

ESPEAK_RATE = 22050


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed; install it with: apt-get install -y {name}")
    return path


def espeak(
    text: str, voice: str, speed: int, pitch: int, rate: int = 16000, ssml: bool = False
) -> np.ndarray:
    """`text` spoken by espeak-ng, mono float32 at `rate`, leading and trailing silence trimmed.

    `ssml`: `text` is SSML (e.g. with `<break time="300ms"/>` pauses between words)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "say.wav"
        subprocess.run(
            [
                _tool("espeak-ng"),
                *(["-m"] if ssml else []),
                "-v",
                voice,
                "-s",
                str(speed),
                "-p",
                str(pitch),
                "-w",
                str(path),
                text,
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        samples, source_rate = read_wav(path)
    start, end = speech_bounds(samples, source_rate)
    return resample(samples[start:end], source_rate, rate)


def sox_effects(samples: np.ndarray, rate: int, effects: list[str]) -> np.ndarray:
    """Run `samples` through sox with the given effect chain (e.g. ["highpass", "300"])."""
    out = subprocess.run(
        [_tool("sox"), "-t", "wav", "-", "-t", "wav", "-b", "16", "-", *effects],
        input=wav_bytes(np.clip(samples, -1, 1), rate),
        check=True,
        capture_output=True,
        timeout=60,
    ).stdout
    result, out_rate = read_wav_bytes(out)
    return resample(result, out_rate, rate)


def speech_bounds(samples: np.ndarray, rate: int, rel_threshold: float = 0.02) -> tuple[int, int]:
    """[start, end) of the part louder than `rel_threshold` of the peak, in 10 ms frames."""
    hop = rate // 100
    frames = len(samples) // hop
    if frames == 0:
        return 0, len(samples)
    peak = np.abs(samples[: frames * hop]).reshape(frames, hop).max(axis=1)
    loud = np.nonzero(peak > rel_threshold * max(float(peak.max()), 1e-6))[0]
    if len(loud) == 0:
        return 0, len(samples)
    return int(loud[0] * hop), int(min(len(samples), (loud[-1] + 1) * hop))


def noise(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise: white, pink (1/f) or brown (1/f^2), shaped in the frequency domain."""
    white = rng.standard_normal(n)
    if kind != "white":
        spectrum = np.fft.rfft(white)
        freqs = np.maximum(np.fft.rfftfreq(n), 1.0 / max(n, 1))
        spectrum /= freqs ** (0.5 if kind == "pink" else 1.0)
        white = np.fft.irfft(spectrum, n)
    return (white / (np.sqrt(np.mean(white**2)) + 1e-9)).astype(np.float32)


def cough(rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """One to three bursts of band-passed noise with a sharp attack: a synthetic cough."""
    parts = []
    for _ in range(int(rng.integers(1, 4))):
        length = int(rate * rng.uniform(0.15, 0.35))
        t = np.arange(length) / rate
        envelope = (1 - np.exp(-t / 0.01)) * np.exp(-t / rng.uniform(0.05, 0.12))
        burst = noise("white", length, rng)
        spectrum = np.fft.rfft(burst)
        freqs = np.fft.rfftfreq(length, 1 / rate)
        centre = rng.uniform(400, 1500)
        spectrum *= np.exp(-(((freqs - centre) / rng.uniform(300, 900)) ** 2))
        burst = np.fft.irfft(spectrum, length)
        burst = burst / (np.abs(burst).max() + 1e-9) * envelope
        parts += [burst, np.zeros(int(rate * rng.uniform(0.05, 0.2)))]
    return (0.6 * np.concatenate(parts)).astype(np.float32)


def noise_clip(rng: np.random.Generator, rate: int = 16000) -> np.ndarray:
    """Something that is not speech: a noise burst, a hum, clicks or a cough."""
    kind = rng.choice(["white", "pink", "brown", "hum", "clicks", "cough"])
    length = int(rate * rng.uniform(0.4, 1.6))
    if kind == "cough":
        return cough(rng, rate)
    if kind == "hum":
        t = np.arange(length) / rate
        base = rng.choice([50.0, 60.0, 120.0])
        clip = sum(np.sin(2 * np.pi * base * h * t + rng.uniform(0, 6)) / h for h in range(1, 6))
    elif kind == "clicks":
        clip = np.zeros(length)
        for at in rng.integers(0, length - 200, size=int(rng.integers(3, 12))):
            clip[at : at + 200] += rng.standard_normal(200) * np.exp(-np.arange(200) / 30)
    else:
        clip = noise(str(kind), length, rng)
    fade = np.minimum(1.0, np.minimum(np.arange(length), np.arange(length)[::-1]) / (0.02 * rate))
    clip = clip * fade
    return (rng.uniform(0.05, 0.4) * clip / (np.abs(clip).max() + 1e-9)).astype(np.float32)


@dataclass
class Placed:
    """A sound placed in a longer recording: the samples and where the sound starts and ends."""

    samples: np.ndarray
    start: int
    end: int


def place(
    sound: np.ndarray,
    rng: np.random.Generator,
    *,
    lead_s: float,
    trail_s: float,
    snr_db: float | None,
    noise_kind: str = "white",
    rate: int = 16000,
    gain: float = 1.0,
) -> Placed:
    """Put `sound` after `lead_s` of silence and before `trail_s`, then add noise at `snr_db`."""
    lead, trail = int(lead_s * rate), int(trail_s * rate)
    samples = np.concatenate([np.zeros(lead), gain * sound, np.zeros(trail)]).astype(np.float32)
    if snr_db is not None:
        level = np.sqrt(np.mean((gain * sound) ** 2) + 1e-12) / (10 ** (snr_db / 20))
        samples = samples + level * noise(noise_kind, len(samples), rng)
    return Placed(np.clip(samples, -1, 1).astype(np.float32), lead, lead + len(sound))


def with_breaks(text: str, rng: np.random.Generator, count: int, shortest_ms: int, longest_ms: int) -> str:
    """SSML of `text` with `count` pauses of shortest..longest ms between random words."""
    words = text.split()
    if len(words) < 2:
        return f"<speak>{text}</speak>"
    spots = set(
        int(i) for i in rng.choice(np.arange(1, len(words)), size=min(count, len(words) - 1), replace=False)
    )
    out = []
    for i, word in enumerate(words):
        if i in spots:
            out.append(f'<break time="{int(rng.integers(shortest_ms, longest_ms + 1))}ms"/>')
        out.append(word)
    return "<speak>" + " ".join(out) + "</speak>"
