"""The room's noise floor, tracked per VAD frame, and the energy gate it sets in front of WebRTC's VAD.

WebRTC's VAD adapts its noise model to what it hears: after speech whose pauses are runs of exact zeros
(noise gates, echo cancellers, synthetic voices), it has learnt that "quiet" means zero and calls a real
microphone's steady floor speech for seconds. So a frame only counts as voiced when its speech-band energy
also stands ``margin_db`` above the recent floor (and above an absolute minimum): a steady floor of any
colour never passes, whatever WebRTC thinks of it.

The floor follows the speech-band energy down at once (the median of the last three frames, so one odd
frame does not drag it) and rises at most ``rise_db_per_s``: speech, which is loud only in bursts, never
lifts it far, while a louder room is learnt within seconds. Before anything is heard it sits
``margin_db`` below ``min_speech_dbfs``, so a question that starts the stream is heard from its first word.
Digitally silent frames are left out (they would pull the floor down to nothing). The floor is a property
of the room, not of a turn, so it survives the gate's reset at the end of a turn.
Pure logic: no asyncio, no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

# Speech band: leaves out hum and the rumble that makes pink or fan noise swing by 10 dB between frames.
BAND_LOW_HZ = 150.0
BAND_HIGH_HZ = 4000.0
# A frame at least half exact zeros is digital silence (or a noise gate's cut): neither speech nor floor.
DIGITAL_ZERO_SHARE = 0.5
SMOOTHING_FRAMES = 3
_ZERO = 1.0 / 32768.0  # below one pcm16 step


@dataclass(frozen=True)
class NoiseGateSettings:
    """How far above the floor speech must stand, the absolute minimum, and how fast the floor may rise."""

    margin_db: float = 10.0
    min_speech_dbfs: float = -55.0
    rise_db_per_s: float = 10.0

    def __post_init__(self) -> None:
        if self.margin_db < 0:
            raise ValueError(f"margin_db must not be negative, got {self.margin_db}")
        if self.rise_db_per_s <= 0:
            raise ValueError(f"rise_db_per_s must be positive, got {self.rise_db_per_s}")


def band_energy_dbfs(frames: np.ndarray, sample_rate: int) -> np.ndarray:
    """Speech-band energy of each row of ``frames`` (float samples in [-1, 1]) in dB relative to full scale.

    Scaled so that white noise of RMS ``r`` over the whole band reads about ``20 log10 r`` less the share of
    the band left out; a full-scale tone inside the band reads about -3 dBFS.
    """
    frame_len = frames.shape[-1]
    window = np.hanning(frame_len).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(frames * window, axis=-1)) ** 2
    freqs = np.fft.rfftfreq(frame_len, 1.0 / sample_rate)
    in_band = (freqs >= BAND_LOW_HZ) & (freqs <= BAND_HIGH_HZ)
    power = spectrum[..., in_band].sum(axis=-1) * 2.0 / (frame_len * float(np.sum(window**2)))
    return 10.0 * np.log10(power + 1e-12)


def digital_silence(frames: np.ndarray) -> np.ndarray:
    """Whether each row of ``frames`` is (mostly) exact zeros."""
    return np.mean(np.abs(frames) < _ZERO, axis=-1) >= DIGITAL_ZERO_SHARE


class NoiseFloor:
    """Tracks the floor and says which frames stand out of it."""

    def __init__(self, settings: NoiseGateSettings, frame_ms: int, sample_rate: int) -> None:
        self.settings = settings
        self._sample_rate = sample_rate
        self._rise_per_frame = settings.rise_db_per_s * frame_ms / 1000.0
        self._floor = settings.min_speech_dbfs - settings.margin_db
        self._recent: deque[float] = deque(maxlen=SMOOTHING_FRAMES)

    @property
    def floor_dbfs(self) -> float:
        """The current floor estimate (speech-band energy, dBFS)."""
        return self._floor

    def not_floor(self, frames: np.ndarray) -> np.ndarray:
        """For each frame (rows, in stream order): may it be speech, rather than the floor? Updates the floor.

        Each frame is judged against the floor heard before it. Digitally silent frames are not the floor
        either: they are left to WebRTC, whose hang-over bridges the gaps a noise gate cuts into speech.
        """
        energies = band_energy_dbfs(frames, self._sample_rate)
        silent = digital_silence(frames)
        threshold_base = self.settings.min_speech_dbfs
        result = np.ones(len(frames), dtype=bool)
        for index, (energy, is_silent) in enumerate(zip(energies, silent, strict=True)):
            if is_silent:
                continue
            result[index] = energy > max(threshold_base, self._floor + self.settings.margin_db)
            self._recent.append(float(energy))
            smoothed = float(np.median(self._recent))
            self._floor = min(self._floor + self._rise_per_frame, smoothed)
        return result
