"""Spectral features and losses for the codec: log-mel, multi-resolution STFT."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def mel_filterbank(
    n_fft: int, n_mels: int, rate: int, fmin: float = 0.0, fmax: float | None = None
) -> torch.Tensor:
    """HTK-style triangular mel filters, (n_mels, n_fft // 2 + 1)."""
    fmax = fmax or rate / 2

    def hz_to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    mels = torch.linspace(hz_to_mel(torch.tensor(fmin)), hz_to_mel(torch.tensor(fmax)), n_mels + 2)
    edges = mel_to_hz(mels)
    freqs = torch.linspace(0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class LogMel(nn.Module):
    """(B, N) waveform -> (B, n_mels, frames) log-mel, frames = N // hop + 1 (centred)."""

    def __init__(
        self, rate: int, n_fft: int, hop: int, win: int, n_mels: int = 80, fmax: float | None = None
    ):
        super().__init__()
        self.n_fft, self.hop, self.win = n_fft, hop, win
        self.register_buffer("window", torch.hann_window(win), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_fft, n_mels, rate, fmax=fmax), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, self.n_fft, self.hop, self.win, self.window, center=True, return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)
        return torch.log(torch.clamp(self.filters @ power, min=1e-5))


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1, averaged over three resolutions."""

    def __init__(
        self,
        resolutions: tuple[tuple[int, int, int], ...] = ((512, 50, 240), (1024, 120, 600), (2048, 240, 1200)),
    ):
        super().__init__()
        self.resolutions = resolutions
        for index, (_, _, win) in enumerate(resolutions):
            self.register_buffer(f"window{index}", torch.hann_window(win), persistent=False)

    def forward(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = predicted.new_zeros(())
        for index, (n_fft, hop, win) in enumerate(self.resolutions):
            window = getattr(self, f"window{index}")
            mags = [
                torch.stft(x, n_fft, hop, win, window, center=True, return_complex=True).abs().clamp(min=1e-7)
                for x in (predicted, target)
            ]
            convergence = torch.linalg.norm(mags[1] - mags[0]) / torch.linalg.norm(mags[1]).clamp(min=1e-7)
            magnitude = F.l1_loss(torch.log(mags[0]), torch.log(mags[1]))
            total = total + convergence + magnitude
        return total / len(self.resolutions)


def db_snr(reference: torch.Tensor, estimate: torch.Tensor) -> float:
    noise = (reference - estimate).pow(2).sum()
    return float(10 * math.log10(float(reference.pow(2).sum()) / max(float(noise), 1e-12)))
