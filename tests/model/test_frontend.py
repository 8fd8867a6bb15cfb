"""Front-end tests: Kaldi fbank options, the streaming chunk rule, and the CMVN stats file math."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from app.model.speech_in.cmvn import CmvnStats, GlobalCMVN
from app.model.speech_in.frontend import FbankConfig, StreamingFbank, fbank_whole

CFG = FbankConfig()


def _test_signal(num_samples: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(num_samples) / CFG.sample_rate
    tone = 0.3 * np.sin(2 * np.pi * 440.0 * t) + 0.1 * np.sin(2 * np.pi * 2500.0 * t)
    return (tone + 0.05 * rng.standard_normal(num_samples)).astype(np.float32)


def _kaldi_fbank_reference(samples: np.ndarray, num_bins: int = 80) -> np.ndarray:
    """Independent float64 Kaldi fbank (povey, preemph 0.97, DC removal, snip_edges, 512-point FFT)."""
    wave = samples.astype(np.float64) * 32768.0
    frame_len, shift, n_fft, rate = 400, 160, 512, 16000
    num_frames = 1 + (len(wave) - frame_len) // shift
    frames = np.stack([wave[i * shift : i * shift + frame_len] for i in range(num_frames)])
    frames = frames - frames.mean(axis=1, keepdims=True)
    emphasised = frames.copy()
    emphasised[:, 1:] -= 0.97 * frames[:, :-1]
    emphasised[:, 0] -= 0.97 * frames[:, 0]
    n = np.arange(frame_len)
    emphasised *= (0.5 - 0.5 * np.cos(2 * np.pi * n / (frame_len - 1))) ** 0.85
    power = np.abs(np.fft.rfft(emphasised, n=n_fft)) ** 2

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    mel_low, mel_high = mel(20.0), mel(rate / 2)
    delta = (mel_high - mel_low) / (num_bins + 1)
    bin_mels = mel(np.arange(n_fft // 2) * rate / n_fft)
    banks = np.zeros((num_bins, n_fft // 2 + 1))
    for b in range(num_bins):
        left, centre, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        rising = (bin_mels - left) / (centre - left)
        falling = (right - bin_mels) / (right - centre)
        banks[b, : n_fft // 2] = np.clip(np.minimum(rising, falling), 0.0, None)
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps))


def test_fbank_matches_independent_kaldi_reference() -> None:
    samples = _test_signal(8000)
    ours = fbank_whole(samples)
    expected = _kaldi_fbank_reference(samples)
    assert ours.shape == (1 + (8000 - 400) // 160, 80)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, atol=1e-3, rtol=0)


def test_streaming_equals_whole_signal_with_zero_prefix() -> None:
    num_chunks = 12
    samples = _test_signal(num_chunks * CFG.chunk_samples, seed=1)
    stream = StreamingFbank()
    blocks = [stream.accept_chunk(samples[i * 2560 : (i + 1) * 2560]) for i in range(num_chunks)]
    assert all(b.shape == (19, 80) and b.dtype == np.float32 for b in blocks)

    streamed = np.concatenate([b[3:] for b in blocks])
    whole = fbank_whole(np.concatenate([np.zeros(240, np.float32), samples]))
    assert whole.shape == streamed.shape == (num_chunks * 16, 80)
    np.testing.assert_allclose(streamed, whole, atol=1e-4, rtol=0)


def test_context_rows_are_zero_then_previous_chunk_tail() -> None:
    samples = _test_signal(3 * 2560, seed=2)
    stream = StreamingFbank()
    first = stream.accept_chunk(samples[:2560])
    second = stream.accept_chunk(samples[2560:5120])
    # Zero features, not the log-energy of silence: the published feature buffer starts zeroed.
    assert np.all(first[:3] == 0.0)
    assert np.all(first[3:] != 0.0)
    np.testing.assert_array_equal(second[:3], first[-3:])

    stream.reset()
    again = stream.accept_chunk(samples[:2560])
    np.testing.assert_array_equal(again, first)


def test_first_frame_sees_240_zero_samples() -> None:
    samples = _test_signal(2560, seed=3)
    block = StreamingFbank().accept_chunk(samples)
    padded = np.concatenate([np.zeros(240, np.float32), samples[:160]])
    np.testing.assert_allclose(block[3], fbank_whole(padded)[0], atol=1e-4, rtol=0)


def test_wrong_chunk_length_is_rejected() -> None:
    with pytest.raises(ValueError, match="2560"):
        StreamingFbank().accept_chunk(np.zeros(2000, np.float32))


def test_cmvn_json_round_trip_and_math(tmp_path) -> None:
    rng = np.random.default_rng(4)
    feats = rng.normal(loc=10.0, scale=3.0, size=(500, 80))
    feats[:, 5] = 7.0  # constant dimension: variance floors at 1e-20
    stats = CmvnStats.from_features(feats)
    path = tmp_path / "global_cmvn"
    stats.to_json(path)
    loaded = CmvnStats.from_json(path)
    assert loaded.frame_num == 500.0
    mean, istd = loaded.mean_istd()
    assert mean.dtype == istd.dtype == np.float32

    expected_mean = feats.mean(axis=0)
    expected_var = np.maximum((feats**2).mean(axis=0) - expected_mean**2, 1e-20)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-6)
    np.testing.assert_allclose(istd, 1.0 / np.sqrt(expected_var), rtol=1e-4)
    assert istd[5] > 1e8

    module = GlobalCMVN.from_stats(loaded)
    x = torch.from_numpy(feats[:4].astype(np.float32))
    expected = (x - torch.from_numpy(mean)) * torch.from_numpy(istd)
    torch.testing.assert_close(module(x), expected)


def test_cmvn_kaldi_text_loader(tmp_path) -> None:
    path = tmp_path / "cmvn.ark"
    path.write_text(" [\n  4.0 8.0 2.0\n  10.0 36.0 0 ]\n")
    stats = CmvnStats.from_kaldi_text(path)
    mean, istd = stats.mean_istd()
    np.testing.assert_allclose(mean, [2.0, 4.0])
    np.testing.assert_allclose(istd, [1.0, 1.0 / math.sqrt(2.0)], rtol=1e-6)


def test_checkpoint_cmvn_overrides_file_values() -> None:
    module = GlobalCMVN(80, np.zeros(80, np.float32), np.ones(80, np.float32))
    assert set(module.state_dict()) == {"mean", "istd"}
    module.load_state_dict({"mean": torch.full((80,), 2.0), "istd": torch.full((80,), 0.5)})
    torch.testing.assert_close(module(torch.full((1, 80), 4.0)), torch.ones(1, 80))
