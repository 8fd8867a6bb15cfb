"""Channel, room, level and babble augmentation for the audio stages (numpy only, seeded by the caller).

Issue 19: the model must hold up on phone lines, in rooms of many sizes, in babble and at any input
level. Training draws every setting from continuous ranges here; the held-out evaluation
(`training.heldout_eval`) makes its conditions with sox and other settings, so it measures
recordings training never saw.
"""

from __future__ import annotations

import numpy as np

from app.model.wav import resample
from training.synth import noise

RATE = 16000


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)) + 1e-12))


def band_pass(x: np.ndarray, low: float, high: float, rate: int = RATE) -> np.ndarray:
    """A smooth (raised-cosine edged) band-pass in the frequency domain."""
    spectrum = np.fft.rfft(x)
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    edge = 80.0
    gain = np.clip((freqs - (low - edge)) / (2 * edge), 0, 1) * np.clip(
        ((high + edge) - freqs) / (2 * edge), 0, 1
    )
    return np.fft.irfft(spectrum * (0.5 - 0.5 * np.cos(np.pi * gain)), len(x)).astype(np.float32)


def mu_law(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """G.711-style mu-law companding with 8-bit quantisation, decoded back to float."""
    x = np.clip(x, -1, 1)
    coded = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
    coded = np.round(coded * 127) / 127
    return (np.sign(coded) * ((1 + mu) ** np.abs(coded) - 1) / mu).astype(np.float32)


def phone_line(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Band-limited telephone audio: a band-pass, 8 kHz sampling and (mostly) mu-law."""
    low, high = float(rng.uniform(200, 450)), float(rng.uniform(3000, 3700))
    narrow = resample(band_pass(x, low, high), RATE, 8000)
    if rng.random() < 0.8:
        peak = float(np.abs(narrow).max()) + 1e-9
        level = min(1.0, float(rng.uniform(0.3, 1.0)) / peak)  # codecs see the line level
        narrow = mu_law(narrow * level) / level
    return resample(narrow, 8000, RATE)[: len(x)]


def room_impulse(rng: np.random.Generator, rate: int = RATE) -> np.ndarray:
    """A generated room response: direct path, sparse early reflections, then a decaying noise tail.

    RT60 from 0.1 s (small room) to 1.4 s (hall); the direct-to-reverberant ratio varies too.
    """
    rt60 = float(np.exp(rng.uniform(np.log(0.1), np.log(1.4))))
    length = int(rate * min(1.6, 1.2 * rt60 + 0.05))
    t = np.arange(length) / rate
    tail = rng.standard_normal(length) * 10 ** (-3 * t / rt60)
    onset = int(rate * rng.uniform(0.002, 0.02))
    tail[:onset] = 0
    tail = band_pass(tail, 60, float(rng.uniform(3000, 7500)), rate) if rng.random() < 0.7 else tail
    h = tail / (np.sqrt(np.sum(tail**2)) + 1e-9) * float(10 ** (rng.uniform(-8, 6) / 20))
    h[0] += 1.0
    for _ in range(int(rng.integers(2, 8))):
        h[int(rng.integers(onset, max(onset + 1, min(length, int(0.05 * rate)))))] += float(
            rng.uniform(-0.5, 0.5)
        )
    return h.astype(np.float32)


def reverberate(x: np.ndarray, h: np.ndarray) -> np.ndarray:
    n = len(x) + len(h) - 1
    size = 1 << (n - 1).bit_length()
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(h, size), size)[: len(x)]
    return (y * rms(x) / (rms(y) + 1e-9)).astype(np.float32)


def babble(pool, length: int, rng: np.random.Generator, talkers: int) -> np.ndarray:
    """`talkers` other voices, each a run of random sentences from `pool` covering `length` samples."""
    out = np.zeros(length, dtype=np.float32)
    for _ in range(talkers):
        parts, total = [], 0
        while total < length + RATE:
            clip = pool[int(rng.integers(len(pool)))]
            gap = np.zeros(int(RATE * rng.uniform(0.05, 0.4)), dtype=np.float32)
            parts += [clip / (rms(clip) + 1e-9), gap]
            total += len(clip) + len(gap)
        voice = np.concatenate(parts)
        start = int(rng.integers(0, len(voice) - length + 1))
        out += voice[start : start + length]
    return out / (rms(out) + 1e-9)


def insert_pauses(x: np.ndarray, rng: np.random.Generator, count: int, longest_s: float) -> np.ndarray:
    """Stretch up to `count` quiet moments between words into pauses of up to `longest_s`."""
    hop = RATE // 100
    frames = len(x) // hop
    if frames < 20:
        return x
    level = np.abs(x[: frames * hop]).reshape(frames, hop).max(axis=1)
    quiet = np.nonzero(level < 0.05 * level.max())[0]
    quiet = quiet[(quiet > 10) & (quiet < frames - 10)]
    if len(quiet) == 0:
        return x
    cuts = sorted(set(int(q) * hop for q in rng.choice(quiet, size=min(count, len(quiet)), replace=False)))
    pieces, last = [], 0
    for cut in cuts:
        pieces += [x[last:cut], np.zeros(int(RATE * rng.uniform(0.08, longest_s)), dtype=np.float32)]
        last = cut
    pieces.append(x[last:])
    return np.concatenate(pieces).astype(np.float32)


def augment(
    dry: np.ndarray,
    start: int,
    end: int,
    rng: np.random.Generator,
    babble_pool=None,
    babble_share: float = 0.3,
) -> np.ndarray:
    """A placed recording (speech in [start, end) of zeros) through a random room, noise, babble,
    channel and level. Labels stay with the dry speech's end."""
    x = dry.astype(np.float32)
    speech = rms(x[start:end])
    if rng.random() < 0.4:
        x = reverberate(x, room_impulse(rng))
    if babble_pool is not None and rng.random() < babble_share:
        snr = float(rng.uniform(0, 18))
        x = x + speech * 10 ** (-snr / 20) * babble(babble_pool, len(x), rng, int(rng.integers(1, 5)))
    if rng.random() < 0.9:
        snr = float(rng.uniform(0, 45)) if rng.random() < 0.6 else float(rng.uniform(20, 50))
        kind = str(rng.choice(["white", "pink", "brown"]))
        x = x + speech * 10 ** (-snr / 20) * noise(kind, len(x), rng)
    if rng.random() < 0.25:
        x = phone_line(x, rng)
    peak = float(np.abs(x).max()) + 1e-9
    x = x * (10 ** (rng.uniform(-36, -1) / 20) / peak)  # peak level anywhere from -36 to -1 dBFS
    floor = 10 ** (rng.uniform(-75, -55) / 20)
    x = x + floor * noise("white", len(x), rng)
    return np.clip(x, -1, 1).astype(np.float32)
