"""Twenty turns in a row in one session, at real-time pace, as a person with a real microphone talks.

Each question is espeak-ng output as it comes (its pauses are runs of exact zeros, as noise gates and
echo cancellers make them), and between questions the microphone sends a steady -64 dBFS floor. Every
question must open exactly one turn (one `speech_started`, placed inside the question on the audio
clock) and get exactly one response; the floor, after long or short questions, must open none.

The tiny model's state head is random, so the test sets it: "listen" while a question is spoken, then
turns alternate between the two ways a turn ends: the head says "answer" on the floor after the question
(the published model's way, and the one that used to leave the VAD reopening on the floor at once), or
the head keeps listening and the VAD's end of speech answers (the fallback). Answers are text, so a turn
takes about as long as its question: the test judges turn taking, not speech synthesis.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.routes.conftest import (
    WIRE_RATE,
    Microphone,
    RealtimeClient,
    Utterance,
    force_state,
    pcm16,
    realtime_client,
)
from training.synth import espeak

pytestmark = pytest.mark.slow

TURNS = 20
FLOOR_DBFS = -64.0
QUESTIONS = [
    "What is two plus two?",
    "Where is the cat?",
    "Is it raining today?",
    "Tell me a joke.",
    "What is ten divided by two?",
]
HEAD_ANSWERS_AFTER_S = 0.3  # of floor after a question, before the head is set to "answer"
FLOOR_AFTER_ANSWER_S = 0.4  # of floor after each response, before the next question
FLOOR_AT_END_S = 3.0  # a phantom turn shows within this after the last answer


@pytest.fixture(scope="module")
def questions() -> list[np.ndarray]:
    spoken = []
    for text in QUESTIONS:
        samples = espeak(text, "en-us", 175, 50, rate=WIRE_RATE)
        # (pcm16 rounds the resampler's tiny ripples back to the exact zeros espeak-ng wrote)
        wire = np.frombuffer(pcm16(samples), dtype=np.int16)
        assert np.mean(wire == 0) > 0.03, f"{text!r} should hold runs of exact zeros"
        spoken.append(samples)
    return spoken


@pytest.fixture(scope="module")
def turn_server(start_server) -> LiveServer:
    server = start_server(max_answer_tokens=4, top_k=1)
    force_state(server, "listen")
    return server


def count(client: RealtimeClient, event_type: str) -> int:
    return len(client.events(event_type))


async def converse(server: LiveServer, questions: list[np.ndarray]) -> tuple[RealtimeClient, list[Utterance]]:
    asked: list[Utterance] = []
    async with realtime_client(server.ws_url) as client:
        await client.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
        async with Microphone(client, FLOOR_DBFS, floor_under_speech=False) as microphone:
            for turn in range(TURNS):
                spoken = microphone.say(questions[turn % len(questions)])
                asked.append(spoken)
                await client.pump(spoken.finished.is_set, timeout=30.0)
                if turn % 2 == 0:  # the state head ends this turn
                    await client.collect_for(HEAD_ANSWERS_AFTER_S)
                    force_state(server, "answer")
                await client.pump(lambda t=turn: count(client, "response.done") > t, timeout=30.0)
                force_state(server, "listen")
                await client.collect_for(FLOOR_AFTER_ANSWER_S)
            await client.collect_for(FLOOR_AT_END_S)
    return client, asked


def test_twenty_turns_in_a_row_each_open_one_turn_and_get_one_response(
    turn_server: LiveServer, questions: list[np.ndarray]
) -> None:
    started = time.perf_counter()
    client, asked = asyncio.run(converse(turn_server, questions))
    took_s = time.perf_counter() - started
    starts = client.events("input_audio_buffer.speech_started")
    done = client.events("response.done")
    assert [d["response"]["status"] for d in done] == ["completed"] * TURNS, client.types()
    assert len(starts) == TURNS, [s["audio_start_ms"] for s in starts]
    # Each turn opened on its question's speech, never on the floor (the start includes the pre-roll).
    for spoken, start in zip(asked, starts, strict=True):
        assert spoken.start_ms - 400 <= start["audio_start_ms"] <= spoken.end_ms, (spoken, start)
    assert count(client, "input_audio_buffer.cleared") == 0
    assert count(client, "input_audio_buffer.committed") == TURNS
    assert not client.events("error"), client.events("error")
    print(f"{TURNS} turns in {took_s:.1f} s")
