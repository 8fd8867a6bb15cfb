"""Opus over `/v1/realtime` (our `audio/x-opus` extension), against a live server on the tiny model.

A phone-like client sends the espeak-ng question as raw 20 ms Opus packets, one binary frame each, at
real-time pace followed by a quiet-room noise floor, and receives the answer as binary frames. The
shared `realtime_server` answers greedily with fixed seeds and its state head kept listening, so the
same question heard the same way gets the same answer: that lets the Opus answer be compared with the
pcm16 answer to the same question.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import websockets

from tests.conftest import LiveServer
from tests.routes.conftest import (
    SHORT_ANSWER_TOKENS,
    WIRE_RATE,
    forced_state,
    from_pcm16,
    run,
    send_text_turn,
    stream_turn,
    transcript,
)
from tests.routes.opus_client import (
    DECODE_RATE,
    PACKET_S,
    OpusClient,
    decode_packets,
    noise_floor,
    opus_client,
    opus_packets,
    opus_session,
)

pytestmark = pytest.mark.slow

LOOKAHEAD_S = 0.0065  # libopus's encoder delay, which the packets carry
CORRUPT_PACKET = b"\x03"  # frame-count code 3 without its count byte: no decoder accepts it
TRAIL_S = 1.5  # noise floor after the question: the VAD's silence fallback ends the turn in it


@pytest.fixture(scope="module")
def question_packets(question_24k: np.ndarray) -> list[bytes]:
    """The spoken question and a noise floor after it, as one stream of Opus packets."""
    return opus_packets(np.concatenate([question_24k, noise_floor(TRAIL_S)]))


async def spoken_turn(client: OpusClient, packets: list[bytes], timeout: float = 60.0) -> dict[str, Any]:
    """Stream the packets at real-time pace; return the `response.done` that follows."""
    sender = asyncio.create_task(client.send_packets(packets))
    try:
        return await client.wait_for("response.done", timeout=timeout)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


def pcm_audio(client: OpusClient, response_id: str) -> np.ndarray:
    deltas = client.events("response.output_audio.delta")
    return from_pcm16(
        b"".join(base64.b64decode(e["delta"]) for e in deltas if e["response_id"] == response_id)
    )


def test_spoken_question_in_opus_gets_an_opus_answer_as_long_as_the_pcm16_one(
    start_server: Callable[..., LiveServer], question_packets: list[bytes]
) -> None:
    """Each answer comes from the first session of a fresh server, so both have the same seed."""

    async def ask(server: LiveServer, output_opus: bool) -> tuple[OpusClient, dict]:
        session = opus_session(output_opus=output_opus)
        async with opus_client(server.ws_url, session) as client:
            return client, await spoken_turn(client, question_packets)

    def first_session(output_opus: bool) -> tuple[OpusClient, dict, LiveServer]:
        server = start_server(max_answer_tokens=SHORT_ANSWER_TOKENS, top_k=1, seed=3)
        with forced_state(server, "listen"):
            client, done = run(ask(server, output_opus))
        server.stop()
        return client, done, server

    opus_side, opus_done, server = first_session(output_opus=True)
    pcm_side, pcm_done, _ = first_session(output_opus=False)

    for client, done in ((opus_side, opus_done), (pcm_side, pcm_done)):
        assert done["response"]["status"] == "completed", client.types()
        assert "input_audio_buffer.committed" in client.types()
        assert "error" not in client.types(), client.events("error")
    assert transcript(opus_done) == transcript(pcm_done) != ""

    # Opus: the JSON lifecycle is all there, audio deltas are not; every frame belongs to this response.
    response_id = opus_done["response"]["id"]
    types = opus_side.types()
    for kind in (
        "response.created",
        "response.output_item.added",
        "response.output_audio.done",
        "response.done",
    ):
        assert kind in types
    assert "response.output_audio.delta" not in types
    assert opus_side.frames and all(f.response_id == response_id for f in opus_side.frames)
    (item_added,) = opus_side.events("response.output_item.added")
    assert {f.output_index for f in opus_side.frames} == {item_added.get("output_index", 0)}
    assert item_added["item"]["id"] == opus_done["response"]["output"][0]["id"]

    # The same answer: the packets decode to the pcm16 answer's length, plus the encoder's look-ahead
    # and the padding of the last 20 ms packet.
    decoded = decode_packets(opus_side.packets(response_id))
    opus_seconds = len(decoded) / DECODE_RATE
    pcm = pcm_audio(pcm_side, pcm_done["response"]["id"])
    pcm_seconds = len(pcm) / WIRE_RATE
    assert pcm_seconds > 0.2
    assert pcm_seconds + LOOKAHEAD_S <= opus_seconds < pcm_seconds + LOOKAHEAD_S + PACKET_S + 1e-6, (
        opus_seconds,
        pcm_seconds,
    )
    assert len(opus_side.frames) == round(opus_seconds / PACKET_S)
    assert float(np.sqrt(np.mean(decoded**2))) > 1e-3  # something was said
    # Paced like pcm16: frames never arrive more than audio_ahead_s (plus slack) ahead of playback.
    start = opus_side.frames[0].at
    lead = max(i * PACKET_S - (f.at - start) for i, f in enumerate(opus_side.frames))
    assert lead <= server.settings.audio_ahead_s + 0.25


def test_bitrate_is_a_session_setting(realtime_server: LiveServer) -> None:
    """The default bitrate is the server's; a client's choice is echoed and honoured."""

    async def main() -> tuple[dict, dict, list[int]]:
        sizes: list[int] = []
        async with opus_client(realtime_server.ws_url) as client:
            await client.send({"type": "session.update", "session": opus_session()})
            default = await client.wait_for("session.updated")
            for bitrate in (8000, 64000):
                await client.send({"type": "session.update", "session": opus_session(bitrate=bitrate)})
                chosen = await client.wait_for("session.updated")
                before = len(client.frames)
                await send_text_turn(client, "Say something.")
                await client.wait_for("response.done", timeout=60)
                frames = client.frames[before:]
                sizes.append(sum(len(f.packet) for f in frames) * 8 / (len(frames) * PACKET_S))
        return default, chosen, sizes

    default, chosen, bits_per_second = run(main())
    assert default["session"]["audio"]["output"]["format"] == {
        "type": "audio/x-opus",
        "bitrate": realtime_server.settings.opus_bitrate,
    }
    assert default["session"]["audio"]["input"]["format"] == {"type": "audio/x-opus"}
    assert chosen["session"]["audio"]["output"]["format"]["bitrate"] == 64000
    low, high = bits_per_second
    assert low < 12000 < 30000 < high, bits_per_second


def test_a_corrupt_packet_gets_an_error_and_the_session_goes_on(
    realtime_server: LiveServer, question_packets: list[bytes]
) -> None:
    async def main() -> tuple[OpusClient, list[dict], dict]:
        async with opus_client(realtime_server.ws_url, opus_session()) as client:
            await client.ws.send(CORRUPT_PACKET)
            binary_error = await client.wait_for("error")
            await client.ws.send(b"")
            empty_error = await client.wait_for("error")
            await client.send(
                {
                    "type": "input_audio_buffer.append",
                    "event_id": "evt_bad_packet",
                    "audio": base64.b64encode(CORRUPT_PACKET).decode(),
                }
            )
            json_error = await client.wait_for("error")
            # The decoder goes on: the question, streamed next, is heard and answered.
            done = await spoken_turn(client, question_packets)
            return client, [binary_error, empty_error, json_error], done

    client, errors, done = run(main())
    assert [e["error"]["code"] for e in errors] == ["invalid_audio"] * 3
    assert "Opus" in errors[0]["error"]["message"]
    assert errors[2]["error"]["event_id"] == "evt_bad_packet"
    assert done["response"]["status"] == "completed"
    assert client.packets(done["response"]["id"])


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({"type": "audio/x-opus", "bitrate": 1000}, "bitrate"),
        ({"type": "audio/x-opus", "rate": 16000}, "rate"),
        ({"type": "audio/opus"}, None),
    ],
)
def test_a_wrong_opus_format_is_refused_and_changes_nothing(
    realtime_server: LiveServer, fmt: dict, param: str | None
) -> None:
    async def main() -> tuple[dict, dict, OpusClient]:
        async with opus_client(realtime_server.ws_url) as client:
            update = {"type": "realtime", "audio": {"output": {"format": fmt}}}
            await client.send({"type": "session.update", "event_id": "evt_fmt", "session": update})
            error = await client.wait_for("error")
            await client.send({"type": "session.update", "session": {"instructions": "Be brief."}})
            updated = await client.wait_for("session.updated")
            await send_text_turn(client, "Hello.")
            await client.wait_for("response.done", timeout=60)
            return error, updated, client

    error, updated, client = run(main())
    assert error["error"]["event_id"] == "evt_fmt"
    assert error["error"]["code"] in ("invalid_value", "invalid_type")
    if param is not None:
        assert param in (error["error"].get("param") or "") + error["error"]["message"]
    assert updated["session"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24000}
    assert client.events("response.output_audio.delta") and not client.frames


def test_switching_formats_mid_session_takes_effect_from_the_next_turn(
    realtime_server: LiveServer, question_packets: list[bytes], question_pcm: bytes
) -> None:
    """pcm16 -> Opus (both ways) -> Opus input with pcm16 output, on one connection."""

    async def main() -> tuple[OpusClient, list[dict]]:
        async with opus_client(realtime_server.ws_url) as client:
            dones = []
            dones.append(await stream_turn(client, question_pcm, silence_s=TRAIL_S))  # pcm16 appends
            await client.send({"type": "session.update", "session": opus_session()})
            await client.wait_for("session.updated")
            dones.append(await spoken_turn(client, question_packets))
            await client.send({"type": "session.update", "session": opus_session(output_opus=False)})
            await client.wait_for("session.updated")
            dones.append(await spoken_turn(client, question_packets))
            return client, dones

    client, dones = run(main())
    assert [d["response"]["status"] for d in dones] == ["completed"] * 3, client.types()
    assert "error" not in client.types(), client.events("error")
    first, second, third = (d["response"]["id"] for d in dones)
    with_deltas = {e["response_id"] for e in client.events("response.output_audio.delta")}
    with_frames = {f.response_id for f in client.frames}
    assert with_deltas == {first, third}
    assert with_frames == {second}
    # The second response is the session's second response.created: frames say 1.
    assert client.events("response.created")[1]["response"]["id"] == second


def test_beta_clients_ask_for_opus_by_its_beta_name(realtime_server: LiveServer) -> None:
    async def main() -> tuple[dict, dict, OpusClient]:
        async with websockets.connect(
            realtime_server.ws_url, proxy=None, additional_headers={"OpenAI-Beta": "realtime=v1"}
        ) as ws:
            client = OpusClient(ws)
            await client.wait_for("session.created")
            await client.send(
                {
                    "type": "session.update",
                    "session": {"input_audio_format": "x-opus", "output_audio_format": "x-opus"},
                }
            )
            updated = await client.wait_for("session.updated")
            await send_text_turn(client, "Hello.")
            done = await client.wait_for("response.done", timeout=60)
            return updated, done, client

    updated, done, client = run(main())
    assert updated["session"]["input_audio_format"] == updated["session"]["output_audio_format"] == "x-opus"
    assert done["response"]["status"] == "completed"
    assert client.packets(done["response"]["id"]) and "response.audio.delta" not in client.types()
