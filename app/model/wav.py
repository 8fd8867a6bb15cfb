"""WAV files in and out: PCM 8/16/24/32-bit and IEEE float, any channel count, read as mono float32."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import soxr


class WavError(ValueError):
    """The bytes are not a WAV file we can read."""


def _chunks(data: bytes):
    offset = 12
    while offset + 8 <= len(data):
        chunk_id, size = struct.unpack_from("<4sI", data, offset)
        yield chunk_id, data[offset + 8 : offset + 8 + size]
        offset += 8 + size + (size & 1)


def read_wav_bytes(data: bytes) -> tuple[np.ndarray, int]:
    """Decode a WAV file: returns (mono float32 samples in [-1, 1], sample rate)."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    fmt = payload = None
    for chunk_id, body in _chunks(data):
        if chunk_id == b"fmt ":
            fmt = body
        elif chunk_id == b"data":
            payload = body
    if fmt is None or payload is None or len(fmt) < 16:
        raise WavError("WAV file has no fmt or data chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the real tag opens the GUID
        tag = struct.unpack_from("<H", fmt, 24)[0]
    if channels < 1 or rate < 1 or block_align < 1:
        raise WavError(f"WAV header is invalid (channels={channels}, rate={rate})")
    frames = len(payload) // block_align
    payload = payload[: frames * block_align]
    if tag == 1 and bits == 8:
        samples = (np.frombuffer(payload, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif tag == 1 and bits == 16:
        samples = np.frombuffer(payload, "<i2").astype(np.float32) / 32768.0
    elif tag == 1 and bits == 24:
        raw = np.frombuffer(payload, np.uint8).reshape(-1, 3).astype(np.int32)
        value = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        samples = (np.where(value >= 1 << 23, value - (1 << 24), value) / float(1 << 23)).astype(np.float32)
    elif tag == 1 and bits == 32:
        samples = (np.frombuffer(payload, "<i4") / float(1 << 31)).astype(np.float32)
    elif tag == 3 and bits in (32, 64):
        samples = np.frombuffer(payload, "<f4" if bits == 32 else "<f8").astype(np.float32)
    else:
        raise WavError(f"unsupported WAV encoding (format tag {tag}, {bits} bits); use PCM or float")
    return samples.reshape(-1, channels).mean(axis=1).astype(np.float32), rate


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file from disk (see `read_wav_bytes`)."""
    return read_wav_bytes(Path(path).read_bytes())


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """Encode mono float samples as a 16-bit PCM WAV file."""
    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1.0, 1.0) * 32767.0).astype("<i2")
    out = io.BytesIO()
    out.write(b"RIFF" + struct.pack("<I", 36 + pcm.nbytes) + b"WAVE")
    out.write(b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16))
    out.write(b"data" + struct.pack("<I", pcm.nbytes) + pcm.tobytes())
    return out.getvalue()


def write_wav(path: str | Path, samples: np.ndarray, rate: int) -> None:
    Path(path).write_bytes(wav_bytes(samples, rate))


def resample(samples: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """High-quality resampling (soxr); a no-op when the rates match."""
    if rate_in == rate_out:
        return np.asarray(samples, dtype=np.float32)
    return soxr.resample(np.asarray(samples, dtype=np.float32), rate_in, rate_out).astype(np.float32)
