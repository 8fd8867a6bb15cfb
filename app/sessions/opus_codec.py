"""Opus on the wire: raw packets (no Ogg), one per message, encoded and decoded with libopus through PyAV.

Mobile clients and browsers (WebCodecs ``AudioEncoder``/``AudioDecoder``) speak Opus as raw packets. The
decoder always produces 48 kHz (Opus's own clock), which we resample to the model's 16 kHz; the encoder
takes the model's 24 kHz speech directly (libopus accepts 24 kHz input) in 20 ms frames.

The converters here have the same surface as :class:`~app.sessions.audio_formats.InputAudioConverter`
and :class:`~app.sessions.audio_formats.OutputAudioConverter`, except that the output side yields packets
(``list[bytes]``) rather than one byte string: packets cannot be cut or joined.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np

from app.sessions.audio_formats import (
    MODEL_INPUT_RATE,
    MODEL_OUTPUT_RATE,
    OPUS_CLOCK_RATE,
    AudioFormatError,
    InputAudioConverter,
    OutputAudioConverter,
    StreamResampler,
    WireFormat,
)

OPUS_RATE = OPUS_CLOCK_RATE  # what an Opus decoder produces, whatever rate the packet was encoded from
OPUS_FRAME_MS = 20  # our packets: the usual VoIP size, and what WebCodecs makes by default
MIN_OPUS_BITRATE = 6000
MAX_OPUS_BITRATE = 510000
DEFAULT_OPUS_BITRATE = 24000


class OpusPacketDecoder:
    """One stream's libopus decoder: a raw packet in, float32 mono samples at 48 kHz out.

    Opus packets depend on the decoder state left by the packets before them, so one decoder lives as
    long as the stream it decodes (a session's input).
    """

    def __init__(self) -> None:
        self._context = av.codec.CodecContext.create("libopus", "r")
        self._context.sample_rate = OPUS_RATE
        self._context.layout = "mono"  # libopus mixes stereo packets down to mono
        self._context.open()

    def decode(self, packet: bytes) -> np.ndarray:
        """Decode one packet; raises :class:`AudioFormatError` for an empty or corrupt packet.

        A corrupt packet leaves the decoder usable: the next good packet decodes normally.
        """
        if not packet:
            # PyAV reads an empty packet as "end of stream", which would stop the decoder for good.
            raise AudioFormatError("an Opus packet cannot be empty")
        try:
            frames = self._context.decode(av.Packet(packet))
        except av.error.FFmpegError as exc:
            raise AudioFormatError(f"not a valid Opus packet ({len(packet)} bytes): {exc.strerror}") from None
        pieces = [_mono_float(frame) for frame in frames]
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)


def _mono_float(frame: av.AudioFrame) -> np.ndarray:
    samples = frame.to_ndarray()
    if samples.dtype == np.int16:
        samples = samples.astype(np.float32) / 32768.0
    return np.asarray(samples, dtype=np.float32).reshape(-1)


class OpusPacketEncoder:
    """A libopus encoder for one stream of mono float32 speech: samples in, 20 ms raw packets out.

    Samples may come in pieces of any length; whole frames are encoded as soon as they are complete, and
    :meth:`flush` pads the end with silence. A packet decodes to 20 ms; the encoder's look-ahead (6.5 ms)
    is carried in the packets, so a stream decodes to its input's length plus 6.5 ms, rounded up to 20 ms.
    """

    def __init__(self, bitrate: int = DEFAULT_OPUS_BITRATE, sample_rate: int = MODEL_OUTPUT_RATE) -> None:
        if not MIN_OPUS_BITRATE <= bitrate <= MAX_OPUS_BITRATE:
            raise ValueError(f"Opus bitrate must be {MIN_OPUS_BITRATE}-{MAX_OPUS_BITRATE}, got {bitrate}")
        self.bitrate = bitrate
        self.sample_rate = sample_rate
        self.frame_samples = sample_rate * OPUS_FRAME_MS // 1000
        self._context = av.codec.CodecContext.create("libopus", "w")
        self._context.sample_rate = sample_rate
        self._context.layout = "mono"
        self._context.format = "flt"
        self._context.bit_rate = bitrate
        self._context.time_base = Fraction(1, sample_rate)
        self._context.options = {"frame_duration": str(OPUS_FRAME_MS), "application": "voip"}
        self._context.open()
        self.lookahead_samples = _pre_skip(bytes(self._context.extradata or b"")) * sample_rate // OPUS_RATE
        self._pending = np.zeros(0, dtype=np.float32)
        self._pts = 0

    def encode(self, samples: np.ndarray) -> list[bytes]:
        """Encode every whole frame available; the rest waits for more samples (or :meth:`flush`)."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        pending = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        whole = len(pending) - len(pending) % self.frame_samples
        self._pending = pending[whole:].copy()
        packets: list[bytes] = []
        for start in range(0, whole, self.frame_samples):
            packets += self._encode_frame(pending[start : start + self.frame_samples])
        return packets

    def flush(self) -> list[bytes]:
        """Encode what is left and the encoder's look-ahead, padded with silence to whole packets.

        The stream ends here. Padding by hand (rather than draining the encoder, which adds a whole
        packet for its look-ahead) keeps the stream to the fewest packets that hold all of its audio.
        """
        tail = len(self._pending) + self.lookahead_samples
        padded = np.zeros(-(-tail // self.frame_samples) * self.frame_samples, dtype=np.float32)
        padded[: len(self._pending)] = self._pending
        self._pending = np.zeros(0, dtype=np.float32)
        packets: list[bytes] = []
        for start in range(0, len(padded), self.frame_samples):
            packets += self._encode_frame(padded[start : start + self.frame_samples])
        return packets

    def _encode_frame(self, frame_samples: np.ndarray) -> list[bytes]:
        # NaN or inf from a misbehaving model must not reach the encoder.
        clean = np.clip(np.nan_to_num(frame_samples, nan=0.0, posinf=1.0, neginf=-1.0), -1.0, 1.0)
        frame = av.AudioFrame.from_ndarray(clean.reshape(1, -1), format="flt", layout="mono")
        frame.sample_rate = self.sample_rate
        frame.pts = self._pts
        self._pts += len(frame_samples)
        return [bytes(packet) for packet in self._context.encode(frame)]


def _pre_skip(opus_head: bytes) -> int:
    """The encoder's look-ahead in 48 kHz samples, from its OpusHead (RFC 7845: bytes 10-11, little-endian)."""
    if len(opus_head) < 12 or not opus_head.startswith(b"OpusHead"):
        return OPUS_RATE * 13 // 2000  # libopus's usual 6.5 ms
    return int.from_bytes(opus_head[10:12], "little")


class OpusInputConverter:
    """One session's inbound path for Opus: each push is one raw packet; out come samples at the model's rate."""

    def __init__(self, wire: WireFormat, target_rate: int = MODEL_INPUT_RATE) -> None:
        self.wire = wire
        self.target_rate = target_rate
        self._decoder = OpusPacketDecoder()
        self._resampler = StreamResampler(OPUS_RATE, target_rate)

    def push(self, packet: bytes) -> np.ndarray:
        """Decode one packet (raises :class:`AudioFormatError` if it is not one) and resample it."""
        return self._resampler.process(self._decoder.decode(packet))

    def flush(self) -> np.ndarray:
        """Return the resampler's tail."""
        return self._resampler.flush()

    def reset(self) -> None:
        """Forget buffered input; the decoder keeps its state, since the client's stream goes on."""
        self._resampler.reset()


class OpusOutputConverter:
    """One response's outbound path for Opus: model audio (24 kHz float32) in, raw 20 ms packets out."""

    def __init__(self, wire: WireFormat, source_rate: int = MODEL_OUTPUT_RATE) -> None:
        self.wire = wire
        self.source_rate = source_rate
        self.packet_seconds = OPUS_FRAME_MS / 1000
        self._bitrate = wire.bitrate or DEFAULT_OPUS_BITRATE
        self._encoder = OpusPacketEncoder(self._bitrate, source_rate)

    def push(self, samples: np.ndarray) -> list[bytes]:
        """Encode one piece of model audio into as many whole packets as it completes."""
        return self._encoder.encode(samples)

    def flush(self) -> list[bytes]:
        """The last packets at the end of a response."""
        return self._encoder.flush()

    def reset(self) -> None:
        """Drop audio held in the encoder (the response was cancelled)."""
        self._encoder = OpusPacketEncoder(self._bitrate, self.source_rate)


def input_converter_for(
    wire: WireFormat, target_rate: int = MODEL_INPUT_RATE
) -> InputAudioConverter | OpusInputConverter:
    """The inbound converter for a session's input format."""
    if wire.encoding == "opus":
        return OpusInputConverter(wire, target_rate)
    return InputAudioConverter(wire, target_rate)


def output_converter_for(wire: WireFormat) -> OutputAudioConverter | OpusOutputConverter:
    """The outbound converter for a response in the session's output format."""
    if wire.encoding == "opus":
        return OpusOutputConverter(wire)
    return OutputAudioConverter(wire)
