"""Server-side voice activity detection: a gate over the session's 16 kHz input that finds the user's turns.

WebRTC's VAD classifies fixed frames of 10, 20 or 30 ms as voiced or not; the gate smooths those decisions
into speech-started / speech-stopped events on the session's audio clock, keeps a pre-roll so the start of
a word is not lost, and passes every sample through so a full-duplex model can keep listening.
A frame counts as voiced only when WebRTC says so *and* its energy stands out of the room's noise floor
(see :mod:`app.sessions.noise_floor`): WebRTC alone calls a steady floor speech for seconds after a
question whose pauses were exact zeros.
Pure logic: no asyncio, no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from app.model import INPUT_RATE
from app.sessions.audio_formats import float_to_int16
from app.sessions.noise_floor import NoiseFloor, NoiseGateSettings

VAD_SAMPLE_RATE = INPUT_RATE  # the VAD hears what the model hears


def aggressiveness_from_threshold(threshold: float) -> int:
    """Map the protocol's ``threshold`` (0.0-1.0, default 0.5) onto WebRTC aggressiveness (0-3, 0.5 -> 2)."""
    return max(0, min(3, int(threshold * 4)))


@dataclass(frozen=True)
class VadSettings:
    """How eagerly the gate opens and how much silence closes it."""

    aggressiveness: int = 2
    prefix_padding_ms: int = 300
    # Counted on WebRTC's decisions, which hang over ~100 ms after any sound: 250 ms keeps clicks of
    # 30 ms out while a 100 ms syllable still gets through.
    min_speech_ms: int = 250
    silence_duration_ms: int = 500
    frame_ms: int = 30
    # Share of voiced frames within the last ``min_speech_ms`` that opens the gate; below 1.0 so one
    # unvoiced frame inside a syllable does not hold the start back.
    open_ratio: float = 0.7
    # At most this share of voiced frames within the last ``silence_duration_ms`` closes the gate; above 0
    # so a single click or breath does not keep a turn open.
    close_ratio: float = 0.1
    # WebRTC's noise model starts untrained and calls the first ~120 ms voiced whatever they hold (even
    # faint noise), so decisions within this span of the gate's start count as unvoiced.
    warmup_ms: int = 150
    noise: NoiseGateSettings = NoiseGateSettings()

    def __post_init__(self) -> None:
        if self.aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0-3, got {self.aggressiveness}")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError(f"frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        if min(self.prefix_padding_ms, self.min_speech_ms, self.silence_duration_ms, self.warmup_ms) < 0:
            raise ValueError("durations must not be negative")
        if not (0.0 < self.open_ratio <= 1.0 and 0.0 <= self.close_ratio < 1.0):
            raise ValueError("open_ratio must be in (0, 1] and close_ratio in [0, 1)")

    @property
    def frame_samples(self) -> int:
        """Samples in one VAD frame at 16 kHz."""
        return VAD_SAMPLE_RATE * self.frame_ms // 1000

    @property
    def open_frames(self) -> int:
        """Length of the window that decides the start of speech, in frames."""
        return max(1, round(self.min_speech_ms / self.frame_ms))

    @property
    def close_frames(self) -> int:
        """Length of the window that decides the end of speech, in frames."""
        return max(1, round(self.silence_duration_ms / self.frame_ms))

    @property
    def prefix_frames(self) -> int:
        """Pre-roll kept before the first voiced frame, in frames."""
        return round(self.prefix_padding_ms / self.frame_ms)


@dataclass(frozen=True)
class VadAudio:
    """A run of input audio passed through, and whether the gate was in speech for all of it."""

    samples: np.ndarray
    start_ms: int
    in_speech: bool


@dataclass(frozen=True)
class SpeechStarted:
    """The gate opened.

    ``audio`` runs from ``audio_start_ms`` (pre-roll included) to the end of the frame that opened the gate;
    those samples were already passed through as ``VadAudio(in_speech=False)``. A consumer that only wants
    the user's turn takes ``audio`` and then every ``VadAudio(in_speech=True)`` until :class:`SpeechStopped`.
    """

    audio_start_ms: int
    speech_start_ms: int
    audio: np.ndarray


@dataclass(frozen=True)
class SpeechStopped:
    """The gate closed after enough silence.

    ``audio_end_ms`` is where the turn's audio ends (the trailing silence included, as the protocol's
    ``speech_stopped`` reports it); ``speech_end_ms`` is the end of the last voiced frame.
    """

    audio_end_ms: int
    speech_end_ms: int


VadEvent = VadAudio | SpeechStarted | SpeechStopped


