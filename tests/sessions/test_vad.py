"""Server VAD gate of app.sessions.vad on real synthesized speech (needs the ``espeak-ng`` program)."""

from __future__ import annotations

import shutil
import subprocess
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.sessions.audio_formats import decode_pcm16, resample
from app.sessions.noise_floor import NoiseFloor, NoiseGateSettings
from app.sessions.vad import (
    SpeechStarted,
    SpeechStopped,
    VadAudio,
    VadEvent,
    VadGate,
    VadSettings,
    aggressiveness_from_threshold,
)

RATE = 16000
FRAME_MS = 30


@dataclass(frozen=True)
class Utterance:
    """Synthesized speech at 16 kHz, trimmed so that its sound fills it from end to end."""

    samples: np.ndarray
    duration_ms: float


@pytest.fixture(scope="session")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> Utterance:
    """One spoken sentence from espeak-ng, trimmed to its sound."""
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is needed for the VAD tests: apt-get install -y espeak-ng")
    path: Path = tmp_path_factory.mktemp("speech") / "sentence.wav"
    subprocess.run(
        [
            "espeak-ng",
            "-v",
            "en",
            "-s",
            "150",
            "-w",
            str(path),
            "The quick brown fox jumps over the lazy dog",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    with wave.open(str(path), "rb") as wav:
        assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        samples = resample(decode_pcm16(wav.readframes(wav.getnframes())), wav.getframerate(), RATE)
    loud = np.nonzero(np.abs(samples) > 0.01)[0]
    samples = samples[loud[0] : loud[-1] + 1]
    return Utterance(samples=samples, duration_ms=1000 * samples.size / RATE)


def silence(seconds: float, noise: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(RATE * seconds)) * noise).astype(np.float32)


def run(gate: VadGate, signal: np.ndarray, seed: int | None = 0) -> list[VadEvent]:
    """Feed ``signal`` in random-size pieces (or whole when ``seed`` is None) and flush."""
    events: list[VadEvent] = []
    if seed is None:
        events += gate.push(signal)
    else:
        rng = np.random.default_rng(seed)
        pos = 0
        while pos < signal.size:
            size = int(rng.integers(1, 2500))
            events += gate.push(signal[pos : pos + size])
            pos += size
    return events + gate.flush()


def turns(events: list[VadEvent]) -> list[SpeechStarted | SpeechStopped]:
    return [event for event in events if not isinstance(event, VadAudio)]


def conversation(utterance: Utterance) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """1 s quiet, the sentence, 1.5 s quiet, the sentence, 1 s quiet, with faint noise throughout."""
    parts = [silence(1.0), utterance.samples, silence(1.5), utterance.samples, silence(1.0)]
    signal = np.concatenate(parts) + silence(sum(p.size for p in parts) / RATE, noise=0.001, seed=1)
    first = (1000.0, 1000.0 + utterance.duration_ms)
    second_start = first[1] + 1500.0
    return signal.astype(np.float32), [first, (second_start, second_start + utterance.duration_ms)]


def test_speech_turns_start_and_stop_at_the_right_times(utterance: Utterance) -> None:
    signal, truth = conversation(utterance)
    settings = VadSettings(prefix_padding_ms=300, silence_duration_ms=500)
    found = turns(run(VadGate(settings), signal))

    assert [type(event) for event in found] == [SpeechStarted, SpeechStopped] * 2
    for (onset, offset), start, stop in zip(truth, found[::2], found[1::2], strict=True):
        assert isinstance(start, SpeechStarted) and isinstance(stop, SpeechStopped)
        assert abs(start.speech_start_ms - onset) <= 2 * FRAME_MS
        assert start.audio_start_ms == start.speech_start_ms - settings.prefix_padding_ms
        # The pre-roll, then whole frames up to the one that opened the gate.
        assert start.audio.size % settings.frame_samples == 0
        assert start.audio.size > settings.prefix_padding_ms * RATE // 1000
        assert offset - 150 <= stop.speech_end_ms <= offset + 250
        assert settings.silence_duration_ms - 2 * FRAME_MS <= stop.audio_end_ms - stop.speech_end_ms
        assert stop.audio_end_ms - stop.speech_end_ms <= settings.silence_duration_ms + FRAME_MS


def test_passthrough_is_lossless_and_the_gated_turn_is_the_right_slice(utterance: Utterance) -> None:
    signal, _ = conversation(utterance)
    events = run(VadGate(), signal)
    chunks = [event for event in events if isinstance(event, VadAudio)]
    np.testing.assert_array_equal(np.concatenate([chunk.samples for chunk in chunks]), signal)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert after.start_ms == before.start_ms + before.samples.size * 1000 // RATE

    # A consumer that wants only the turn: the start's pre-roll, then the in-speech chunks until the stop.
    turn: list[np.ndarray] = []
    collected: list[tuple[int, int, np.ndarray]] = []
    start_ms = 0
    for event in events:
        if isinstance(event, SpeechStarted):
            turn, start_ms = [event.audio], event.audio_start_ms
        elif isinstance(event, VadAudio) and event.in_speech:
            turn.append(event.samples)
        elif isinstance(event, SpeechStopped):
            collected.append((start_ms, event.audio_end_ms, np.concatenate(turn)))
    assert len(collected) == 2
    for begin_ms, end_ms, audio in collected:
        np.testing.assert_array_equal(audio, signal[begin_ms * RATE // 1000 : end_ms * RATE // 1000])


def test_events_do_not_depend_on_how_audio_is_split(utterance: Utterance) -> None:
    signal, _ = conversation(utterance)

    def summary(events: list[VadEvent]) -> list[tuple[str, int]]:
        return [
            (type(e).__name__, e.audio_start_ms if isinstance(e, SpeechStarted) else e.audio_end_ms)
            for e in turns(events)
        ]

    whole = summary(run(VadGate(), signal, seed=None))
    assert whole == summary(run(VadGate(), signal, seed=7))
    assert whole == summary(run(VadGate(), signal, seed=8))


def test_speech_from_the_first_millisecond_is_caught_with_its_start(utterance: Utterance) -> None:
    signal = np.concatenate([utterance.samples, silence(1.0)])
    found = turns(run(VadGate(), signal))
    assert [type(event) for event in found] == [SpeechStarted, SpeechStopped]
    assert isinstance(found[0], SpeechStarted) and found[0].audio_start_ms == 0


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
@pytest.mark.parametrize(
    "kind",
    ["digital_silence", "noise_-50dBFS", "noise_-60dBFS", "hum_50Hz"],
)
def test_silence_and_low_noise_do_not_open_the_gate(aggressiveness: int, kind: str) -> None:
    seconds = 5.0
    if kind == "digital_silence":
        signal = silence(seconds)
    elif kind == "hum_50Hz":
        t = np.arange(int(RATE * seconds)) / RATE
        signal = (0.01 * np.sin(2 * np.pi * 50 * t)).astype(np.float32)
    else:
        signal = silence(seconds, noise=0.003 if "50" in kind else 0.001, seed=aggressiveness)
    gate = VadGate(VadSettings(aggressiveness=aggressiveness))
    assert turns(run(gate, signal)) == []
    assert not gate.speaking


def loudest_starts(samples: np.ndarray, length: int, count: int) -> list[int]:
    """Starts of the ``count`` loudest non-overlapping windows of ``length`` samples."""
    energy = np.convolve(samples**2, np.ones(length), mode="valid")
    starts: list[int] = []
    for start in np.argsort(energy)[::-1]:
        if all(abs(int(start) - other) >= length for other in starts):
            starts.append(int(start))
        if len(starts) == count:
            break
    return starts


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_a_click_does_not_open_but_a_word_does(utterance: Utterance, aggressiveness: int) -> None:
    settings = VadSettings(aggressiveness=aggressiveness)
    for start in loudest_starts(utterance.samples, 300 * RATE // 1000, count=4):
        for length_ms, opens in ((30, False), (300, True)):
            piece = utterance.samples[start : start + length_ms * RATE // 1000]
            signal = np.concatenate([silence(1.0), piece, silence(1.0)])
            started = [e for e in run(VadGate(settings), signal) if isinstance(e, SpeechStarted)]
            assert len(started) == int(opens), (start, length_ms)


def test_start_ms_continues_the_session_clock(utterance: Utterance) -> None:
    signal, _ = conversation(utterance)
    plain = turns(run(VadGate(), signal))
    shifted = turns(run(VadGate(start_ms=60_000), signal))
    for a, b in zip(plain, shifted, strict=True):
        if isinstance(a, SpeechStarted) and isinstance(b, SpeechStarted):
            assert b.audio_start_ms == a.audio_start_ms + 60_000
        elif isinstance(a, SpeechStopped) and isinstance(b, SpeechStopped):
            assert b.audio_end_ms == a.audio_end_ms + 60_000


def test_reset_ends_the_turn_silently_and_keeps_the_clock(utterance: Utterance) -> None:
    gate = VadGate()
    gate.push(silence(1.0))
    gate.push(utterance.samples[: utterance.samples.size // 2])
    assert gate.speaking
    clock = gate.clock_ms
    gate.reset()
    assert not gate.speaking
    assert gate.clock_ms == clock
    assert turns(gate.push(silence(1.0))) == []
    assert gate.clock_ms == clock + 1000


def test_settings_are_checked_and_threshold_maps_to_aggressiveness() -> None:
    for bad in ({"aggressiveness": 4}, {"frame_ms": 25}, {"silence_duration_ms": -1}, {"open_ratio": 0.0}):
        with pytest.raises(ValueError):
            VadSettings(**bad)  # type: ignore[arg-type]
    assert [aggressiveness_from_threshold(t) for t in (0.0, 0.3, 0.5, 0.8, 1.0)] == [0, 1, 2, 3, 3]
    settings = VadSettings(frame_ms=20, min_speech_ms=100, silence_duration_ms=500, prefix_padding_ms=300)
    assert (settings.frame_samples, settings.open_frames, settings.close_frames, settings.prefix_frames) == (
        320,
        5,
        25,
        15,
    )


# -- a real room: a steady floor after (or under) a question whose pauses are exact zeros ------------------
def room_floor(kind: str, dbfs: float, seconds: float, seed: int = 3) -> np.ndarray:
    """White, pink or fan-like noise (a 100 Hz hum with harmonics over brown rumble) at `dbfs` (RMS)."""
    rng = np.random.default_rng(seed)
    samples = rng.standard_normal(int(RATE * seconds))
    if kind == "fan":
        t = np.arange(samples.size) / RATE
        hum = sum(np.sin(2 * np.pi * 100 * h * t + h) / h for h in (1, 2, 3))
        rumble = np.cumsum(samples)
        rumble -= np.convolve(rumble, np.ones(400) / 400, "same")
        samples = hum / np.std(hum) + rumble / np.std(rumble)
    elif kind == "pink":
        spectrum = np.fft.rfft(samples)
        spectrum /= np.sqrt(np.maximum(np.fft.rfftfreq(samples.size), 1.0 / samples.size))
        samples = np.fft.irfft(spectrum, samples.size)
    samples /= np.sqrt(np.mean(samples**2))
    return (samples * 10 ** (dbfs / 20)).astype(np.float32)


ROOMS = [
    ("white", -64.0, False),
    ("pink", -50.0, False),
    ("pink", -45.0, False),
    ("fan", -45.0, False),
    ("white", -64.0, True),
    ("pink", -50.0, True),
]


@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
@pytest.mark.parametrize(("kind", "dbfs", "under"), ROOMS)
def test_a_steady_floor_after_a_question_with_exact_zeros_is_not_speech(
    utterance: Utterance, aggressiveness: int, kind: str, dbfs: float, under: bool
) -> None:
    speech = utterance.samples
    assert np.mean(speech == 0.0) > 0.02, "espeak-ng's pauses should be exact zeros"
    lead = room_floor(kind, dbfs, 1.0, seed=5) if under else silence(1.0)
    if under:
        speech = speech + room_floor(kind, dbfs, speech.size / RATE, seed=6)
    signal = np.concatenate([lead, speech, room_floor(kind, dbfs, 10.0)])
    found = turns(run(VadGate(VadSettings(aggressiveness=aggressiveness)), signal))

    assert [type(event) for event in found] == [SpeechStarted, SpeechStopped], found
    stop = found[1]
    assert isinstance(stop, SpeechStopped)
    assert stop.speech_end_ms <= 1000 + utterance.duration_ms + 250


def test_a_reset_at_the_end_of_a_question_does_not_reopen_on_the_floor(utterance: Utterance) -> None:
    # As when the state head answers: the turn ends while the gate is still open.
    gate = VadGate()
    gate.push(silence(1.0))
    gate.push(utterance.samples)
    assert gate.speaking
    gate.reset()
    assert turns(gate.push(room_floor("white", -64.0, 6.0))) == []
    assert turns(gate.push(room_floor("pink", -50.0, 6.0, seed=4))) == []
    # ...and the next question still opens a turn.
    assert [type(e) for e in turns(gate.push(utterance.samples))] == [SpeechStarted]


def test_the_noise_floor_follows_the_room_down_at_once_and_up_slowly() -> None:
    frame = 480
    settings = NoiseGateSettings(margin_db=10.0, min_speech_dbfs=-55.0, rise_db_per_s=10.0)
    tracker = NoiseFloor(settings, frame_ms=30, sample_rate=RATE)

    def frames(samples: np.ndarray) -> np.ndarray:
        return samples[: samples.size // frame * frame].reshape(-1, frame)

    quiet = frames(room_floor("white", -64.0, 1.0))
    assert not tracker.not_floor(quiet)[5:].any()
    quiet_floor = tracker.floor_dbfs
    assert -72.0 < quiet_floor < -62.0  # the speech band holds part of the white noise's power
    assert tracker.not_floor(np.zeros((3, frame), dtype=np.float32)).all()  # left to WebRTC
    assert tracker.floor_dbfs == quiet_floor  # digital silence does not drag the floor

    loud = frames(room_floor("pink", -45.0, 4.0, seed=9))
    passed = tracker.not_floor(loud)
    one_second = RATE // frame
    assert tracker.floor_dbfs <= quiet_floor + 10.0 * 4.0 + 1.0
    assert not passed[-one_second:].any()  # learnt within seconds
    assert tracker.floor_dbfs > quiet_floor + 10.0
    tracker.not_floor(quiet)
    assert tracker.floor_dbfs < quiet_floor + 3.0  # and back down at once
    with pytest.raises(ValueError):
        NoiseGateSettings(margin_db=-1.0)
