"""`/v1/realtime` end to end: a real websockets client against a live server on the tiny model.

Spoken turns stream the espeak-ng question at real-time pace, as a microphone would. The shared
`realtime_server` keeps its state head on "listen", so a spoken turn ends by the VAD's silence fallback;
the barge-in tests run on `long_server`, whose head they switch, and whose answers are long enough to
interrupt (greedy text; per-session seeds 2..7 give 4.5-7.4 s of speech for `LONG_PROMPT`).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.routes.conftest import (
    SHORT_ANSWER_TOKENS,
    WIRE_RATE,
    RealtimeClient,
    forced_state,
    from_pcm16,
    playback,
    realtime_client,
    run,
    send_text_turn,
    silence,
    stream_turn,
    text_turn,
    transcript,
)

DELTA_BYTES = WIRE_RATE * 2 // 10  # the server's 100 ms output deltas (audio_delta_ms)
PACING_TOLERANCE_S = 0.25
LONG_PROMPT = "Please talk for a while."
LONG_ANSWER_TOKENS = 60
RESPONSE_EVENTS = [
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]


@pytest.fixture(scope="module")
def long_server(start_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """A server of its own for the tests that switch the state head: long answers, head on "listen"."""
    server = start_server(max_answer_tokens=LONG_ANSWER_TOKENS, top_k=1, seed=2)
    with forced_state(server, "listen"):
        yield server
    server.stop()


# -- helpers -----------------------------------------------------------------------------------------------
def ulaw_encode(samples: np.ndarray) -> bytes:
    """G.711 u-law, written out from the standard here so the test does not trust the server's codec."""
    values = np.clip(samples, -1.0, 1.0) * 32767
    sign = np.where(values < 0, 0x80, 0)
    magnitude = np.minimum(np.abs(values).astype(np.int32), 32635) + 0x84
    exponent = np.floor(np.log2(magnitude)).astype(np.int32) - 7
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def ulaw_decode(data: bytes) -> np.ndarray:
    """G.711 u-law bytes to float32."""
    codes = ~np.frombuffer(data, dtype=np.uint8).astype(np.int32) & 0xFF
    exponent = (codes >> 4) & 0x07
    magnitude = ((((codes & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(codes & 0x80, -magnitude, magnitude).astype(np.float32) / 32768.0


def resample_to_8k(samples_24k: np.ndarray) -> np.ndarray:
    """24 kHz to 8 kHz by averaging triples (a crude low-pass is plenty for speech into a VAD-less turn)."""
    usable = len(samples_24k) - len(samples_24k) % 3
    return samples_24k[:usable].reshape(-1, 3).mean(axis=1)


def push_to_talk_update(**audio: Any) -> dict[str, Any]:
    """A GA `session.update` that turns server VAD off (and sets the given audio formats)."""
    audio_input: dict[str, Any] = {"turn_detection": None}
    if "input_format" in audio:
        audio_input["format"] = audio["input_format"]
    session: dict[str, Any] = {"type": "realtime", "audio": {"input": audio_input}}
    if "output_format" in audio:
        session["audio"]["output"] = {"format": audio["output_format"]}
    return {"type": "session.update", "session": session}


def first_index(client: RealtimeClient, event_type: str, where: Callable[[dict], bool] | None = None) -> int:
    """Position in the client's log of the first event of a type (matching `where`)."""
    for index, received in enumerate(client.log):
        if received.event["type"] == event_type and (where is None or where(received.event)):
            return index
    raise AssertionError(f"no {event_type} in {client.types()}")


def assert_response_shape(client: RealtimeClient, done: dict[str, Any]) -> str:
    """The response's events come in the protocol's order, all with its id; returns that id."""
    response_id = done["response"]["id"]
    mine = [
        r.event["type"]
        for r in client.log
        if r.event.get("response_id") == response_id or r.event.get("response", {}).get("id") == response_id
    ]
    positions = [mine.index(kind) for kind in RESPONSE_EVENTS]
    assert positions == sorted(positions), mine
    assert mine[-1] == "response.done"
    last_delta = len(mine) - 1 - mine[::-1].index("response.output_audio.delta")
    assert last_delta < mine.index("response.output_audio.done")
    return response_id


def assert_transcript_consistent(client: RealtimeClient, done: dict[str, Any]) -> str:
    """Transcript deltas add up to the `.done` transcript and to the one in `response.done`."""
    response_id = done["response"]["id"]
    deltas = "".join(
        e["delta"]
        for e in client.events("response.output_audio_transcript.delta")
        if e["response_id"] == response_id
    )
    (final,) = [
        e["transcript"]
        for e in client.events("response.output_audio_transcript.done")
        if e["response_id"] == response_id
    ]
    assert deltas == final == transcript(done)
    return final


def pcm_chunks_are_whole(chunks: list[bytes]) -> None:
    """Every delta holds whole 16-bit samples; all but the last are exactly one 100 ms delta."""
    assert all(len(c) % 2 == 0 for c in chunks)
    assert all(len(c) == DELTA_BYTES for c in chunks[:-1]), sorted({len(c) for c in chunks})


def max_lead_s(client: RealtimeClient, response_id: str, bytes_per_second: int = 2 * WIRE_RATE) -> float:
    """How far ahead of real-time playback the response's audio ever arrived, playback counted from its
    first delta, and again from the first delta after each `speech_started` (where clients flush)."""
    start: float | None = None
    sent = 0.0
    lead = 0.0
    for received in client.log:
        event = received.event
        if event["type"] == "input_audio_buffer.speech_started":
            start = None
        elif event["type"] == "response.output_audio.delta" and event["response_id"] == response_id:
            if start is None:
                start, sent = received.at, 0.0
            lead = max(lead, sent - (received.at - start))  # audio already held when this delta arrived
            sent += len(base64.b64decode(event["delta"])) / bytes_per_second
    return lead


# -- a spoken turn -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_spoken_turn_is_answered_with_paced_pcm16(realtime_server: LiveServer, question_pcm: bytes) -> None:
    """Speech, then silence, at real-time pace: VAD events, a complete response, audio paced to real time."""

    async def main() -> tuple[RealtimeClient, dict]:
        async with realtime_client(realtime_server.ws_url) as client:
            return client, await stream_turn(client, question_pcm, silence_s=1.0)

    client, done = run(main())

    started, stopped = (
        client.events("input_audio_buffer.speech_started"),
        client.events("input_audio_buffer.speech_stopped"),
    )
    assert len(started) == len(stopped) == 1, client.types()
    question_ms = 1000 * len(question_pcm) / (2 * WIRE_RATE)
    assert 0 <= started[0]["audio_start_ms"] < stopped[0]["audio_end_ms"] <= question_ms + 1000
    assert stopped[0]["audio_end_ms"] > question_ms / 2
    (committed,) = client.events("input_audio_buffer.committed")
    assert committed["item_id"] == started[0]["item_id"] == stopped[0]["item_id"]
    assert first_index(client, "input_audio_buffer.speech_stopped") < first_index(client, "response.created")

    assert done["response"]["status"] == "completed"
    assert done["response"]["status_details"]["type"] == "completed"
    usage = done["response"]["usage"]
    assert 0 < usage["output_token_details"]["text_tokens"] <= SHORT_ANSWER_TOKENS
    assert usage["output_token_details"]["audio_tokens"] > 0  # codec tokens, 40 per second of answer
    assert usage["input_token_details"]["audio_tokens"] > 0  # 160 ms chunks heard
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    response_id = assert_response_shape(client, done)
    assert assert_transcript_consistent(client, done).strip()
    (item,) = done["response"]["output"]
    assert item["role"] == "assistant" and item["status"] == "completed"

    chunks = [base64.b64decode(r.event["delta"]) for r in client.audio_deltas(response_id)]
    pcm_chunks_are_whole(chunks)
    audio = from_pcm16(b"".join(chunks))
    assert 0 < len(audio) / WIRE_RATE < 30
    assert float(np.sqrt(np.mean(audio**2))) > 1e-3  # something was said
    # Paced (test_ignored_speech_leaves_the_answer_alone checks it on an answer known to be long).
    assert max_lead_s(client, response_id) <= realtime_server.settings.audio_ahead_s + PACING_TOLERANCE_S


# -- push to talk, text, instructions ----------------------------------------------------------------------
@pytest.mark.slow
def test_push_to_talk_commit_and_response_create(realtime_server: LiveServer, question_pcm: bytes) -> None:
    """turn_detection null: appends (sent at once), commit, response.create -> a complete response."""

    async def main() -> tuple[RealtimeClient, dict, dict, dict]:
        async with realtime_client(realtime_server.ws_url) as client:
            await client.send(push_to_talk_update())
            updated = await client.wait_for("session.updated")
            await client.stream(question_pcm, paced=False)
            await client.send({"type": "input_audio_buffer.commit", "event_id": "commit-1"})
            committed = await client.wait_for("input_audio_buffer.committed")
            await client.send({"type": "response.create"})
            return client, updated, committed, await client.wait_for("response.done")

    client, updated, committed, done = run(main())
    assert updated["session"]["audio"]["input"]["turn_detection"] is None
    assert committed["item_id"].startswith("item_")
    assert done["response"]["status"] == "completed"
    assert client.audio(assert_response_shape(client, done))
    assert not client.events("error"), client.events("error")


def test_push_to_talk_sends_no_vad_events(realtime_server: LiveServer, question_pcm: bytes) -> None:
    """Without server VAD there is no speech detection to report: appends and commit give only `committed`."""

    async def main() -> RealtimeClient:
        async with realtime_client(realtime_server.ws_url) as client:
            await client.send(push_to_talk_update())
            await client.wait_for("session.updated")
            await client.stream(question_pcm, paced=False)
            await client.send({"type": "input_audio_buffer.commit"})
            await client.send({"type": "response.create"})
            await client.wait_for("response.done")  # all appended audio heard before leaving
            return client

    client = run(main())
    assert client.events("input_audio_buffer.committed")
    assert not client.events("input_audio_buffer.speech_started")
    assert not client.events("input_audio_buffer.speech_stopped")


@pytest.mark.slow
def test_text_turn_is_answered(realtime_server: LiveServer) -> None:
    """conversation.item.create with input_text, then response.create -> an audio answer."""

    async def main() -> tuple[RealtimeClient, dict]:
        async with realtime_client(realtime_server.ws_url) as client:
            return client, await text_turn(client, "Hello there, how are you?")

    client, done = run(main())
    (added,) = [e for e in client.events("conversation.item.added") if e["item"]["role"] == "user"]
    assert added["item"]["content"][0] == {"type": "input_text", "text": "Hello there, how are you?"}
    assert done["response"]["status"] == "completed"
    response_id = assert_response_shape(client, done)
    assert assert_transcript_consistent(client, done).strip()
    pcm_chunks_are_whole([base64.b64decode(r.event["delta"]) for r in client.audio_deltas(response_id)])


@pytest.mark.slow
def test_instructions_between_turns_change_the_answer(realtime_server: LiveServer) -> None:
    """Two sessions say the same thing; one changes its instructions between turns, and its next answer
    differs while everything before the change matches (greedy text makes the sessions comparable)."""

    async def conversation(instructions: str | None) -> list[str]:
        async with realtime_client(realtime_server.ws_url) as client:
            first = await text_turn(client, "What is two plus two?")
            if instructions is not None:
                await client.send(
                    {"type": "session.update", "session": {"type": "realtime", "instructions": instructions}}
                )
                updated = await client.wait_for("session.updated")
                assert updated["session"]["instructions"] == instructions
            second = await text_turn(client, "And three plus three?")
            return [transcript(first), transcript(second)]

    async def main() -> tuple[list[str], list[str]]:
        plain, instructed = await asyncio.gather(
            conversation(None), conversation("You are a pirate. Answer every question in rhymes.")
        )
        return plain, instructed

    plain, instructed = run(main())
    assert plain[0] == instructed[0]  # comparable: the same answer before the update
    assert plain[1] != instructed[1]


# -- formats and frames --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_g711_ulaw_in_and_out(
    realtime_server: LiveServer, question_24k: np.ndarray, question_pcm: bytes
) -> None:
    """session.update to audio/pcmu both ways: u-law 8 kHz in, u-law 8 kHz deltas out.

    The same question sent as 24 kHz pcm16 in a second session must be heard the same way: the VAD
    finds the end of speech at the same place (u-law misread as pcm16 would not even be the same length).
    """
    question_ulaw = ulaw_encode(resample_to_8k(question_24k))
    pcmu = {"type": "audio/pcmu"}

    async def turn(audio: bytes, bytes_per_second: int, fill: int, update: dict | None) -> RealtimeClient:
        async with realtime_client(realtime_server.ws_url) as client:
            if update is not None:
                await client.send(update)
                await client.wait_for("session.updated")
            tail = silence(1.0, rate=bytes_per_second, bytes_per_sample=1, fill=fill)
            await client.stream(audio + tail, bytes_per_second=bytes_per_second, paced=False)
            await client.wait_for("response.done")
            return client

    async def main() -> tuple[RealtimeClient, RealtimeClient]:
        update = {
            "type": "session.update",
            "session": {"type": "realtime", "audio": {"input": {"format": pcmu}, "output": {"format": pcmu}}},
        }
        return await asyncio.gather(
            turn(question_ulaw, 8000, 0xFF, update), turn(question_pcm, 2 * WIRE_RATE, 0, None)
        )

    ulaw, pcm = run(main())
    (updated,) = ulaw.events("session.updated")
    formats = updated["session"]["audio"]
    assert formats["input"]["format"] == formats["output"]["format"] == {"type": "audio/pcmu"}
    (ulaw_stop,) = ulaw.events("input_audio_buffer.speech_stopped")
    (pcm_stop,) = pcm.events("input_audio_buffer.speech_stopped")
    assert abs(ulaw_stop["audio_end_ms"] - pcm_stop["audio_end_ms"]) <= 90  # three VAD frames
    (done,) = ulaw.events("response.done")
    assert done["response"]["status"] == "completed"
    chunks = [base64.b64decode(r.event["delta"]) for r in ulaw.audio_deltas(done["response"]["id"])]
    assert all(len(c) == 800 for c in chunks[:-1])  # 100 ms of 8 kHz, one byte a sample
    audio = ulaw_decode(b"".join(chunks))
    assert 0 < len(audio) / 8000 < 30
    assert float(np.sqrt(np.mean(audio**2))) > 1e-3


@pytest.mark.slow
def test_binary_frames_are_raw_pcm16_appends(realtime_server: LiveServer, question_pcm: bytes) -> None:
    """Binary WebSocket frames are taken as 24 kHz pcm16 appends: committing them makes a user turn."""

    async def main() -> tuple[RealtimeClient, dict, dict]:
        async with realtime_client(realtime_server.ws_url) as client:
            await client.send(push_to_talk_update())
            await client.wait_for("session.updated")
            await client.stream(question_pcm, paced=False, binary=True)
            await client.send({"type": "input_audio_buffer.commit"})
            committed = await client.wait_for("input_audio_buffer.committed")
            await client.send({"type": "response.create"})
            return client, committed, await client.wait_for("response.done")

    client, committed, done = run(main())
    assert not client.events("error"), client.events("error")
    assert committed["item_id"]
    assert done["response"]["status"] == "completed"
    assert client.audio(done["response"]["id"])


# -- interruptions ----------------------------------------------------------------------------------------
async def start_long_answer(client: RealtimeClient) -> str:
    """A text turn with a long answer; returns once its first audio delta is in, with the response id."""
    await send_text_turn(client, LONG_PROMPT)
    response_id = (await client.wait_for("response.created"))["response"]["id"]
    await client.wait_for("response.output_audio.delta")
    return response_id


def is_response(response_id: str) -> Callable[[dict], bool]:
    """A `where` for events of one response."""
    return lambda event: event.get("response", {}).get("id", event.get("response_id")) == response_id


@pytest.mark.slow
def test_barge_in_cancels_the_answer_and_answers_again(long_server: LiveServer, question_pcm: bytes) -> None:
    """Speech during an answer, the head saying "answer": the answer's audio stops, its response.done says
    cancelled/turn_detected, and a second response follows - before the speech has even ended."""
    speech_s = len(question_pcm) / (2 * WIRE_RATE)

    async def main() -> tuple[RealtimeClient, str, dict, dict, float]:
        async with realtime_client(long_server.ws_url) as client:
            first = await start_long_answer(client)
            await asyncio.sleep(0.3)
            stop = asyncio.Event()
            with forced_state(long_server, "answer"):
                speaking = asyncio.get_running_loop().time()
                sender = asyncio.create_task(client.stream(question_pcm + silence(1.0), stop=stop))
                done = await client.wait_for("response.done", timeout=10, where=is_response(first))
                cut_after = asyncio.get_running_loop().time() - speaking
                stop.set()
            await sender
            second = await client.wait_for("response.created", timeout=10)
            await client.wait_for("response.output_audio.delta", where=is_response(second["response"]["id"]))
            return client, first, done, second, cut_after

    client, first, done, second, cut_after = run(main())
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert cut_after < speech_s  # the state head answered, not the silence after the speech
    assert first_index(client, "input_audio_buffer.speech_started") < first_index(
        client, "response.done", is_response(first)
    )
    # The first answer's audio stops: nothing of it after its response.done, and no more than was due.
    done_at = first_index(client, "response.done", is_response(first))
    assert all(r.event["response_id"] != first for r in client.log[done_at:] if "delta" in r.event)
    heard_s = len(client.audio(first)) / (2 * WIRE_RATE)
    playing_s = client.log[done_at].at - client.audio_deltas(first)[0].at
    assert heard_s <= playing_s + long_server.settings.audio_ahead_s + 0.1 + PACING_TOLERANCE_S
    assert second["response"]["id"] != first
    assert done_at < first_index(client, "response.created", is_response(second["response"]["id"]))


@pytest.mark.slow
def test_ignored_speech_leaves_the_answer_alone(long_server: LiveServer, question_pcm: bytes) -> None:
    """Speech during an answer, the head saying "ignore" (a backchannel): the turn is dropped and the
    answer plays on to its end, completed, its audio paced to real time all along."""

    async def main() -> tuple[RealtimeClient, str, dict]:
        async with realtime_client(long_server.ws_url) as client:
            first = await start_long_answer(client)
            await asyncio.sleep(0.3)
            with forced_state(long_server, "ignore"):
                sender = asyncio.create_task(client.stream(question_pcm + silence(1.0)))
                done = await client.wait_for("response.done", timeout=20, where=is_response(first))
                await sender
            return client, first, done

    client, first, done = run(main())
    assert done["response"]["status"] == "completed", done["response"]
    assert len(client.events("response.created")) == 1
    cleared = first_index(client, "input_audio_buffer.cleared")
    assert first_index(client, "input_audio_buffer.speech_started") < cleared
    # Audio kept coming after the speech was ignored, up to the end.
    assert any(r.event["type"] == "response.output_audio.delta" for r in client.log[cleared:])
    # What a client that flushes on speech_started plays: all of the answer (test_interruptions.py checks
    # the resume point); and audio never came more than audio_ahead_s ahead of real time (an unpaced
    # server would be seconds ahead), the pauses aside.
    seconds = len(playback(client, first).played) / (2 * WIRE_RATE)
    assert seconds > 3.0
    assert_transcript_consistent(client, done)
    ahead_s = long_server.settings.audio_ahead_s
    assert seconds > ahead_s + 2.0
    assert max_lead_s(client, first) <= ahead_s + PACING_TOLERANCE_S


@pytest.mark.slow
def test_response_cancel_stops_the_answer(long_server: LiveServer) -> None:
    """response.cancel mid-answer: response.done cancelled/client_cancelled, and no audio after it."""

    async def main() -> tuple[RealtimeClient, str, dict]:
        async with realtime_client(long_server.ws_url) as client:
            first = await start_long_answer(client)
            await client.send({"type": "response.cancel", "event_id": "cancel-1"})
            done = await client.wait_for("response.done", timeout=10)
            await client.collect_for(0.5)  # anything still queued would arrive now
            return client, first, done

    client, first, done = run(main())
    assert done["response"]["id"] == first
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert not client.events("error")
    done_at = first_index(client, "response.done")
    assert all(r.event["type"] != "response.output_audio.delta" for r in client.log[done_at:])
    assert len(client.audio(first)) / (2 * WIRE_RATE) < 2.0
    (item,) = done["response"]["output"]
    assert item["status"] == "incomplete"


async def until_engine_finished(client: RealtimeClient, server: LiveServer, before: int) -> None:
    """Receive events until the engine has finished generating an answer (its audio may still be queued)."""
    stats = server.state.pool.engines[0].stats
    await client.pump(lambda: stats.answers_completed > before, timeout=20)


@pytest.mark.slow
def test_response_cancel_while_the_last_audio_is_still_being_sent(long_server: LiveServer) -> None:
    """response.cancel after the engine has generated the whole answer but before the client has it all."""

    async def main() -> tuple[RealtimeClient, str, dict]:
        async with realtime_client(long_server.ws_url) as client:
            before = long_server.state.pool.engines[0].stats.answers_completed
            first = await start_long_answer(client)
            await until_engine_finished(client, long_server, before)
            assert not client.events("response.done")  # audio is still on its way
            await client.send({"type": "response.cancel", "event_id": "cancel-late"})
            return client, first, await client.wait_for("response.done", timeout=10)

    client, first, done = run(main())
    assert not client.events("error"), client.events("error")
    assert done["response"]["status"] == "cancelled"


@pytest.mark.slow
def test_barge_in_while_the_last_audio_is_still_being_sent(
    long_server: LiveServer, question_pcm: bytes
) -> None:
    """Speech (head saying "answer") after generation ended but while the answer's audio is still arriving."""

    async def main() -> tuple[RealtimeClient, str, dict]:
        async with realtime_client(long_server.ws_url) as client:
            before = long_server.state.pool.engines[0].stats.answers_completed
            first = await start_long_answer(client)
            await until_engine_finished(client, long_server, before)
            assert not client.events("response.done")
            stop = asyncio.Event()
            with forced_state(long_server, "answer"):
                sender = asyncio.create_task(client.stream(question_pcm + silence(1.0), stop=stop))
                done = await client.wait_for("response.done", timeout=10, where=is_response(first))
                stop.set()
            await sender
            return client, first, done

    client, first, done = run(main())
    assert done["response"]["status"] == "cancelled", done["response"]["status"]
