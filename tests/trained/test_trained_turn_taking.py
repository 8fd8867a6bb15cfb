"""Turn taking in a real room, on the trained model over /v1/realtime at real-time pace.

A question spoken by espeak-ng as it comes (its pauses are runs of exact zeros, as noise gates and echo
cancellers make them), then a steady microphone floor: the floor must open no turn, whatever its colour,
and whether or not it also lies under the question. The trained state head ends the turn itself, so a
VAD that still hears "speech" in the floor would reopen at once: a phantom `speech_started` and often a
phantom answer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.routes.conftest import WIRE_RATE, RealtimeClient, pcm16, realtime_client
from training import domain
from training.synth import espeak, noise

pytestmark = pytest.mark.slow

QUESTION = "What is ten divided by two?"
FLOOR_AFTER_S = 10.0


@dataclass(frozen=True)
class Room:
    """A noise floor: its colour, its level, and whether it lies under the question too."""

    kind: str
    dbfs: float
    under_question: bool

    def __str__(self) -> str:
        return f"{self.kind} {self.dbfs:g} dBFS{' under the question too' if self.under_question else ''}"


ROOMS = [Room("white", -64.0, False), Room("pink", -50.0, False), Room("white", -64.0, True)]


def floor(room: Room, samples: int, seed: int) -> np.ndarray:
    """`samples` of the room's floor at 24 kHz."""
    return (noise(room.kind, samples, np.random.default_rng(seed)) * 10 ** (room.dbfs / 20)).astype(
        np.float32
    )


def question_in(room: Room, seed: int) -> np.ndarray:
    """The question as espeak-ng says it (exact zeros in its pauses), then the floor; 24 kHz float32."""
    speech = espeak(QUESTION, "en-us", 145, 50, rate=WIRE_RATE)
    # (pcm16 rounds the resampler's 1e-10 ripples back to the exact zeros espeak-ng wrote)
    assert np.mean(np.abs(speech) < 0.5 / 32768) > 0.05, "the question should hold runs of exact zeros"
    after = floor(room, int(FLOOR_AFTER_S * WIRE_RATE), seed)
    if room.under_question:
        lead = floor(room, WIRE_RATE // 2, seed + 1)
        speech = np.concatenate([lead, speech + floor(room, len(speech), seed + 2)])
    return np.concatenate([speech, after])


async def ask_in(server: LiveServer, room: Room, seed: int) -> RealtimeClient:
    async with realtime_client(server.ws_url) as client:
        await client.send({"type": "session.update", "session": {"instructions": domain.SYSTEM_ROLE}})
        sender = asyncio.create_task(client.stream(pcm16(question_in(room, seed))))
        await client.pump(sender.done, timeout=60.0)
        await sender
        await client.collect_for(1.0)
        return client


def test_a_steady_floor_after_a_question_opens_no_turn(trained_server: LiveServer) -> None:
    async def main() -> list[RealtimeClient]:
        return await asyncio.gather(*(ask_in(trained_server, room, 10 * i) for i, room in enumerate(ROOMS)))

    began = time.perf_counter()
    clients = asyncio.run(main())
    print(f"\n{len(ROOMS)} rooms in {time.perf_counter() - began:.1f} s")
    for room, client in zip(ROOMS, clients, strict=True):
        started = client.events("input_audio_buffer.speech_started")
        responses = client.events("response.done")
        print(f"  {room}: {len(started)} speech_started, {[r['response']['status'] for r in responses]}")
        assert len(started) == 1, f"{room}: {client.types()}"
        assert len(client.events("response.created")) == 1, f"{room}: {client.types()}"
        assert [r["response"]["status"] for r in responses] == ["completed"], f"{room}: {client.types()}"
        assert not client.events("error"), client.events("error")
