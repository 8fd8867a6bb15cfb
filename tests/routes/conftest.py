"""Route fixtures: live servers on the tiny model, the spoken question as wire audio, and a small Realtime
client (websockets) that streams audio at real-time pace and records every event with its arrival time.

Servers are shared where their settings allow it (starting one costs a couple of seconds): `realtime_server`
serves the WebSocket, SDK, REST and health tests; tests that change a model's state head, or need odd limits,
start their own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from app.model.wav import read_wav, resample
from tests.conftest import LiveServer

WIRE_RATE = 24000  # the protocol's pcm16 rate, in and out
APPEND_MS = 100  # audio per input_audio_buffer.append, as browsers and the SDK examples send it
API_KEY = "secret"
STATE_INDEX = {"listen": 0, "answer": 1, "ignore": 2}  # rows of the state head's bias
SHORT_ANSWER_TOKENS = 12  # about three seconds of speech from the tiny model
MAX_MESSAGE_BYTES = 64 * 1024
MAX_UPLOAD_SECONDS = 3.0
RESUME_GRACE_S = 2.0  # a dropped client's session waits this long for a resume (short: tests drop many)


# -- audio -----------------------------------------------------------------------------------------------
def pcm16(samples: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as little-endian 16-bit PCM."""
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


def from_pcm16(data: bytes) -> np.ndarray:
    """Little-endian 16-bit PCM as float32."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def silence(seconds: float, rate: int = WIRE_RATE, bytes_per_sample: int = 2, fill: int = 0) -> bytes:
    """`seconds` of digital silence in a wire format (`fill` is the byte of a silent sample: 0xFF for u-law)."""
    return bytes([fill]) * (int(seconds * rate) * bytes_per_sample)


@pytest.fixture(scope="session")
def question_24k(spoken_wav: Path) -> np.ndarray:
    """The spoken question (about 1.5 s) as float32 at the protocol's 24 kHz."""
    samples, rate = read_wav(spoken_wav)
    return resample(samples, rate, WIRE_RATE)


@pytest.fixture(scope="session")
def question_pcm(question_24k: np.ndarray) -> bytes:
    """The spoken question as the bytes of 24 kHz pcm16 appends."""
    return pcm16(question_24k)


# -- the state head --------------------------------------------------------------------------------------
def force_state(server: LiveServer, state: str) -> None:
    """Make the state head of `server`'s model always say `state` ("listen", "answer" or "ignore").

    Only the head's bias changes; the model itself still runs on every chunk.
    """
    for engine in server.state.pool.engines:
        bias = engine.model.audio.predictor_head.bias
        with torch.no_grad():
            bias.zero_()
            bias[STATE_INDEX[state]] = 50.0


@contextmanager
def forced_state(server: LiveServer, state: str) -> Iterator[None]:
    """`force_state` for the duration of a block, then the bias as it was."""
    biases = [e.model.audio.predictor_head.bias for e in server.state.pool.engines]
    saved = [b.detach().clone() for b in biases]
    force_state(server, state)
    try:
        yield
    finally:
        with torch.no_grad():
            for bias, old in zip(biases, saved, strict=True):
                bias.copy_(old)


# -- servers ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def realtime_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """The shared server: short answers, greedy text (so sessions can be compared), the head kept listening.

    With the head forced to "listen", every spoken turn ends by the VAD's silence fallback, so the event
    sequence of a turn is the same on every run.
    """
    server = start_server(
        max_answer_tokens=SHORT_ANSWER_TOKENS,
        top_k=1,
        max_message_bytes=MAX_MESSAGE_BYTES,
        max_upload_seconds=MAX_UPLOAD_SECONDS,
        resume_grace_s=RESUME_GRACE_S,
    )
    force_state(server, "listen")
    return server


@pytest.fixture(scope="session")
def keyed_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server that wants `Authorization: Bearer secret`, and closes sessions idle for a second."""
    return start_server(api_keys=[API_KEY], idle_timeout_s=1.0, max_answer_tokens=4)


def engine_answers(server: LiveServer) -> list[str]:
    """The assistant texts of the server's one live session, as its model will read them next."""
    (connection,) = list(server.state.sessions)
    ref = connection.session.ref
    return [text for kind, text in ref.engine.conversation_text(ref.session_id) if kind == "answer"]


# -- the client ------------------------------------------------------------------------------------------
@dataclass
class Received:
    """One server event and when it arrived (`time.perf_counter()`)."""

    event: dict[str, Any]
    at: float


