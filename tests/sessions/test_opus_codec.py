"""The Opus path on its own: raw packets through libopus, the converters, the format names and the framing.

Speech is the espeak-ng question, so bitrates and durations are those of real speech, not of a tone.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from app.sessions.audio_formats import AudioFormatError, resample
from app.sessions.binary_frames import BinaryFramer, OutputAudioPacket, frame, parse_frame
from app.sessions.events import ProtocolError, RealtimeResponse, ResponseCreated, parse_client_event
from app.sessions.opus_codec import (
    OPUS_RATE,
    OpusInputConverter,
    OpusOutputConverter,
    OpusPacketDecoder,
    OpusPacketEncoder,
    input_converter_for,
    output_converter_for,
)
from app.sessions.session_config import AudioFormat, SessionConfig, SessionPatch

CORRUPT_PACKET = b"\x03"  # frame-count code 3 without its count byte: libopus refuses it
LOOKAHEAD_S = 0.0065  # libopus's encoder delay, carried in the packets


@pytest.fixture(scope="module")
def speech_24k(spoken_16k: np.ndarray) -> np.ndarray:
    return resample(spoken_16k, 16000, 24000)


def encode_all(samples: np.ndarray, bitrate: int = 24000, piece: int = 2400) -> list[bytes]:
    encoder = OpusPacketEncoder(bitrate)
    packets: list[bytes] = []
    for start in range(0, len(samples), piece):
        packets += encoder.encode(samples[start : start + piece])
    return packets + encoder.flush()


def test_packets_are_20_ms_and_decode_to_the_input_length_plus_one_packet_at_most(speech_24k) -> None:
    packets = encode_all(speech_24k, piece=1234)  # pieces that do not line up with frames
    decoder = OpusPacketDecoder()
    decoded = [decoder.decode(p) for p in packets]
    assert {len(d) for d in decoded} == {OPUS_RATE // 50}
    seconds = sum(len(d) for d in decoded) / OPUS_RATE
    input_seconds = len(speech_24k) / 24000
    assert input_seconds + LOOKAHEAD_S <= seconds < input_seconds + LOOKAHEAD_S + 0.020 + 1e-9


def test_decoded_speech_matches_the_original(speech_24k) -> None:
    decoder = OpusPacketDecoder()
    decoded = np.concatenate([decoder.decode(p) for p in encode_all(speech_24k, bitrate=32000)])
    back = resample(decoded, OPUS_RATE, 24000)
    # The encoder's look-ahead delays the output by about 156 samples (at 24 kHz); search near it.
    usable = len(speech_24k) - 400
    correlation, delay = max(
        (np.corrcoef(back[lag : lag + usable], speech_24k[:usable])[0, 1], lag) for lag in range(100, 200)
    )
    assert correlation > 0.9 and abs(delay - LOOKAHEAD_S * 24000) <= 3, (correlation, delay)


def test_bitrate_sets_the_size_of_the_packets(speech_24k) -> None:
    sizes = {rate: sum(map(len, encode_all(speech_24k, rate))) for rate in (12000, 24000, 48000)}
    seconds = len(speech_24k) / 24000
    for rate, size in sizes.items():
        assert 0.5 * rate < 8 * size / seconds < 1.3 * rate, sizes
    assert sizes[12000] < sizes[24000] < sizes[48000]


def test_a_corrupt_or_empty_packet_is_refused_and_the_decoder_goes_on(speech_24k) -> None:
    packets = encode_all(speech_24k)
    decoder = OpusPacketDecoder()
    for bad in (CORRUPT_PACKET, b""):
        with pytest.raises(AudioFormatError):
            decoder.decode(bad)
    assert len(decoder.decode(packets[0])) == OPUS_RATE // 50


def test_input_converter_resamples_to_the_model_rate(speech_24k) -> None:
    converter = input_converter_for(AudioFormat(type="audio/x-opus").wire, 16000)
    assert isinstance(converter, OpusInputConverter)
    packets = encode_all(speech_24k)
    out = np.concatenate([converter.push(p) for p in packets] + [converter.flush()])
    assert abs(len(out) - 16000 * len(packets) / 50) <= 1


def test_output_converter_makes_packets_and_pcm_formats_keep_theirs(speech_24k) -> None:
    opus = output_converter_for(AudioFormat(type="audio/x-opus", bitrate=16000).wire)
    assert isinstance(opus, OpusOutputConverter)
    packets = opus.push(speech_24k[:4800]) + opus.flush()
    assert len(packets) == 11 and all(isinstance(p, bytes) and p for p in packets)
    pcm = output_converter_for(AudioFormat().wire)
    assert isinstance(pcm.push(speech_24k[:4800]), bytes)


# -- the format in session.update --------------------------------------------------------------------------
def update(fmt: object) -> SessionPatch:
    event = parse_client_event(
        json.dumps(
            {
                "type": "session.update",
                "session": {"audio": {"input": {"format": fmt}, "output": {"format": fmt}}},
            }
        )
    )
    return event.session


def test_opus_is_named_in_ga_and_beta_and_gets_the_default_bitrate_on_output_only() -> None:
    config = SessionConfig().apply(update({"type": "audio/x-opus"})).with_opus_bitrate(20000)
    assert config.to_ga()["audio"]["input"]["format"] == {"type": "audio/x-opus"}
    assert config.to_ga()["audio"]["output"]["format"] == {"type": "audio/x-opus", "bitrate": 20000}
    assert config.to_beta()["output_audio_format"] == "x-opus"
    beta = SessionConfig().apply(update("x-opus")).with_opus_bitrate(20000)
    assert beta.output_format == config.output_format
    chosen = (
        SessionConfig().apply(update({"type": "audio/x-opus", "bitrate": 12000})).with_opus_bitrate(20000)
    )
    assert chosen.output_format.wire.bitrate == 12000
    assert chosen.input_format.bitrate is None  # the client's encoder picks its own: not echoed


@pytest.mark.parametrize(
    "fmt",
    [
        "opus",
        {"type": "audio/opus"},
        {"type": "audio/x-opus", "bitrate": 1000},
        {"type": "audio/x-opus", "rate": 24000},
        {"type": "audio/pcm", "bitrate": 16000},
    ],
)
def test_wrong_opus_formats_are_refused(fmt: object) -> None:
    with pytest.raises(ProtocolError):
        update(fmt)


# -- binary frames ---------------------------------------------------------------------------------------
def test_frames_are_numbered_by_the_response_created_that_went_out() -> None:
    sent: list[object] = []

    async def send(item: object) -> None:
        sent.append(item)

    async def main() -> None:
        framer_send = BinaryFramer().wrap(send)
        orphan = OutputAudioPacket(response_id="resp_gone", item_id="item_a", packet=b"\x01\x02")
        await framer_send(orphan)  # its response.created never went out: neither does it
        for number, response_id in enumerate(["resp_a", "resp_b"]):
            await framer_send(
                ResponseCreated(response=RealtimeResponse(id=response_id, status="in_progress"))
            )
            await framer_send(
                OutputAudioPacket(response_id=response_id, item_id="item", packet=bytes([number + 7]))
            )

    asyncio.run(main())
    assert [type(s).__name__ for s in sent] == ["ResponseCreated", "bytes", "ResponseCreated", "bytes"]
    assert parse_frame(sent[1]) == (0, 0, b"\x07")
    assert parse_frame(sent[3]) == (1, 0, b"\x08")
    assert frame(257, 0, b"x") == b"\x01\x00x"
    assert OutputAudioPacket(response_id="r", item_id="i", packet=b"x").to_json() is None
