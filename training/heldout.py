"""Recordings training never heard: held-out speeds and pitches, fresh noise seeds.

Used by the tests (tests/trained) and by `training.measure`. Speeds and pitches come from
`domain.HELD_OUT_SPEEDS` / `HELD_OUT_PITCHES`, which no training recording uses (training draws
from the TRAIN lists with +-3 wpm and +-2 pitch jitter, and the two lists never come that close).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training import domain
from training.synth import espeak, noise_clip, place

CHUNK = 2560
# Spread over greetings, arithmetic, colors, days and facts.
TEST_PAIRS = [0, 3, 8, 12, 16, 19, 22, 27, 30, 35, 38, 41, 45, 48]


@dataclass
class Recording:
    """A held-out recording, where its sound ends, and what the model should answer."""

    samples: np.ndarray  # 16 kHz float32
    end_chunk: int  # the 160 ms chunk holding the sound's last sample
    answer: str | None  # None: a sound to ignore
    description: str


def _recording(sound: np.ndarray, seed: int, answer: str | None, description: str) -> Recording:
    rng = np.random.default_rng(seed)
    placed = place(sound, rng, lead_s=0.3, trail_s=1.0, snr_db=30.0, noise_kind=("white", "pink")[seed % 2])
    return Recording(placed.samples, (placed.end - 1) // CHUNK, answer, description)


def held_out_question(index: int, pair_index: int, seed: int) -> Recording:
    """Question `pair_index` in a voice, speed and pitch picked by `index`, noise from `seed`."""
    pair = domain.PAIRS[pair_index]
    voice = domain.QUESTION_VOICES[(7 * index + 3) % len(domain.QUESTION_VOICES)]
    speed = domain.HELD_OUT_SPEEDS[index % len(domain.HELD_OUT_SPEEDS)]
    pitch = domain.HELD_OUT_PITCHES[index % len(domain.HELD_OUT_PITCHES)]
    sound = espeak(pair.question, voice, speed, pitch)
    return _recording(sound, seed, pair.answer, f"{pair.question!r} ({voice}, {speed} wpm, pitch {pitch})")


def ignorable_sounds(seed: int = 70_000) -> list[Recording]:
    """Each backchannel in held-out prosody, and eight noises, hums, clicks or coughs."""
    out = []
    for i, text in enumerate(domain.BACKCHANNELS):
        voice = domain.QUESTION_VOICES[(11 * i + 5) % len(domain.QUESTION_VOICES)]
        speed, pitch = domain.HELD_OUT_SPEEDS[i % 3], domain.HELD_OUT_PITCHES[i % 4]
        out.append(_recording(espeak(text, voice, speed, pitch), seed + i, None, f"{text!r} ({voice})"))
    for s in range(seed + 10_000, seed + 10_008):
        out.append(_recording(noise_clip(np.random.default_rng(s)), s, None, f"noise clip seed {s}"))
    return out
