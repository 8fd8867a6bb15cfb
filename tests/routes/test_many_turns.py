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
import contextlib
import time
from dataclasses import dataclass, field

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer
from tests.routes.conftest import (
    APPEND_MS,
    WIRE_RATE,
    RealtimeClient,
    force_state,
    noise_floor,
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


@dataclass
class Spoken:
    """A question handed to the microphone, and where it lies on the session's audio clock."""

    samples: np.ndarray
    start_ms: float | None = None
    end_ms: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class RealMicrophone:
    """Streams a floor at real-time pace in 100 ms appends; a question replaces the floor, exact zeros
    and all, while it is spoken (`say`)."""

    def __init__(self, client: RealtimeClient, seed: int = 0) -> None:
        self.client = client
        self._seed = seed
        self._queue: list[Spoken] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def say(self, samples: np.ndarray) -> Spoken:
        spoken = Spoken(samples)
        self._queue.append(spoken)
        return spoken

    async def __aenter__(self) -> RealMicrophone:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._task

    async def _run(self) -> None:
        step = WIRE_RATE * APPEND_MS // 1000
        started = time.perf_counter()
        sent = 0
        while not self._stop.is_set():
            if self._queue:
                spoken = self._queue.pop(0)
                spoken.start_ms = 1000 * sent / WIRE_RATE
                piece = spoken.samples
                spoken.end_ms = 1000 * (sent + len(piece)) / WIRE_RATE
            else:
                spoken, piece = None, noise_floor(step / WIRE_RATE, FLOOR_DBFS, self._seed)
                self._seed += 1
            for offset in range(0, len(piece), step):
                await self.client.append(pcm16(piece[offset : offset + step]))
                sent += len(piece[offset : offset + step])
                await asyncio.sleep(max(0.0, started + sent / WIRE_RATE - time.perf_counter()))
            if spoken is not None:
                spoken.finished.set()


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


async def converse(server: LiveServer, questions: list[np.ndarray]) -> tuple[RealtimeClient, list[Spoken]]:
    asked: list[Spoken] = []
    async with realtime_client(server.ws_url) as client:
        await client.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
        async with RealMicrophone(client) as microphone:
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
