"""Interruptions in two steps over /v1/realtime: speech into an answer pauses it at once; the state head
then takes the turn (the answer ends cancelled) or lets it go on (it resumes where playback stopped).

The microphone streams a -60 dBFS noise floor all along, at real-time pace, with speech mixed in; what is
judged is what the client received and when, and what a client that flushes its playback on
`speech_started` actually played. The tiny model's head is switched by hand, so each path is taken on
purpose: "listen" until the pause, then "answer" or "ignore" (or nothing, and the VAD closes the turn).
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
    WIRE_RATE,
    Microphone,
    RealtimeClient,
    engine_answers,
    forced_state,
    playback,
    realtime_client,
    send_text_turn,
)

pytestmark = pytest.mark.slow

LONG_PROMPT = "Please talk for a while."
LONG_ANSWER_TOKENS = 60
BYTES_PER_SECOND = 2 * WIRE_RATE
STOP_WITHIN_S = 0.3  # the answer's last audio reaches the client at most this long after the speech onset


@pytest.fixture(scope="module")
def interrupt_server(start_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """Long greedy answers; the head kept on "listen" unless a test switches it."""
    server = start_server(max_answer_tokens=LONG_ANSWER_TOKENS, top_k=1, seed=2)
    with forced_state(server, "listen"):
        yield server
    server.stop()


def of_response(response_id: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event.get("response", {}).get("id", event.get("response_id")) == response_id


def index_of(client: RealtimeClient, event_type: str, after: int = 0) -> int:
    for index in range(after, len(client.log)):
        if client.log[index].event["type"] == event_type:
            return index
    raise AssertionError(f"no {event_type} after event {after}: {client.types()}")


async def long_answer(client: RealtimeClient, seconds_in: float) -> str:
    """Start a long answer and let it play for `seconds_in` after its first audio; returns its id."""
    await send_text_turn(client, LONG_PROMPT)
    response_id = (await client.wait_for("response.created"))["response"]["id"]
    await client.wait_for("response.output_audio.delta")
    await client.collect_for(seconds_in)
    return response_id


def texts_before(client: RealtimeClient, response_id: str, stop: int) -> str:
    return "".join(
        r.event["delta"]
        for r in client.log[:stop]
        if r.event["type"] == "response.output_audio_transcript.delta"
        and r.event["response_id"] == response_id
    )


def test_speech_into_an_answer_stops_its_audio_within_300_ms_and_taking_the_turn_cancels_it(
    interrupt_server: LiveServer, question_24k: np.ndarray
) -> None:
    async def main() -> tuple[RealtimeClient, str, float, dict, list[str]]:
        async with realtime_client(interrupt_server.ws_url) as client, Microphone(client) as mic:
            first = await long_answer(client, 1.0)
            utterance = mic.say(question_24k)
            await client.wait_for("input_audio_buffer.speech_started", timeout=10)
            await client.collect_for(0.5)  # any audio still on its way would arrive now
            assert utterance.onset_sent_at is not None
            with forced_state(interrupt_server, "answer"):
                done = await client.wait_for("response.done", timeout=10, where=of_response(first))
                await client.wait_for("response.created", timeout=10)
            await client.wait_for("response.output_audio.delta", timeout=10)
            answers = engine_answers(interrupt_server)
            return client, first, utterance.onset_sent_at, done, answers

    client, first, onset_at, done, answers = asyncio.run(main())
    deltas = client.audio_deltas(first)
    started = index_of(client, "input_audio_buffer.speech_started")
    last_delta_after_s = deltas[-1].at - onset_at
    print(f"\nlast audio delta {1000 * last_delta_after_s:.0f} ms after the speech onset was sent")
    assert last_delta_after_s <= STOP_WITHIN_S
    assert all(client.log.index(d) < started for d in deltas)  # nothing of it after the pause
    assert done["response"]["status"] == "cancelled"
    assert done["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    # Its transcript is what was sent before the pause, and nothing was sent after it.
    heard_text = texts_before(client, first, started)
    assert done["response"]["output"][0]["content"][0]["transcript"] == heard_text
    assert texts_before(client, first, len(client.log)) == heard_text
    # The model's conversation keeps, of the cut answer, at most what was played before the pause.
    kept = "".join(answers[0].split())
    assert "".join(heard_text.split()).startswith(kept)
    assert len(client.events("response.created")) == 2


@pytest.mark.parametrize("ends_by", ["ignore", "vad_close"])
def test_a_backchannel_pauses_the_answer_and_it_resumes_where_playback_stopped(
    interrupt_server: LiveServer, question_24k: np.ndarray, ends_by: str
) -> None:
    backchannel = question_24k[: int(0.6 * WIRE_RATE)]  # a short burst of speech

    async def main() -> tuple[RealtimeClient, str, dict]:
        async with realtime_client(interrupt_server.ws_url) as client, Microphone(client) as mic:
            first = await long_answer(client, 1.0)
            mic.say(backchannel)
            await client.wait_for("input_audio_buffer.speech_started", timeout=10)
            if ends_by == "ignore":
                with forced_state(interrupt_server, "ignore"):
                    await client.wait_for("input_audio_buffer.cleared", timeout=10)
            done = await client.wait_for("response.done", timeout=30, where=of_response(first))
            return client, first, done

    client, first, done = asyncio.run(main())
    assert done["response"]["status"] == "completed", done["response"]
    assert len(client.events("response.created")) == 1
    assert not client.events("error")
    started = index_of(client, "input_audio_buffer.speech_started")
    cleared = index_of(client, "input_audio_buffer.cleared", started)
    deltas = client.audio_deltas(first)
    before = [d for d in deltas if client.log.index(d) < started]
    after = [d for d in deltas if client.log.index(d) > cleared]
    assert before and after and len(before) + len(after) == len(deltas)  # paused in between
    received = b"".join(base64.b64decode(d.event["delta"]) for d in before)
    # The client played up to about the pause and flushed the rest; the answer goes on from a little
    # before that point: no word lost, at most the rewind (plus pacing slack) repeated.
    heard = playback(client, first)
    played_at_pause = heard.played[: len(received)]
    first_resumed = base64.b64decode(after[0].event["delta"])
    resumed_from = received.find(first_resumed)
    assert resumed_from >= 0, "the answer did not resume from audio it had sent"
    flushed_from = len(received) - heard.flushed_bytes
    assert played_at_pause[:flushed_from] == received[:flushed_from]
    repeated_s = (flushed_from - resumed_from) / BYTES_PER_SECOND
    print(
        f"\nresumed {1000 * repeated_s:.0f} ms before the point playback stopped "
        f"(received {len(received) / BYTES_PER_SECOND:.2f} s, flushed {heard.flushed_bytes / BYTES_PER_SECOND:.2f} s)"
    )
    rewind_s = interrupt_server.settings.resume_rewind_ms / 1000
    assert 0.0 <= repeated_s <= rewind_s + 0.15
    # The transcript adds up, and the played audio holds the whole answer.
    deltas_text = "".join(
        e["delta"]
        for e in client.events("response.output_audio_transcript.delta")
        if e["response_id"] == first
    )
    assert deltas_text == done["response"]["output"][0]["content"][0]["transcript"]
    total_sent = sum(len(base64.b64decode(d.event["delta"])) for d in deltas)
    unique = total_sent - (len(received) - resumed_from)
    assert len(heard.played) >= unique - (len(received) - flushed_from)


def test_interrupt_response_false_never_pauses(
    interrupt_server: LiveServer, question_24k: np.ndarray
) -> None:
    async def main() -> tuple[RealtimeClient, str, dict]:
        async with realtime_client(interrupt_server.ws_url) as client:
            await client.send(
                {
                    "type": "session.update",
                    "session": {"turn_detection": {"type": "server_vad", "interrupt_response": False}},
                }
            )
            async with Microphone(client) as mic:
                first = await long_answer(client, 1.0)
                mic.say(question_24k)
                with forced_state(interrupt_server, "answer"):
                    done = await client.wait_for("response.done", timeout=30, where=of_response(first))
                return client, first, done

    client, first, done = asyncio.run(main())
    assert done["response"]["status"] == "completed"
    assert not client.events("input_audio_buffer.speech_started")
    assert playback(client, first).flushed_bytes == 0


def test_a_paused_answer_cancelled_by_the_client_leaves_an_ordinary_turn(
    interrupt_server: LiveServer, question_24k: np.ndarray
) -> None:
    """response.cancel while speech has paused the answer: the answer ends cancelled (client_cancelled) and
    the speech, no longer an interruption, is answered when the VAD hears its end."""

    async def main() -> tuple[RealtimeClient, str]:
        async with realtime_client(interrupt_server.ws_url) as client, Microphone(client) as mic:
            first = await long_answer(client, 1.0)
            mic.say(question_24k)
            await client.wait_for("input_audio_buffer.speech_started", timeout=10)
            await client.send({"type": "response.cancel"})
            await client.wait_for("response.done", timeout=10, where=of_response(first))
            await client.wait_for("response.done", timeout=30)  # the question's own answer
            return client, first

    client, first = asyncio.run(main())
    first_done, second_done = client.events("response.done")
    assert first_done["response"]["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
    assert second_done["response"]["id"] != first
    assert not client.events("input_audio_buffer.cleared")
    assert client.events("input_audio_buffer.committed")
