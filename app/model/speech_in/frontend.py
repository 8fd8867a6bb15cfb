"""Speech front-end: Kaldi-compatible log-mel fbank, whole-signal and streaming per 160 ms chunk.

The published model computes features with ``torchaudio.compliance.kaldi.fbank`` (80 bins, 25 ms / 10 ms,
``dither=0``, every other option the Kaldi default). We compute the same features with
``kaldi_native_fbank``, which implements the same Kaldi recipe without a torchaudio dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import kaldi_native_fbank as knf
import numpy as np

from app.model.audio_constants import INPUT_RATE

INT16_SCALE = 32768.0
"""Float samples in [-1, 1] are scaled to int16 range before fbank, as the published code does."""


@dataclass(frozen=True)
class FbankConfig:
    """Feature and chunking parameters of the published front-end.

    The Kaldi frame geometry (400-sample window, 160-sample shift at 16 kHz) is fixed by the model's
    training; ``chunk_frames`` and ``context_frames`` follow from the encoder's chunk size (4 encoder
    frames x subsampling 4 = 16 fbank frames) and the Conv2d subsampler's right context (3 frames).
    """

    sample_rate: int = INPUT_RATE
    num_mel_bins: int = 80
    frame_length_samples: int = 400
    frame_shift_samples: int = 160
    chunk_frames: int = 16
    context_frames: int = 3

    @property
    def chunk_samples(self) -> int:
        """Audio samples per streaming chunk (2560 = 160 ms)."""
        return self.chunk_frames * self.frame_shift_samples

    @property
    def overlap_samples(self) -> int:
        """Samples carried over between chunks so frames tile without gaps (240)."""
        return self.frame_length_samples - self.frame_shift_samples

    @property
    def frames_per_chunk_input(self) -> int:
        """Rows of the encoder input per chunk (19): carried context plus new frames."""
        return self.context_frames + self.chunk_frames


def fbank_options(config: FbankConfig = FbankConfig()) -> knf.FbankOptions:
    """Build the Kaldi fbank options used by the published model.

    Only dither (0), the frame geometry and the number of mel bins differ from Kaldi defaults; povey
    window, preemphasis 0.97, DC removal, snip_edges, log fbank and no energy are the defaults.
    """
    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = float(config.sample_rate)
    opts.frame_opts.frame_length_ms = 1000.0 * config.frame_length_samples / config.sample_rate
    opts.frame_opts.frame_shift_ms = 1000.0 * config.frame_shift_samples / config.sample_rate
    opts.frame_opts.dither = 0.0
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.window_type = "povey"
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = config.num_mel_bins
    opts.use_energy = False
    opts.use_log_fbank = True
    return opts


def _to_int16_scale(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {samples.shape}")
    return samples * np.float32(INT16_SCALE)


def fbank_whole(samples: np.ndarray, config: FbankConfig = FbankConfig()) -> np.ndarray:
    """Log-mel fbank of a whole mono signal.

    Args:
        samples: float samples in [-1, 1] at ``config.sample_rate``, shape (N,).

    Returns:
        float32 array (T, num_mel_bins) with T = 1 + (N - 400) // 160 (0 if N < 400).
    """
    extractor = knf.OnlineFbank(fbank_options(config))
    extractor.accept_waveform(float(config.sample_rate), _to_int16_scale(samples))
    extractor.input_finished()
    num_frames = extractor.num_frames_ready
    feats = np.empty((num_frames, config.num_mel_bins), dtype=np.float32)
    for i in range(num_frames):
        feats[i] = extractor.get_frame(i)
    return feats


class StreamingFbank:
    """Per-session streaming fbank reproducing the published chunk rule exactly.

    Each call takes one chunk of ``chunk_samples`` (2560) samples and returns the (19, 80) encoder input.
    The published code recomputes fbank over a 2800-sample window (previous chunk's last 240 samples +
    the new 2560), which yields exactly 16 new frames; frames are computed independently per window,
    so feeding the waveform incrementally to one online extractor gives the same frames without
    recomputing anything. The returned block is the previous chunk's last 3 frames + the 16 new ones.

    Quirks kept on purpose:
        * the very first chunk's 240 "previous" samples are zeros (the published sample buffer starts
          zeroed), so frame 0 straddles 15 ms of silence;
        * the very first chunk's 3 context rows are zero *features* (0.0, not the log-energy of
          silence); they still go through CMVN inside the encoder.
    """

    def __init__(self, config: FbankConfig = FbankConfig()) -> None:
        self.config = config
        self._options = fbank_options(config)
        self.reset()

    @property
    def chunk_samples(self) -> int:
        """Samples expected per call to :meth:`accept_chunk`."""
        return self.config.chunk_samples

    def reset(self) -> None:
        """Start a new stream: zero sample overlap and zero feature context."""
        cfg = self.config
        self._extractor = knf.OnlineFbank(self._options)
        self._extractor.accept_waveform(float(cfg.sample_rate), np.zeros(cfg.overlap_samples, np.float32))
        self._frames_done = 0
        self._context = np.zeros((cfg.context_frames, cfg.num_mel_bins), dtype=np.float32)

    def accept_chunk(self, samples: np.ndarray) -> np.ndarray:
        """Consume one chunk of float samples in [-1, 1]; return the float32 (19, 80) encoder input."""
        cfg = self.config
        scaled = _to_int16_scale(samples)
        if scaled.shape[0] != cfg.chunk_samples:
            raise ValueError(f"expected a chunk of {cfg.chunk_samples} samples, got {scaled.shape[0]}")
        self._extractor.accept_waveform(float(cfg.sample_rate), scaled)
        ready = self._extractor.num_frames_ready
        if ready - self._frames_done != cfg.chunk_frames:
            raise RuntimeError(
                f"fbank produced {ready - self._frames_done} frames, expected {cfg.chunk_frames}"
            )
        out = np.empty((cfg.frames_per_chunk_input, cfg.num_mel_bins), dtype=np.float32)
        out[: cfg.context_frames] = self._context
        for row, frame in enumerate(range(self._frames_done, ready), start=cfg.context_frames):
            out[row] = self._extractor.get_frame(frame)
        # Frame indices stay absolute after pop; dropping them keeps memory flat over long sessions.
        self._extractor.pop(ready - self._frames_done)
        self._frames_done = ready
        self._context = out[cfg.chunk_frames :].copy()
        return out