@dataclass
class RealtimeClient:
    """A websockets connection speaking the Realtime protocol; every event received is kept in `log`."""

    ws: ClientConnection
    log: list[Received] = field(default_factory=list)
    _read: int = 0  # events of `log` already handed out by `next_event`

    async def send(self, event: dict[str, Any]) -> None:
        """Send one client event as a JSON text frame."""
        await self.ws.send(json.dumps(event))

    async def append(self, audio: bytes, event_id: str | None = None) -> None:
        """One `input_audio_buffer.append` of wire bytes."""
        event: dict[str, Any] = {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(audio).decode(),
        }
        if event_id is not None:
            event["event_id"] = event_id
        await self.send(event)

    async def stream(
        self,
        audio: bytes,
        *,
        bytes_per_second: int = 2 * WIRE_RATE,
        paced: bool = True,
        stop: asyncio.Event | None = None,
        binary: bool = False,
    ) -> None:
        """Send `audio` in 100 ms appends, each no earlier than real time allows (unless not `paced`).

        Stops early when `stop` is set; `binary` sends raw bytes frames instead of JSON appends.
        """
        step = bytes_per_second * APPEND_MS // 1000
        started = time.perf_counter()
        for offset in range(0, len(audio), step):
            if stop is not None and stop.is_set():
                return
            piece = audio[offset : offset + step]
            if binary:
                await self.ws.send(piece)
            else:
                await self.append(piece)
            if paced:
                due = started + (offset + len(piece)) / bytes_per_second
                await asyncio.sleep(max(0.0, due - time.perf_counter()))

    async def _receive(self, timeout: float) -> None:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        self.log.append(Received(json.loads(raw), time.perf_counter()))

    async def next_event(self, timeout: float = 30.0) -> dict[str, Any]:
        """The next event not yet handed out (raises TimeoutError, or ConnectionClosed when the socket ends)."""
        if self._read == len(self.log):
            await self._receive(timeout)
        self._read += 1
        return self.log[self._read - 1].event

    async def wait_for(
        self,
        event_type: str,
        timeout: float = 30.0,
        where: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """Read events until one of `event_type` (matching `where`) arrives; return it."""
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no {event_type} within {timeout} s; got {self.types()}")
            event = await self.next_event(left)
            if event["type"] == event_type and (where is None or where(event)):
                return event

    async def pump(self, until: Callable[[], bool], timeout: float = 30.0) -> None:
        """Keep receiving events until `until()` holds, checking it at least every 20 ms.

        The events are recorded but not handed out: `next_event` and `wait_for` still see them.
        """
        deadline = time.perf_counter() + timeout
        while not until():
            if time.perf_counter() > deadline:
                raise TimeoutError(f"the condition did not hold within {timeout} s; got {self.types()}")
            with contextlib.suppress(TimeoutError):
                await self._receive(0.02)

    async def collect_for(self, seconds: float) -> None:
        """Receive (and record, without handing out) whatever arrives in the next `seconds`."""
        deadline = time.perf_counter() + seconds
        await self.pump(lambda: time.perf_counter() >= deadline, timeout=seconds + 1.0)

    async def wait_closed(self, timeout: float = 10.0) -> ConnectionClosed:
        """Read (and keep) events until the server closes the socket; return the close."""
        deadline = time.perf_counter() + timeout
        try:
            while True:
                await self.next_event(max(0.01, deadline - time.perf_counter()))
        except ConnectionClosed as closed:
            return closed

    def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        """Every event received so far, or those of one type."""
        return [r.event for r in self.log if event_type is None or r.event["type"] == event_type]

    def types(self) -> list[str]:
        """The types of the events received so far, in order."""
        return [r.event["type"] for r in self.log]

    def audio_deltas(self, response_id: str) -> list[Received]:
        """The `response.output_audio.delta` events of one response, with their arrival times."""
        return [
            r
            for r in self.log
            if r.event["type"] == "response.output_audio.delta" and r.event["response_id"] == response_id
        ]

    def audio(self, response_id: str) -> bytes:
        """The decoded audio of one response."""
        return b"".join(base64.b64decode(r.event["delta"]) for r in self.audio_deltas(response_id))


@asynccontextmanager
async def realtime_client(
    url: str, created_within: float = 10.0, **connect: Any
) -> AsyncIterator[RealtimeClient]:
    """Connect, wait for `session.created`, and yield the client; closes on exit."""
    connect = {"proxy": None, "max_size": None, "open_timeout": 10, **connect}
    async with websockets.connect(url, **connect) as ws:
        client = RealtimeClient(ws)
        await client.wait_for("session.created", timeout=created_within)
        yield client


async def stream_turn(
    client: RealtimeClient, audio: bytes, silence_s: float = 1.0, timeout: float = 60.0
) -> dict[str, Any]:
    """Stream `audio` then `silence_s` of silence at real-time pace and return the `response.done` that follows."""
    sender = asyncio.create_task(client.stream(audio + silence(silence_s)))
    try:
        return await client.wait_for("response.done", timeout=timeout)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await sender


async def send_text_turn(client: RealtimeClient, text: str) -> None:
    """Send a typed user turn: `conversation.item.create` with `input_text`, then `response.create`."""
    await client.send(
        {
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
        }
    )
    await client.send({"type": "response.create"})


async def text_turn(client: RealtimeClient, text: str, timeout: float = 60.0) -> dict[str, Any]:
    """A typed user turn; returns its `response.done`."""
    await send_text_turn(client, text)
    return await client.wait_for("response.done", timeout=timeout)


async def answers_text(client: RealtimeClient, text: str, timeout: float = 30.0) -> dict[str, Any]:
    """A typed user turn, up to the first audio delta of its answer (proof enough that the session works)."""
    await send_text_turn(client, text)
    return await client.wait_for("response.output_audio.delta", timeout=timeout)


def transcript(done: dict[str, Any]) -> str:
    """The spoken text of a finished response, as `response.done` reports it."""
    return "".join(
        part.get("transcript") or "" for item in done["response"]["output"] for part in item["content"]
    )


def run(coroutine: Any) -> Any:
    """Run a test's coroutine on a fresh event loop."""
    return asyncio.run(coroutine)


# -- what an OpenAI-style client plays, and a microphone that is never digitally silent ----------------------
@dataclass
class Playback:
    """What a client that plays each response's audio at real-time pace, and flushes its playback on
    `input_audio_buffer.speech_started` (as OpenAI's guidance says), actually played."""

    played: bytes  # the response's audio as it came out of the speaker, flushed parts left out
    max_lead_s: float  # the most audio ever waiting in the client's buffer
    flushed_bytes: int  # audio received but never played (flushed)


def playback(client: RealtimeClient, response_id: str, bytes_per_second: int = 2 * WIRE_RATE) -> Playback:
    """Replay the client's log through a speaker that plays in real time from each delta's arrival."""
    played = bytearray()
    queue = bytearray()
    clock: float | None = None  # the speaker's time: everything before it has been played
    max_lead = 0.0
    flushed = 0

    def advance(now: float) -> None:
        nonlocal clock
        if clock is not None and queue:
            take = min(len(queue), int((now - clock) * bytes_per_second) // 2 * 2)
            played.extend(queue[:take])
            del queue[:take]
            clock += take / bytes_per_second
        if not queue:
            clock = now

    for received in client.log:
        event = received.event
        if event["type"] == "response.output_audio.delta" and event["response_id"] == response_id:
            advance(received.at)
            queue.extend(base64.b64decode(event["delta"]))
            max_lead = max(max_lead, len(queue) / bytes_per_second)
        elif event["type"] == "input_audio_buffer.speech_started":
            advance(received.at)
            flushed += len(queue)
            queue.clear()
    played.extend(queue)
    return Playback(bytes(played), max_lead, flushed)


def noise_floor(seconds: float, dbfs: float = -60.0, seed: int = 0, rate: int = WIRE_RATE) -> np.ndarray:
    """A microphone's floor: white noise at `dbfs` (RMS)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * rate)) * 10 ** (dbfs / 20)).astype(np.float32)


@dataclass
class Utterance:
    """Speech handed to a `Microphone`: when its first loud append left, and when it was all sent;
    where it lies on the session's audio clock (`start_ms`, `end_ms`)."""

    samples: np.ndarray
    onset_sent_at: float | None = None
    start_ms: float | None = None
    end_ms: float | None = None
    finished: asyncio.Event = field(default_factory=asyncio.Event)


class Microphone:
    """Streams a noise floor to the server at real-time pace in 100 ms appends, with speech mixed in on
    demand (`say`), until `stop`. Records when speech onsets left the client. `floor_under_speech=False`
    sends speech as it comes instead (its runs of exact zeros kept, as noise gates and echo cancellers
    make them), the floor only between utterances."""

    def __init__(
        self,
        client: RealtimeClient,
        floor_dbfs: float = -60.0,
        seed: int = 0,
        floor_under_speech: bool = True,
    ) -> None:
        self.client = client
        self.floor_dbfs = floor_dbfs
        self.floor_under_speech = floor_under_speech
        self._rng_seed = seed
        self._queue: list[Utterance] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    def say(self, samples: np.ndarray) -> Utterance:
        """Mix 24 kHz float speech into the stream from the next append on."""
        utterance = Utterance(np.asarray(samples, dtype=np.float32))
        self._queue.append(utterance)
        return utterance

    async def __aenter__(self) -> Microphone:
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
        position = 0  # within the utterance being spoken
        seed = self._rng_seed
        while not self._stop.is_set():
            piece = noise_floor(step / WIRE_RATE, self.floor_dbfs, seed)
            seed += 1
            if self._queue:
                utterance = self._queue[0]
                if position == 0:
                    utterance.start_ms = 1000 * sent / WIRE_RATE
                speech = utterance.samples[position : position + step]
                if self.floor_under_speech:
                    piece[: len(speech)] += speech
                else:
                    piece = speech.copy()
                if utterance.onset_sent_at is None and np.abs(speech).max(initial=0.0) > 0.02:
                    utterance.onset_sent_at = time.perf_counter()
                position += step
                if position >= len(utterance.samples):
                    self._queue.pop(0)
                    position = 0
                    utterance.end_ms = 1000 * (sent + len(piece)) / WIRE_RATE
                    utterance.finished.set()
            await self.client.append(pcm16(piece))
            sent += len(piece)
            await asyncio.sleep(max(0.0, started + sent / WIRE_RATE - time.perf_counter()))
