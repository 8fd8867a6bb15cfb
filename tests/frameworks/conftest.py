"""Fixtures for driving voice-agent frameworks (Pipecat, LiveKit Agents) against a live server.

The frameworks talk to the server through a `WireTap`: a loopback WebSocket relay that forwards every
message unchanged and records it with its direction and arrival time, so a test can say exactly what
the framework sent and what the server answered. Audio goes in as a microphone would give it: the
question at real-time pace, with a noise floor (about -60 dBFS) before, between and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from app.model.wav import resample
from tests.conftest import LiveServer, free_port, live_server_on
from tests.routes.conftest import forced_state
from tests.trained.conftest import held_out_questions, trained_paths  # noqa: F401 (fixtures)

NOISE_FLOOR_RMS = 10 ** (-60 / 20)  # a quiet room through a real microphone
LONG_ANSWER_TOKENS = 60  # tiny-model answers of several seconds: long enough to barge into
SPOKEN_QUESTION_INDEX = 3  # held_out_questions[3]: "What is two plus two?"
TEXT_QUESTION = "What is two plus two?"
# A refused cancel: the client's cancel crossed the response's end. The OpenAI API answers the same, and both
# frameworks ignore it by this code (Pipecat) or by its message's opening "Cancellation failed" (LiveKit).
CANCEL_CROSSED_THE_END = "response_cancel_not_active"


# -- audio -------------------------------------------------------------------------------------------------
def to_rate(samples_16k: np.ndarray, rate: int) -> np.ndarray:
    """A 16 kHz recording at `rate`."""
    return samples_16k if rate == 16000 else resample(samples_16k, 16000, rate)


class Microphone:
    """A live microphone in a quiet room: 20 ms frames at real-time pace, forever.

    It gives the noise floor until `say` queues speech, which it then gives (noise floor underneath)
    before going back to the room's noise. Iterate it (`async for frame in mic`) to pull frames.
    """

    FRAME_MS = 20

    def __init__(self, rate: int = 16000) -> None:
        self.rate = rate
        self.frame_samples = rate * self.FRAME_MS // 1000
        self._speech: list[tuple[np.ndarray, asyncio.Event]] = []
        self._offset = 0  # samples of the current utterance already given
        self._frames = 0
        self._started: float | None = None
        self._rng = np.random.default_rng(1)

    async def say(self, samples: np.ndarray) -> float:
        """Speak `samples` (at the microphone's rate) once the current utterance is done; return when
        the last of it has been given, as `time.perf_counter()`."""
        done = asyncio.Event()
        self._speech.append((samples, done))
        await done.wait()
        return time.perf_counter()

    def __aiter__(self) -> Microphone:
        return self

    async def __anext__(self) -> np.ndarray:
        if self._started is None:
            self._started = time.perf_counter()
        due = self._started + self._frames * self.FRAME_MS / 1000
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        self._frames += 1
        frame = (NOISE_FLOOR_RMS * self._rng.standard_normal(self.frame_samples)).astype(np.float32)
        if self._speech:
            samples, done = self._speech[0]
            piece = samples[self._offset : self._offset + self.frame_samples]
            frame[: len(piece)] += piece
            self._offset += self.frame_samples
            if self._offset >= len(samples):
                self._speech.pop(0)
                self._offset = 0
                done.set()
        return frame


# -- the wire tap ------------------------------------------------------------------------------------------
@dataclass
class WireEvent:
    """One Realtime event on the wire: "sent" (framework -> server) or "received" (server -> framework)."""

    direction: str
    event: dict[str, Any]
    at: float  # time.perf_counter()

    @property
    def type(self) -> str:
        return str(self.event.get("type"))


async def wait_until(condition, timeout: float, what: str, agent) -> None:
    """Poll `condition` until it holds; fail naming `what`, the agent's errors and the wire log."""
    deadline = time.perf_counter() + timeout
    while not condition():
        if time.perf_counter() > deadline:
            wire = agent.tap.summary() if agent.tap else ""
            raise AssertionError(
                f"{agent.framework}: {what} within {timeout} s did not happen; errors {agent.errors}\n{wire}"
            )
        await asyncio.sleep(0.02)


@dataclass
class WireTap:
    """Every event relayed between a framework and the server, in order."""

    url: str
    log: list[WireEvent] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)

    def sent(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return [w.event for w in self.log if w.direction == "sent" and event_type in (None, w.type)]

    def received(self, event_type: str | None = None) -> list[dict[str, Any]]:
        return [w.event for w in self.log if w.direction == "received" and event_type in (None, w.type)]

    def errors(self) -> list[dict[str, Any]]:
        """The `error` events the server sent, each with the client event it refers to when known."""
        by_id = {w.event.get("event_id"): w.event for w in self.log if w.direction == "sent"}
        out = []
        for error in self.received("error"):
            detail = dict(error.get("error") or {})
            refused = by_id.get(detail.get("event_id"))
            if refused is not None:
                detail["client_event"] = _summary(refused)
            out.append(detail)
        return out

    def unexpected_errors(
        self, expected: Callable[[dict[str, Any]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The errors that are neither a cancel crossing a response's end nor `expected`."""
        return [
            e
            for e in self.errors()
            if e.get("code") != CANCEL_CROSSED_THE_END and (expected is None or not expected(e))
        ]

    def first_at(self, direction: str, event_type: str, where: Callable[[dict], bool] | None = None) -> float:
        """When the first matching event passed (raises if none did)."""
        for w in self.log:
            if w.direction == direction and w.type == event_type and (where is None or where(w.event)):
                return w.at
        raise AssertionError(f"no {direction} {event_type}: {self.summary()}")

    def response_ended_before(self, response_id: str, moment: float) -> bool:
        """Whether the server's `response.done` of `response_id` arrived before `moment`."""
        return any(
            w.at < moment
            for w in self.log
            if w.type == "response.done" and w.event["response"]["id"] == response_id
        )

    def summary(self, last: int = 80) -> str:
        """The last events, one a line: "> " sent, "< " received; audio appends and deltas as counts."""
        lines: list[str] = []
        audio = {"sent": 0, "received": 0}
        for w in self.log:
            if w.type == "input_audio_buffer.append" or w.type.endswith("audio.delta"):
                audio[w.direction] += 1
                continue
            if any(audio.values()):
                lines.append(
                    f"  ({audio['sent']} audio appends sent, {audio['received']} audio deltas received)"
                )
                audio = {"sent": 0, "received": 0}
            lines.append(("> " if w.direction == "sent" else "< ") + _summary(w.event))
        if any(audio.values()):
            lines.append(f"  ({audio['sent']} audio appends sent, {audio['received']} audio deltas received)")
        lines = lines[-last:]
        return "\n".join(lines)


def _summary(event: dict[str, Any]) -> str:
    """An event in one line, without its audio."""
    kind = str(event.get("type"))
    if kind in ("input_audio_buffer.append",) or kind.endswith("audio.delta"):
        return kind
    text = json.dumps({k: v for k, v in event.items() if k not in ("type", "event_id")}, default=str)
    return f"{kind} {text[:300]}"


async def _relay(
    source: ServerConnection | ClientConnection,
    target: ServerConnection | ClientConnection,
    direction: str,
    tap: WireTap,
) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for message in source:
            if isinstance(message, str):
                with contextlib.suppress(ValueError):
                    tap.log.append(WireEvent(direction, json.loads(message), time.perf_counter()))
            await target.send(message)


@asynccontextmanager
async def wire_tap(server: LiveServer) -> AsyncIterator[WireTap]:
    """A relay on a loopback port in front of `server`'s /v1/realtime; `tap.url` is its ws:// base."""
    port = free_port()
    tap = WireTap(url=f"ws://127.0.0.1:{port}/v1/realtime")

    async def handle(downstream: ServerConnection) -> None:
        path = downstream.request.path if downstream.request else "/v1/realtime"
        forwarded = {
            name: value
            for name, value in (downstream.request.headers.raw_items() if downstream.request else [])
            if name.lower() in ("authorization", "openai-beta")
        }
        upstream_url = f"ws://127.0.0.1:{server.settings.port}{path}"
        async with websockets.connect(
            upstream_url, additional_headers=forwarded, max_size=None, proxy=None
        ) as upstream:
            relays = [
                asyncio.create_task(_relay(downstream, upstream, "sent", tap)),
                asyncio.create_task(_relay(upstream, downstream, "received", tap)),
            ]
            await asyncio.wait(relays, return_when=asyncio.FIRST_COMPLETED)
            for relay in relays:
                relay.cancel()
            tap.close_codes.append(upstream.close_code)
            await downstream.close()

    async with websockets.serve(handle, "127.0.0.1", port, max_size=None):
        yield tap


# -- servers -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_server(start_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """The tiny random model, answers long enough to barge into; the state head kept on "listen".

    Protocol behaviour only: what it says is noise. Tests that barge in switch the head to "answer".
    """
    server = start_server(max_answer_tokens=LONG_ANSWER_TOKENS, top_k=1, seed=2)
    with forced_state(server, "listen"):
        yield server
    server.stop()


@pytest.fixture(scope="module")
def trained_server(trained_paths) -> Iterator[LiveServer]:  # noqa: F811
    """The committed trained model with the serving defaults, for spoken turns judged by what they say."""
    server = live_server_on(trained_paths)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def spoken_question(held_out_questions):  # noqa: F811
    """A held-out recording of "What is two plus two?" (16 kHz, noise around it) and its expected answer."""
    return held_out_questions[SPOKEN_QUESTION_INDEX]
