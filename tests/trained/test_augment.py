"""The training recipe's channel and room augmentation does what its names say (no model needed)."""

from __future__ import annotations

import numpy as np

from training.augment import RATE, augment, band_pass, insert_pauses, mu_law, phone_line, room_impulse


def _tone(freq: float, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(RATE * seconds)) / RATE
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2)))


def test_band_pass_keeps_the_voice_band_and_drops_the_rest() -> None:
    assert _rms(band_pass(_tone(1000), 300, 3400)) > 0.3
    assert _rms(band_pass(_tone(100), 300, 3400)) < 0.01
    assert _rms(band_pass(_tone(6000), 300, 3400)) < 0.01


def test_mu_law_round_trip_is_close_but_quantised() -> None:
    x = _tone(440)
    y = mu_law(x)
    assert np.max(np.abs(x - y)) < 0.02
    assert len(np.unique(y)) <= 255


def test_a_phone_line_removes_what_8_khz_cannot_carry() -> None:
    rng = np.random.default_rng(0)
    assert _rms(phone_line(_tone(5000), rng)) < 0.01
    out = phone_line(_tone(1000), rng)
    assert len(out) == RATE // 2 and _rms(out) > 0.2


def test_room_impulses_decay_and_vary_in_size() -> None:
    lengths = []
    for seed in range(20):
        h = room_impulse(np.random.default_rng(seed))
        assert h[0] >= 0.5  # the direct path
        tail = h[len(h) // 2 :]
        assert np.sum(tail**2) < np.sum(h[1 : len(h) // 2] ** 2)
        lengths.append(len(h))
    assert max(lengths) > 4 * min(lengths)


def test_pauses_are_inserted_between_words() -> None:
    word = _tone(300, 0.3)
    gap = np.zeros(int(0.05 * RATE), dtype=np.float32)
    speech = np.concatenate([word, gap, word, gap, word])
    longer = insert_pauses(speech, np.random.default_rng(0), count=2, longest_s=0.4)
    assert len(longer) > len(speech) + 0.1 * RATE


def test_augment_keeps_length_and_spreads_levels() -> None:
    rng = np.random.default_rng(1)
    speech = np.concatenate([np.zeros(RATE // 2), _tone(500, 1.0), np.zeros(RATE // 2)]).astype(np.float32)
    pool = [_tone(700, 0.8), _tone(900, 0.6)]
    peaks = []
    for _ in range(12):
        out = augment(speech, RATE // 2, RATE // 2 + RATE, rng, pool)
        assert out.shape == speech.shape and np.all(np.abs(out) <= 1)
        peaks.append(float(np.abs(out).max()))
    assert max(peaks) / min(peaks) > 5  # levels from -36 to -1 dBFS


def test_babble_share_sets_how_often_other_talkers_are_mixed_in() -> None:
    """The state-head round asks for more babble than the default 30 %; 0 must mean none."""
    speech = np.concatenate([np.zeros(RATE // 2), _tone(500, 1.0), np.zeros(RATE // 2)]).astype(np.float32)
    pool = [_tone(2000, 0.8)]
    freqs = np.fft.rfftfreq(RATE // 2, 1 / RATE)

    def babble_heard(share: float, seed: int) -> bool:
        out = augment(
            speech, RATE // 2, RATE // 2 + RATE, np.random.default_rng(seed), pool, babble_share=share
        )
        lead = np.abs(np.fft.rfft(out[: RATE // 2]))  # only the babble can put a 2 kHz tone here
        return bool(lead[np.abs(freqs - 2000) < 10].max() > 60 * np.median(lead))

    assert sum(babble_heard(0.0, seed) for seed in range(20)) == 0
    assert sum(babble_heard(1.0, seed) for seed in range(20)) >= 16


def test_the_held_out_telephone_condition_is_band_limited_and_keeps_length() -> None:
    from training.heldout_eval import telephone

    t = np.arange(RATE) / RATE
    mix = (0.3 * np.sin(2 * np.pi * 1000 * t) + 0.3 * np.sin(2 * np.pi * 6000 * t)).astype(np.float32)
    out = telephone(mix)[: len(mix)]
    spectrum = np.abs(np.fft.rfft(out))
    freqs = np.fft.rfftfreq(len(out), 1 / RATE)
    assert abs(len(out) - len(mix)) < RATE // 100
    assert spectrum[np.abs(freqs - 6000) < 50].max() < 0.01 * spectrum[np.abs(freqs - 1000) < 50].max()


def test_held_out_conditions_keep_the_question_where_it_was() -> None:
    from training.heldout_eval import OFFLINE, condition_recording

    sound = np.concatenate([_tone(300, 0.4), np.zeros(800, np.float32), _tone(500, 0.4)])
    for name in OFFLINE:
        samples, end_chunk = condition_recording(name, sound, seed=1)
        assert samples.dtype == np.float32 and np.all(np.abs(samples) <= 1)
        lead = 2.0 if name == "pauses2s" else 0.3
        assert end_chunk == (int(lead * RATE) + len(sound) - 1) // 2560, name
        assert len(samples) > (end_chunk + 1) * 2560, name