class VadGate:
    """Turns a stream of 16 kHz float32 pieces of any size into :data:`VadEvent` lists.

    Offsets are milliseconds on the session's audio clock: ``start_ms`` is the clock when the gate begins,
    so a gate rebuilt after ``session.update`` continues the same clock.
    """

    def __init__(self, settings: VadSettings | None = None, start_ms: int = 0) -> None:
        self.settings = settings or VadSettings()
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._noise_floor = NoiseFloor(self.settings.noise, self.settings.frame_ms, VAD_SAMPLE_RATE)
        self._start_ms = start_ms
        self._frame_samples = self.settings.frame_samples
        self._warmup_samples = VAD_SAMPLE_RATE * self.settings.warmup_ms // 1000
        self._warm_from = self._warmup_samples  # decisions before this sample index count as unvoiced
        self._pending = np.zeros(0, dtype=np.float32)
        self._samples_done = 0  # samples classified (or dropped by reset) since the gate began
        self._speaking = False
        self._open_window: deque[bool] = deque(maxlen=self.settings.open_frames)
        self._close_window: deque[bool] = deque(maxlen=self.settings.close_frames)
        self._recent: deque[np.ndarray] = deque(
            maxlen=self.settings.prefix_frames + self.settings.open_frames
        )
        self._last_voiced_end = 0

    @property
    def speaking(self) -> bool:
        """Whether the gate is open (the user is talking)."""
        return self._speaking

    @property
    def clock_ms(self) -> int:
        """The audio clock after everything pushed so far."""
        return self._ms(self._samples_done + self._pending.size)

    def push(self, samples: np.ndarray) -> list[VadEvent]:
        """Feed one piece of audio; returns the events it caused, in stream order."""
        data = np.concatenate([self._pending, np.asarray(samples, dtype=np.float32).ravel()])
        num_frames = data.size // self._frame_samples
        usable = num_frames * self._frame_samples
        frames = data[:usable].reshape(num_frames, self._frame_samples)
        self._pending = data[usable:]
        frames_int16 = float_to_int16(frames)
        not_floor = self._noise_floor.not_floor(frames) if num_frames else np.zeros(0, dtype=bool)

        events: list[VadEvent] = []
        run: list[np.ndarray] = []
        run_start = self._samples_done
        for frame, frame_int16, frame_not_floor in zip(frames, frames_int16, not_floor, strict=True):
            voiced = self._vad.is_speech(frame_int16.tobytes(), VAD_SAMPLE_RATE)
            voiced = voiced and bool(frame_not_floor) and self._samples_done >= self._warm_from
            run.append(frame)
            was_speaking = self._speaking
            transition = self._step(frame, voiced)
            self._samples_done += self._frame_samples
            if transition is not None:
                events.append(VadAudio(np.concatenate(run), self._ms(run_start), was_speaking))
                events.append(transition)
                run, run_start = [], self._samples_done
        if run:
            events.append(VadAudio(np.concatenate(run), self._ms(run_start), self._speaking))
        return events

    def flush(self) -> list[VadEvent]:
        """Pass through the unclassified remainder (shorter than a frame) at the end of a stream."""
        if self._pending.size == 0:
            return []
        audio = VadAudio(self._pending, self._ms(self._samples_done), self._speaking)
        self._samples_done += self._pending.size
        self._pending = np.zeros(0, dtype=np.float32)
        return [audio]

    def reset(self) -> None:
        """Forget all per-turn state and buffered audio (a turn ended, or ``input_audio_buffer.clear``).

        WebRTC's detector starts afresh too (its noise model learnt the turn just heard), with its warm-up;
        the noise floor, a property of the room, is kept. The clock keeps running. No event is produced:
        a caller that cares whether a turn was open reads :attr:`speaking` first.
        """
        self._samples_done += self._pending.size
        self._pending = np.zeros(0, dtype=np.float32)
        self._vad = webrtcvad.Vad(self.settings.aggressiveness)
        self._warm_from = self._samples_done + self._warmup_samples
        self._speaking = False
        self._open_window.clear()
        self._close_window.clear()
        self._recent.clear()
        self._last_voiced_end = self._samples_done

    def _ms(self, sample_index: int) -> int:
        return self._start_ms + sample_index * 1000 // VAD_SAMPLE_RATE

    def _step(self, frame: np.ndarray, voiced: bool) -> SpeechStarted | SpeechStopped | None:
        """Advance the state machine by one frame (``self._samples_done`` is still the frame's start)."""
        frame_end = self._samples_done + self._frame_samples
        if voiced:
            self._last_voiced_end = frame_end
        if self._speaking:
            return self._step_in_speech(voiced, frame_end)
        self._open_window.append(voiced)
        self._recent.append(frame)
        needed = max(1, math.ceil(self.settings.open_ratio * self.settings.open_frames))
        if not voiced or sum(self._open_window) < needed:
            return None

        # Speech begins at the first voiced frame of the deciding window; the pre-roll reaches back from it.
        window = list(self._open_window)
        first_voiced_ago = len(window) - 1 - window.index(True)
        frames_back = min(first_voiced_ago + self.settings.prefix_frames, len(self._recent) - 1)
        audio = np.concatenate(list(self._recent)[-(frames_back + 1) :])
        speech_start = frame_end - (first_voiced_ago + 1) * self._frame_samples
        audio_start = frame_end - audio.size
        self._speaking = True
        self._open_window.clear()
        self._close_window.clear()
        self._recent.clear()
        return SpeechStarted(self._ms(audio_start), self._ms(speech_start), audio)

    def _step_in_speech(self, voiced: bool, frame_end: int) -> SpeechStopped | None:
        self._close_window.append(voiced)
        settings = self.settings
        if len(self._close_window) < settings.close_frames:
            return None
        if sum(self._close_window) > math.floor(settings.close_ratio * settings.close_frames):
            return None
        self._speaking = False
        self._open_window.clear()
        self._close_window.clear()
        return SpeechStopped(self._ms(frame_end), self._ms(self._last_voiced_end))
