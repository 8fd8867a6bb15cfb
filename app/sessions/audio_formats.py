"""Wire audio formats of the realtime protocol, and resampling between the client's and the model's rates.

Inside the server audio is mono float32 in [-1, 1]. On the wire it is base64 of 16-bit little-endian PCM,
or of G.711 u-law / A-law bytes at 8 kHz. The G.711 codecs are written here as lookup tables built with
numpy (the standard library's ``audioop`` is deprecated and gone in Python 3.13).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from functools import cache
from typing import Literal

import numpy as np
import soxr

from app.model import INPUT_RATE, OUTPUT_RATE

Encoding = Literal["pcm16", "pcmu", "pcma", "opus"]

MODEL_INPUT_RATE = INPUT_RATE
MODEL_OUTPUT_RATE = OUTPUT_RATE
REALTIME_PCM_RATE = 24000  # the Realtime protocol's pcm16 rate (it happens to be the codec's)
G711_RATE = 8000
OPUS_CLOCK_RATE = 48000  # Opus packets decode at 48 kHz whatever they were encoded from


class AudioFormatError(ValueError):
    """Audio bytes that cannot be decoded in the announced format."""


class Base64Error(AudioFormatError):
    """A string that is not valid standard base64."""


@dataclass(frozen=True)
class WireFormat:
    """How audio travels on the socket: the sample encoding and its sample rate.

    Opus (``app.sessions.opus_codec``) travels as raw packets, not samples: its rate is Opus's 48 kHz
    clock, and ``bitrate`` (bits per second) is what the server encodes its answers at.
    """

    encoding: Encoding
    sample_rate: int
    bitrate: int | None = None

    def __post_init__(self) -> None:
        if self.encoding in ("pcmu", "pcma") and self.sample_rate != G711_RATE:
            raise ValueError(f"G.711 ({self.encoding}) is always {G711_RATE} Hz, not {self.sample_rate}")
        if self.encoding == "opus" and self.sample_rate != OPUS_CLOCK_RATE:
            raise ValueError(f"Opus runs on a {OPUS_CLOCK_RATE} Hz clock, not {self.sample_rate}")
        if self.sample_rate <= 0:
            raise ValueError(f"sample rate must be positive, got {self.sample_rate}")

    @property
    def bytes_per_sample(self) -> int:
        """2 for 16-bit PCM, 1 for G.711."""
        return 2 if self.encoding == "pcm16" else 1

    def duration_ms(self, num_bytes: int) -> float:
        """Length in milliseconds of ``num_bytes`` of audio in this format."""
        return 1000.0 * num_bytes / (self.bytes_per_sample * self.sample_rate)


PCM16_24K = WireFormat("pcm16", REALTIME_PCM_RATE)
PCM16_16K = WireFormat("pcm16", INPUT_RATE)
PCMU = WireFormat("pcmu", G711_RATE)
PCMA = WireFormat("pcma", G711_RATE)


# --- base64 -----------------------------------------------------------------------------------------------


def decode_base64(data: str) -> bytes:
    """Decode standard base64 (padding required, no whitespace), raising :class:`Base64Error` if invalid."""
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Base64Error(f"audio is not valid base64: {exc}") from None


def encode_base64(data: bytes) -> str:
    """Encode bytes as standard base64 text."""
    return base64.b64encode(data).decode("ascii")


# --- 16-bit PCM -------------------------------------------------------------------------------------------


def float_to_int16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] to int16, rounding to nearest and clipping outside the range.

    The scale is 32768, the inverse of :func:`int16_to_float`, so int16 -> float -> int16 is exact.
    """
    # NaN or inf from a misbehaving model must not turn into arbitrary integers on the wire.
    finite = np.nan_to_num(np.asarray(samples, dtype=np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    scaled = np.rint(finite * 32768.0)
    return np.clip(scaled, -32768, 32767).astype(np.int16)


def int16_to_float(samples: np.ndarray) -> np.ndarray:
    """int16 samples to float32 in [-1, 1)."""
    return np.asarray(samples, dtype=np.int16).astype(np.float32) / 32768.0


def decode_pcm16(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM bytes to float32 samples."""
    if len(data) % 2:
        raise AudioFormatError(f"16-bit PCM needs an even number of bytes, got {len(data)}")
    return int16_to_float(np.frombuffer(data, dtype="<i2"))


def encode_pcm16(samples: np.ndarray) -> bytes:
    """Float32 samples to little-endian 16-bit PCM bytes."""
    return float_to_int16(samples).astype("<i2").tobytes()


# --- G.711 --------------------------------------------------------------------------------------------------
# Both laws are segment (exponent) + 4-bit mantissa codes. Encoding goes through a 65536-entry table indexed
# by the int16 value, decoding through a 256-entry table; both are built once, vectorised.

_ULAW_BIAS = 0x84
_ULAW_CLIP_14BIT = 8158  # largest 14-bit magnitude that, with the bias added, still fits segment 7


def _ulaw_encode_int16(values: np.ndarray) -> np.ndarray:
    # u-law works on 14-bit magnitudes; the bias (33 in 14-bit units) makes every segment start at a power
    # of two, so the segment is the position of the highest set bit.
    x14 = values.astype(np.int32) >> 2
    sign = np.where(x14 < 0, 0x80, 0x00)
    biased = np.minimum(np.abs(x14), _ULAW_CLIP_14BIT) + (_ULAW_BIAS >> 2)
    exponent = np.floor(np.log2(biased)).astype(np.int32) - 5
    mantissa = (biased >> (exponent + 1)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def _ulaw_decode_codes(codes: np.ndarray) -> np.ndarray:
    inverted = ~codes.astype(np.int32) & 0xFF
    exponent = (inverted >> 4) & 0x07
    mantissa = inverted & 0x0F
    magnitude = (((mantissa << 3) + _ULAW_BIAS) << exponent) - _ULAW_BIAS
    return np.where(inverted & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_encode_int16(values: np.ndarray) -> np.ndarray:
    # A-law works on 13-bit values; negatives use the one's complement magnitude so that the two signs
    # mirror each other exactly.
    x13 = values.astype(np.int32) >> 3
    positive = x13 >= 0
    magnitude = np.where(positive, x13, ~x13)
    exponent = np.where(magnitude < 32, 0, np.floor(np.log2(np.maximum(magnitude, 1))).astype(np.int32) - 4)
    mantissa = (magnitude >> np.maximum(exponent, 1)) & 0x0F
    code = np.where(positive, 0x80, 0x00) | (exponent << 4) | mantissa
    return (code ^ 0x55).astype(np.uint8)


def _alaw_decode_codes(codes: np.ndarray) -> np.ndarray:
    toggled = codes.astype(np.int32) ^ 0x55
    exponent = (toggled >> 4) & 0x07
    mantissa = toggled & 0x0F
    # Reconstruct at the middle of the quantisation step.
    magnitude = np.where(
        exponent == 0,
        (mantissa << 4) + 8,
        ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0),
    )
    return np.where(toggled & 0x80, magnitude, -magnitude).astype(np.int16)


@cache
def _g711_tables(law: Literal["pcmu", "pcma"]) -> tuple[np.ndarray, np.ndarray]:
    """(encode table indexed by int16 viewed as uint16, decode table indexed by code byte)."""
    all_int16 = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16)
    all_codes = np.arange(256, dtype=np.uint8)
    if law == "pcmu":
        return _ulaw_encode_int16(all_int16), _ulaw_decode_codes(all_codes)
    return _alaw_encode_int16(all_int16), _alaw_decode_codes(all_codes)


def g711_encode_int16(values: np.ndarray, law: Literal["pcmu", "pcma"]) -> bytes:
    """int16 samples to G.711 code bytes (``law`` is ``"pcmu"`` for u-law or ``"pcma"`` for A-law)."""
    encode_table, _ = _g711_tables(law)
    return encode_table[np.asarray(values, dtype=np.int16).view(np.uint16)].tobytes()


def g711_decode_int16(data: bytes, law: Literal["pcmu", "pcma"]) -> np.ndarray:
    """G.711 code bytes to int16 samples."""
    _, decode_table = _g711_tables(law)
    return decode_table[np.frombuffer(data, dtype=np.uint8)]


def encode_ulaw(samples: np.ndarray) -> bytes:
    """Float32 samples to G.711 u-law bytes."""
    return g711_encode_int16(float_to_int16(samples), "pcmu")


def decode_ulaw(data: bytes) -> np.ndarray:
    """G.711 u-law bytes to float32 samples."""
    return int16_to_float(g711_decode_int16(data, "pcmu"))


def encode_alaw(samples: np.ndarray) -> bytes:
    """Float32 samples to G.711 A-law bytes."""
    return g711_encode_int16(float_to_int16(samples), "pcma")


def decode_alaw(data: bytes) -> np.ndarray:
    """G.711 A-law bytes to float32 samples."""
    return int16_to_float(g711_decode_int16(data, "pcma"))


def decode_audio(data: bytes, encoding: Encoding) -> np.ndarray:
    """Wire bytes in ``encoding`` to float32 samples (at the wire's own rate)."""
    if encoding == "pcm16":
        return decode_pcm16(data)
    if encoding == "pcmu":
        return decode_ulaw(data)
    return decode_alaw(data)


def encode_audio(samples: np.ndarray, encoding: Encoding) -> bytes:
    """Float32 samples (already at the wire's rate) to wire bytes in ``encoding``."""
    if encoding == "pcm16":
        return encode_pcm16(samples)
    if encoding == "pcmu":
        return encode_ulaw(samples)
    return encode_alaw(samples)


# --- resampling ---------------------------------------------------------------------------------------------


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Resample a whole float32 signal; returns the input unchanged when the rates are equal."""
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate or samples.size == 0:
        return samples
    return soxr.resample(samples, from_rate, to_rate, quality="HQ").astype(np.float32, copy=False)


class StreamResampler:
    """Resamples a continuous float32 signal fed in pieces of any size, keeping filter state between pieces.

    The output lags the input by the filter delay (a few ms); :meth:`flush` returns the tail at the end of
    a stream and makes the resampler ready for a new one.
    """

    def __init__(self, from_rate: int, to_rate: int) -> None:
        self.from_rate = from_rate
        self.to_rate = to_rate
        self._stream: soxr.ResampleStream | None = None
        if from_rate != to_rate:
            self._stream = soxr.ResampleStream(from_rate, to_rate, 1, dtype="float32", quality="HQ")

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Resample one piece; may return fewer samples than the rate ratio suggests until flushed."""
        samples = np.ascontiguousarray(samples, dtype=np.float32)
        if self._stream is None:
            return samples
        return self._stream.resample_chunk(samples, last=False)

    def flush(self) -> np.ndarray:
        """Return the samples still held in the filter and start afresh."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
        self._stream.clear()
        return tail

    def reset(self) -> None:
        """Drop whatever is held in the filter (e.g. after an interruption)."""
        if self._stream is not None:
            self._stream.clear()


class InputAudioConverter:
    """One session's inbound path: wire bytes in the client's format to float32 at the model's input rate.

    Keeps a dangling odd byte of 16-bit PCM between appends, so a client may split its stream anywhere.
    """

    def __init__(self, wire: WireFormat, target_rate: int = MODEL_INPUT_RATE) -> None:
        self.wire = wire
        self.target_rate = target_rate
        self._resampler = StreamResampler(wire.sample_rate, target_rate)
        self._odd_byte = b""

    def push(self, data: bytes) -> np.ndarray:
        """Decode and resample one append's bytes."""
        if self.wire.encoding == "pcm16":
            data = self._odd_byte + data
            cut = len(data) - len(data) % 2
            data, self._odd_byte = data[:cut], data[cut:]
        return self._resampler.process(decode_audio(data, self.wire.encoding))

    def flush(self) -> np.ndarray:
        """Return the resampler's tail, dropping any dangling half sample."""
        self._odd_byte = b""
        return self._resampler.flush()

    def reset(self) -> None:
        """Forget buffered input (``input_audio_buffer.clear``)."""
        self._odd_byte = b""
        self._resampler.reset()


class OutputAudioConverter:
    """One session's outbound path: float32 model audio at its rate to wire bytes in the client's format."""

    def __init__(self, wire: WireFormat, source_rate: int = MODEL_OUTPUT_RATE) -> None:
        self.wire = wire
        self.source_rate = source_rate
        self._resampler = StreamResampler(source_rate, wire.sample_rate)

    def push(self, samples: np.ndarray) -> bytes:
        """Resample and encode one piece of model audio."""
        return encode_audio(self._resampler.process(samples), self.wire.encoding)

    def flush(self) -> bytes:
        """Encode the resampler's tail at the end of a response."""
        return encode_audio(self._resampler.flush(), self.wire.encoding)

    def reset(self) -> None:
        """Drop audio held in the filter (the response was cancelled)."""
        self._resampler.reset()
