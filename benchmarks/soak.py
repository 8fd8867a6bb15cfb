"""Soak: N concurrent sessions for a set time, with churn and a mix of behaviours; proves nothing leaks.

    python benchmarks/soak.py                                   # 100 sessions, 10 minutes, tiny random model
    python benchmarks/soak.py --sessions 100 --duration 1800 --json soak.json

It starts a real `freeze-omni serve` process on the tiny random model (made on the fly) and runs
`--sessions` virtual users against it. Each user loops until the time is up: open a session, play one
behaviour, end it, open the next. The behaviours, by weight (`--mix`):

- `text`: typed turns answered in text mode (`output_modalities: ["text"]`, so CPU is not the limit);
- `audio`: a typed turn answered with speech, played at real-time pace;
- `spoken`: a spoken question streamed at real-time pace over a -60 dBFS noise floor, server VAD;
- `barge_in`: a spoken question while a spoken answer plays;
- `drop`: a TCP drop mid-answer, without a close frame (a phone that lost its network);
- `resume`: the same drop, then a reconnect within the grace time with the session's resume token and
  the count of messages received: the answer must finish on the new connection (a reconnect that a
  loaded server takes in only after the grace time is refused with `session_not_found`, the session
  "expired": counted apart as `resume:too_late`, documented);
- `slow_reader`: a client with a tiny receive buffer that stops reading mid-answer and goes on sending
  (large assistant items the server echoes, so its outbound fills whatever the answer's pace), then
  reads again and finds `client_too_slow` and close 4000;
- `stuck`: the same, but it never reads again: the server must drop the TCP connection itself once
  its close handshake times out (`FREEZE_OMNI_WS_CLOSE_TIMEOUT_S`);
- `idle`: a session that sends nothing until the server's idle timeout;
- `bad_input`: malformed JSON and an unknown event (each an `error`; the session goes on), then
  oversized messages (closed with 1009).

Microphones never go digitally silent: spoken users and barge-ins stream a noise floor after their
speech until their answer is done, as a real client does.

Every session's end is checked against the close its behaviour documents: client close 1000 after the
last answer (on the resumed connection for `resume`), 1000 after `idle_timeout`, 4000 after `client_too_slow`, 1009 for an oversized message,
none for a drop, a TCP disconnect for a client that never reads; 1013 (server full) is counted apart.
The server keeps its default admission (`FREEZE_OMNI_ADMISSION_MAX_LOAD`): on a busy machine it refuses
sessions that would push it past real time (1013), as it would in production; pass
`--server-env FREEZE_OMNI_ADMISSION_MAX_LOAD=0` to admit up to `--sessions` regardless.
Each ending is reported by category (`endings`); anything a behaviour does not document is
"unexplained", with the events the client saw, unless the server's log explains it: a stall of its
event loop, or an answer that went quiet while the engine still worked on it behind real time (the
server logs such a response with `cause=engine_behind_real_time`: on an overloaded engine, and on the
tiny model whose audio leaves once per text segment, an answer can be silent for 30 s and more; that
is late, not stuck, and is counted apart). At the end, once every session is gone, the server's
/metrics are read against the start (after a warm-up): resident memory, open file descriptors,
asyncio tasks, tasks of live sessions, KV-cache slots in use, and where the server reports them, the
bytes Python objects hold (`FREEZE_OMNI_TRACE_PYTHON_MEMORY`) and what `malloc_trim` gave back
(`FREEZE_OMNI_MALLOC_TRIM_INTERVAL_S`); `--server-env` passes such settings to the server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import websockets
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed
from websockets.frames import Close, Frame, Opcode
from websockets.uri import parse_uri

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WIRE_RATE = 24000
APPEND_S = 0.1
DEFAULT_MIX = (
    "text=36,audio=10,spoken=10,barge_in=8,drop=10,resume=6,slow_reader=5,stuck=2,idle=6,bad_input=10"
)
SERVER_SETTINGS = {  # a soak-sized server: short timeouts so every behaviour ends within seconds
    "FREEZE_OMNI_MAX_ANSWER_TOKENS": "24",
    "FREEZE_OMNI_LLM_MAX_LEN": "1024",
    "FREEZE_OMNI_IDLE_TIMEOUT_S": "8",
    "FREEZE_OMNI_MAX_OUTBOUND_SECONDS": "2",
    "FREEZE_OMNI_WS_SEND_BUFFER_BYTES": "16384",
    "FREEZE_OMNI_WS_PING_INTERVAL_S": "5",
    "FREEZE_OMNI_WS_PING_TIMEOUT_S": "20",
    "FREEZE_OMNI_WS_CLOSE_TIMEOUT_S": "10",
    "FREEZE_OMNI_MAX_MESSAGE_BYTES": "65536",
    # A dropping client never resumes here: its session waits briefly for it, then frees its place.
    "FREEZE_OMNI_RESUME_GRACE_S": "3",
    "FREEZE_OMNI_LOG_LEVEL": "warning",
}
# behaviour -> the close it documents (None: the client drops the connection; "disconnected": the server
# drops it, with no close frame the client could read)
EXPECTED_CLOSE: dict[str, int | str | None] = {
    "text": 1000,
    "audio": 1000,
    "spoken": 1000,
    "barge_in": 1000,
    "drop": None,
    "resume": 1000,
    "slow_reader": 4000,
    "stuck": "disconnected",
    "idle": 1000,
    "bad_input": 1009,
}

# Other documented endings: a resume whose reconnect reached the server after the grace time gets
# `session_not_found` ("expired") and a fresh session, which the client closes (1000).
ALSO_DOCUMENTED: dict[str, tuple[int | str, ...]] = {"resume": ("too_late",)}


# -- audio ---------------------------------------------------------------------------------------------
def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def spoken_question() -> np.ndarray:
    """A question spoken by espeak-ng at 24 kHz; without espeak-ng, a voiced chirp of 1.5 s."""
    espeak = shutil.which("espeak-ng")
    if espeak is not None:
        from app.model.wav import read_wav, resample

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "q.wav"
            subprocess.run(
                [espeak, "-w", str(path), "What is two plus two?"], check=True, capture_output=True
            )
            samples, rate = read_wav(path)
            return resample(samples, rate, WIRE_RATE).astype(np.float32)
    t = np.arange(int(1.5 * WIRE_RATE)) / WIRE_RATE
    return (0.3 * np.sin(2 * np.pi * (140 + 60 * t) * t) * (1 + np.sin(2 * np.pi * 4 * t)) / 2).astype(
        np.float32
    )


def noise(seconds: float, rng: np.random.Generator, dbfs: float = -60.0) -> np.ndarray:
    return (rng.standard_normal(int(seconds * WIRE_RATE)) * 10 ** (dbfs / 20)).astype(np.float32)


# -- one session ------------------------------------------------------------------------------------------
class Unexpected(Exception):
    """A session did not behave as its behaviour documents."""


@dataclass
class Tally:
    """What the soak saw."""

    sessions: Counter = field(default_factory=Counter)  # behaviour -> sessions played
    closes: Counter = field(default_factory=Counter)  # "behaviour:code" -> count
    errors: Counter = field(default_factory=Counter)  # error code -> count
    unexpected: Counter = field(default_factory=Counter)  # behaviour:what -> count
    responses: Counter = field(default_factory=Counter)  # response.done status -> count
    examples: list[str] = field(default_factory=list)
    # Endings off the documented path while the soak's own process was stalled (see `LoopLag`): the
    # client could not keep its side (answer pings, read a close, send within the idle timeout).
    client_stalled: Counter = field(default_factory=Counter)
    stalled_examples: list[str] = field(default_factory=list)
    # Other endings off the path, judged at the end against the server's own stalls (its log):
    # (behaviour, what, detail, wall-clock start, wall-clock end)
    off_path: list[tuple[str, str, str, float, float]] = field(default_factory=list)


class LoopLag:
    """How late this process's event loop ran: a machine too busy for the soak's own client shows here."""

    STALL_S = 2.0  # a wake-up this late counts as a stall of the client

    def __init__(self) -> None:
        self.stalls: list[tuple[float, float]] = []  # (when it ended, seconds late)
        self.worst_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.1)
            late = time.monotonic() - before - 0.1
            self.worst_s = max(self.worst_s, late)
            if late >= self.STALL_S:
                self.stalls.append((time.monotonic(), late))

    def worst_between(self, start: float, end: float) -> float:
        """The longest stall that overlapped [start, end] (0 if none)."""
        return max((late for at, late in self.stalls if at >= start and at - late <= end), default=0.0)


class Session:
    """A websockets connection plus the bookkeeping of the events it received."""

    def __init__(self, ws: Any, tally: Tally) -> None:
        self.ws = ws
        self.tally = tally
        self.types: list[str] = []
        self.created: dict[str, Any] = {}
        self.response_id: str | None = None  # the latest response.created (the server logs it by id)

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self, timeout: float) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        self.types.append(event["type"])
        if event["type"] == "error":
            self.tally.errors[event["error"].get("code") or "none"] += 1
        if event["type"] == "response.done":
            self.tally.responses[event["response"]["status"]] += 1
        if event["type"] == "response.created":
            self.response_id = event["response"]["id"]
        return event

    async def wait_for(
        self, event_type: str, timeout: float = 120.0, quiet: float | None = None
    ) -> dict[str, Any]:
        """The next event of `event_type`, within `timeout`; with `quiet`, once the answer has begun (a
        delta arrived), `quiet` s without any event is stuck: an answer still arriving, or not begun yet
        on a loaded server, is waited for up to `timeout` (late is not stuck)."""
        started = time.monotonic()
        deadline = started + timeout
        begun = False
        while True:
            left = deadline - time.monotonic()
            if quiet is not None and begun:
                left = min(left, quiet)
            if left <= 0:
                raise Unexpected(f"no {event_type} within {timeout:g} s; last events: {self.types[-8:]}")
            try:
                event = await self.next(left)
            except TimeoutError:
                waited = time.monotonic() - started
                raise Unexpected(
                    f"no {event_type} after {waited:.0f} s (nothing for {left:.0f} s) in response "
                    f"{self.response_id}; last events: {self.types[-8:]}"
                ) from None
            begun = begun or event["type"].endswith(".delta")
            if event["type"] == event_type:
                return event

    async def wait_closed(self, timeout: float = 30.0) -> int | None:
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                await self.next(max(0.01, deadline - time.monotonic()))
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        raise Unexpected("the server did not close the session")

    async def text_turn(self, text: str, text_mode: bool) -> dict[str, Any]:
        if text_mode:
            await self.send({"type": "session.update", "session": {"output_modalities": ["text"]}})
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        await self.send({"type": "conversation.item.create", "item": item})
        await self.send({"type": "response.create"})
        return await self.wait_for("response.done", timeout=240, quiet=30)

    async def stream(self, samples: np.ndarray) -> None:
        """Send audio in 100 ms appends at real-time pace."""
        step = int(APPEND_S * WIRE_RATE)
        started = time.monotonic()
        for index, offset in enumerate(range(0, len(samples), step)):
            piece = pcm16(samples[offset : offset + step])
            await self.send({"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()})
            await asyncio.sleep(max(0.0, started + (index + 1) * APPEND_S - time.monotonic()))

    async def close(self) -> int | None:
        await self.ws.close(1000)
        return self.ws.close_code


class RawClient:
    """A WebSocket client that reads only when told to: websockets' sans-I/O protocol over a socket
    with a tiny receive buffer (the kernel takes little before the server's sends block)."""

    FLOOD_ITEM = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "x" * 8000}],
    }

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, url: str, tally: Tally):
        self.reader = reader
        self.writer = writer
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.tally = tally
        self.types: list[str] = []
        self.close_code: int | None = None

    @classmethod
    async def open(cls, host: str, port: int, url: str, tally: Tally) -> RawClient:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=2048)
        client = cls(reader, writer, url, tally)
        client.protocol.send_request(client.protocol.connect())
        await client.flush()
        while "session.created" not in client.types:
            if not await client.receive(30):
                if client.close_code == 1013:
                    client.writer.close()
                    raise ConnectionRefusedError("server full")
                raise Unexpected(f"closed before session.created ({client.close_code})")
        return client

    async def flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), 10)

    async def receive(self, timeout: float) -> bool:
        """Read what arrives within `timeout`; False once the connection has ended."""
        data = await asyncio.wait_for(self.reader.read(65536), timeout)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                message = json.loads(event.data)
                self.types.append(message["type"])
                if message["type"] == "error":
                    self.tally.errors[message["error"].get("code") or "none"] += 1
            elif isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                self.close_code = Close.parse(event.data).code
        if data:
            await self.flush()
        return bool(data)

    async def send(self, event: dict[str, Any]) -> None:
        self.protocol.send_text(json.dumps(event).encode())
        await self.flush()

    async def start_answer_then_flood(self, seconds: float) -> bool:
        """Ask for a spoken answer, wait for its first audio, then read nothing for `seconds` while
        sending items the server echoes. True if the server dropped the connection meanwhile."""
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a story."}],
        }
        await self.send({"type": "conversation.item.create", "item": item})
        await self.send({"type": "response.create"})
        while "response.output_audio.delta" not in self.types:
            if not await self.receive(30):
                raise Unexpected("closed before the answer began")
        stop_at = time.monotonic() + seconds
        try:
            while time.monotonic() < stop_at:
                await self.send({"type": "conversation.item.create", "item": self.FLOOD_ITEM})
                await asyncio.sleep(0.25)
                if self.writer.transport.is_closing():
                    return True
        except (ConnectionError, TimeoutError):
            return True  # reset by the server (a send that no longer goes out times out)
        return False


class Soak:
    def __init__(self, args: argparse.Namespace, url: str, question: np.ndarray) -> None:
        self.args = args
        self.url = url
        self.question = question
        self.tally = Tally()
        self.lag = LoopLag()
        mix = dict(part.split("=") for part in args.mix.split(","))
        self.behaviours = list(mix)
        self.weights = [float(w) for w in mix.values()]
        server_env = {**SERVER_SETTINGS, **dict(pair.split("=", 1) for pair in args.server_env)}
        self.resume_grace_s = float(server_env["FREEZE_OMNI_RESUME_GRACE_S"])

    async def connect(self, **extra: Any) -> Session:
        ws = await websockets.connect(self.url, proxy=None, max_size=None, open_timeout=30, **extra)
        session = Session(ws, self.tally)
        first = await session.next(30)
        if first["type"] == "error" and first["error"].get("code") == "capacity_exceeded":
            raise ConnectionRefusedError("server full")
        if first["type"] != "session.created":
            raise Unexpected(f"first event {first['type']}")
        session.created = first
        return session

    async def user(self, index: int, deadline: float) -> None:
        rng = random.Random(index)
        await asyncio.sleep(rng.uniform(0, min(5.0, self.args.duration / 10)))  # stagger the start
        while time.monotonic() < deadline:
            behaviour = rng.choices(self.behaviours, self.weights)[0]
            await self.play(behaviour, rng)

    async def play(self, behaviour: str, rng: random.Random) -> None:
        tally = self.tally
        tally.sessions[behaviour] += 1
        started = time.monotonic()
        started_wall = time.time()
        try:
            code = await asyncio.wait_for(getattr(self, f"_{behaviour}")(rng), timeout=300)
        except ConnectionRefusedError:
            tally.closes[f"{behaviour}:1013"] += 1
            await asyncio.sleep(1.0)
            return
        except (Unexpected, ConnectionClosed, TimeoutError, OSError) as error:
            what = type(error).__name__
            if isinstance(error, ConnectionClosed):
                what = f"closed {error.rcvd.code if error.rcvd else 'without a close frame'}"
            self.off_path(behaviour, what, repr(error), started, started_wall)
            return
        tally.closes[f"{behaviour}:{code}"] += 1
        if code != EXPECTED_CLOSE[behaviour] and code not in ALSO_DOCUMENTED.get(behaviour, ()):
            self.off_path(behaviour, f"close {code}", f"close {code}", started, started_wall)

    def off_path(self, behaviour: str, what: str, detail: str, started: float, started_wall: float) -> None:
        """Note an ending its behaviour does not document: during a stall of this client, or to be judged
        against the server's stalls at the end (see `judge_off_path`)."""
        tally = self.tally
        stall = self.lag.worst_between(started, time.monotonic())
        if stall > 0:
            tally.client_stalled[f"{behaviour}: {what}"] += 1
            if len(tally.stalled_examples) < 10:
                tally.stalled_examples.append(f"{behaviour} (client stalled {stall:.1f} s): {detail}"[:500])
            return
        tally.unexpected[f"{behaviour}: {what}"] += 1  # until judged
        tally.off_path.append((behaviour, what, detail, started_wall, time.time()))

    # -- behaviours: each returns the close code the client saw (None: no close frame) --------------------
    async def _text(self, rng: random.Random) -> int | None:
        session = await self.connect()
        for _ in range(rng.randint(1, 3)):
            await session.text_turn(rng.choice(["Hello.", "What is two plus two?", "Tell me a story."]), True)
        return await session.close()

    async def _audio(self, rng: random.Random) -> int | None:
        session = await self.connect()
        await session.text_turn("What color is the sky?", False)
        return await session.close()

    async def _spoken(self, rng: random.Random) -> int | None:
        session = await self.connect()
        np_rng = np.random.default_rng(rng.randint(0, 2**31))
        audio = np.concatenate(
            [noise(0.5, np_rng), self.question + noise(len(self.question) / WIRE_RATE, np_rng)]
        )
        sender = asyncio.create_task(session.stream(np.concatenate([audio, noise(20.0, np_rng)])))
        try:
            # The random state head may answer, ignore or wait for the VAD: an answer is likely, not sure.
            with contextlib.suppress(Unexpected):
                await session.wait_for("response.done", timeout=30)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
        return await session.close()

    async def _barge_in(self, rng: random.Random) -> int | None:
        session = await self.connect()
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Tell me a story."}],
        }
        await session.send({"type": "conversation.item.create", "item": item})
        await session.send({"type": "response.create"})
        await session.wait_for("response.output_audio.delta")
        np_rng = np.random.default_rng(rng.randint(0, 2**31))
        speech = self.question + noise(len(self.question) / WIRE_RATE, np_rng)
        # A microphone stays on after the interruption: noise until the answer is done (cancelled or not).
        sender = asyncio.create_task(session.stream(np.concatenate([speech, noise(60.0, np_rng)])))
        try:
            await session.wait_for("response.done", timeout=240, quiet=30)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await sender
        return await session.close()

    async def _drop(self, rng: random.Random) -> int | None:
        session = await self.connect()
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello."}]}
        await session.send({"type": "conversation.item.create", "item": item})
        await session.send({"type": "response.create"})
        await session.wait_for("response.output_audio.delta")
        session.ws.transport.abort()  # no close frame: the TCP connection just goes
        return None

    async def _resume(self, rng: random.Random) -> int | None:
        session = await self.connect()
        token = session.created["freeze_omni"]["resume_token"]
        item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello."}]}
        await session.send({"type": "conversation.item.create", "item": item})
        await session.send({"type": "response.create"})
        await session.wait_for("response.output_audio.delta")
        received = len(session.types) - 1  # every message but session.created
        session.ws.transport.abort()
        dropped_at = time.monotonic()
        await asyncio.sleep(rng.uniform(0.1, 1.0))
        url = f"{self.url}?resume={token}&received={received}"
        back = Session(await websockets.connect(url, proxy=None, max_size=None, open_timeout=30), self.tally)
        try:
            first = await back.next(30)
            if first["type"] != "session.created":
                raise Unexpected(f"the resume got {first['type']} first")
            if not first.get("freeze_omni", {}).get("resumed"):
                return await self._refused_resume(back, time.monotonic() - dropped_at)
            await back.wait_for("response.done", timeout=60)
        finally:
            await back.close()
        return back.ws.close_code

    async def _refused_resume(self, back: Session, since_drop_s: float) -> str:
        """A resume that got a fresh session: documented ("too_late") when the server says the session
        expired (its grace time ran out before the reconnect reached it, which a loaded server's slow
        handshake can cause) and the drop was at least the grace time ago; anything else is a server bug."""
        error = (await back.wait_for("error", timeout=30))["error"]
        if (
            error.get("code") == "session_not_found"
            and "the session expired" in error.get("message", "")
            and since_drop_s >= self.resume_grace_s
        ):
            return "too_late"
        raise Unexpected(
            f"the resume was refused {since_drop_s:.1f} s after the drop (grace {self.resume_grace_s:g} s): "
            f"{error.get('code')}: {error.get('message')}"
        )

    async def _slow_reader(self, rng: random.Random) -> int | str | None:
        """A client whose reader hangs while its sender goes on: it reads nothing at all from its socket
        while an answer plays and it keeps sending items the server echoes (so the server's outbound
        fills whatever the answer's pace), then reads again and must find `client_too_slow` and 4000."""
        client = await RawClient.open(self.args.host, self.args.port, self.url, self.tally)
        try:
            await client.start_answer_then_flood(
                float(SERVER_SETTINGS["FREEZE_OMNI_MAX_OUTBOUND_SECONDS"]) + 6.0
            )
            # Read again, before the server's close handshake times out.
            deadline = time.monotonic() + 30
            while client.close_code is None and time.monotonic() < deadline:
                if not await client.receive(max(0.01, deadline - time.monotonic())):
                    break
        except TimeoutError:
            raise Unexpected(f"no close within 30 s; events seen: {client.types[-6:]}") from None
        finally:
            client.writer.close()
        if client.close_code == 4000 and "error" not in client.types:
            raise Unexpected("closed 4000 without the client_too_slow error")
        return client.close_code

    async def _stuck(self, rng: random.Random) -> int | str | None:
        """Like `slow_reader`, but it never reads again: the server must drop the connection itself."""
        client = await RawClient.open(self.args.host, self.args.port, self.url, self.tally)
        limit = (
            float(SERVER_SETTINGS["FREEZE_OMNI_MAX_OUTBOUND_SECONDS"])
            + float(SERVER_SETTINGS["FREEZE_OMNI_WS_CLOSE_TIMEOUT_S"])
            + 30.0
        )
        try:
            if await client.start_answer_then_flood(limit):
                return "disconnected"
        finally:
            client.writer.close()
        raise Unexpected(f"the server still held a client that reads nothing after {limit:g} s")

    async def _idle(self, rng: random.Random) -> int | None:
        session = await self.connect()
        code = await session.wait_closed(timeout=float(SERVER_SETTINGS["FREEZE_OMNI_IDLE_TIMEOUT_S"]) + 10)
        if session.types[-1:] != ["error"]:
            raise Unexpected("idle close without the idle_timeout error")
        return code

    async def _bad_input(self, rng: random.Random) -> int | None:
        session = await self.connect()
        await session.ws.send("{not json")
        await session.wait_for("error")
        await session.send({"type": "no.such.event"})
        await session.wait_for("error")
        await session.text_turn("Hello.", True)  # the session goes on
        await session.ws.send("x" * (int(SERVER_SETTINGS["FREEZE_OMNI_MAX_MESSAGE_BYTES"]) + 1))
        return await session.wait_closed()


# -- the server and its figures ------------------------------------------------------------------------------
def metrics(base: str) -> dict[str, float]:
    for attempt in range(3):  # a saturated server may answer late
        try:
            with urllib.request.urlopen(f"{base}/metrics", timeout=30) as response:
                text = response.read().decode()
            break
        except OSError:
            if attempt == 2:
                raise
            time.sleep(1.0)
    figures = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            figures[name] = float(value)
    return figures


def megabytes(figures: dict[str, float], name: str) -> float | None:
    value = figures.get(f"freeze_omni_{name}")
    return None if value is None else round(value / 2**20, 1)


def ready(base: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"{base}/readyz", timeout=5) as response:
            return json.loads(response.read())
    except OSError:
        return None


def start_server(args: argparse.Namespace, workdir: Path) -> subprocess.Popen:
    from app.model.fixtures.tiny import make_tiny

    paths = make_tiny(workdir / "tiny")
    env = {
        **os.environ,
        **SERVER_SETTINGS,
        "PYTHONPATH": str(ROOT),
        "FREEZE_OMNI_MAX_SESSIONS": str(args.sessions + 8),
        **dict(pair.split("=", 1) for pair in args.server_env),
    }
    command = [
        sys.executable, "-m", "app.cli", "serve", "--host", args.host, "--port", str(args.port),
        "--model-path", str(paths.model_path), "--llm-path", str(paths.llm_path),
    ]  # fmt: skip
    log = (workdir / "server.log").open("w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.monotonic() + 120
    base = f"http://{args.host}:{args.port}"
    while (state := ready(base)) is None or state.get("status") != "ready":
        if process.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the server did not start; see {workdir / 'server.log'}")
        time.sleep(0.2)
    return process


LEAK_FIGURES = {
    "process_resident_bytes": "resident memory (MB)",
    "process_open_fds": "open file descriptors",
    "asyncio_tasks": "asyncio tasks",
    "session_tasks": "tasks of live sessions",
    "websocket_sessions": "live WebSocket sessions",
    "engine_sessions": "engine sessions",
    "llm_cache_slots_in_use": "LLM cache slots in use",
    "decoder_cache_slots_in_use": "speech decoder cache slots in use",
    "malloc_in_use_bytes": "held from malloc by the program (MB)",
    "malloc_free_bytes": "kept free by malloc (MB)",
    "python_traced_bytes": "Python-held memory, tracemalloc (MB)",
    "malloc_trim_released_bytes": "given back by malloc_trim (MB)",
    "idle_gc_collected_objects": "garbage objects collected when idle",
    "idle_gc_last_seconds": "last idle collection took (ms)",
}


async def settle(
    base: str, timeout: float, closing_s: float, open_fds: float | None = None
) -> dict[str, float]:
    """Wait until the server holds no session (drops are found by ping/pong), then until its open file
    descriptors are back to `open_fds`, at most `closing_s` more (connections it has let go of may still
    be in their close handshake), then read /metrics."""
    deadline = time.monotonic() + timeout
    while True:
        figures = metrics(base)
        if (
            figures.get("freeze_omni_websocket_sessions", 0) == 0
            and figures.get("freeze_omni_engine_sessions", 0) == 0
        ):
            break
        if time.monotonic() > deadline:
            return figures
        await asyncio.sleep(0.5)
    closed_by = min(time.monotonic() + closing_s, deadline)
    while time.monotonic() < closed_by:
        if open_fds is not None and figures.get("freeze_omni_process_open_fds", 0) <= open_fds:
            break
        await asyncio.sleep(0.5)
        figures = metrics(base)
    return metrics(base)


async def soak(args: argparse.Namespace, base: str) -> dict[str, Any]:
    url = f"ws://{args.host}:{args.port}/v1/realtime"
    runner = Soak(args, url, spoken_question())
    lag_monitor = asyncio.create_task(runner.lag.run())
    # Warm-up: the same load for `--warm-up` seconds, so the start figures include what the first uses
    # of every batch shape allocate (allocator pools, kernel caches); what grows after it is what leaks.
    closing_s = float(SERVER_SETTINGS["FREEZE_OMNI_WS_CLOSE_TIMEOUT_S"]) + 1.0
    if args.warm_up > 0:
        warm_deadline = time.monotonic() + args.warm_up
        await asyncio.gather(*(runner.user(-1 - i, warm_deadline) for i in range(args.sessions)))
    start = await settle(base, 60, closing_s if args.warm_up > 0 else 0.0)
    warm_tally, runner.tally = runner.tally, Tally()
    started = time.monotonic()
    deadline = started + args.duration
    # (s, RSS MB, Python MB, trimmed MB, MB held from malloc, MB malloc keeps free)
    timeline: list[tuple[float, float, float | None, float | None, float | None, float | None]] = []

    async def sample() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(min(args.sample_every, max(0.0, deadline - time.monotonic())))
            now = await asyncio.to_thread(metrics, base)

            rss, python, trimmed = (
                megabytes(now, "process_resident_bytes"),
                megabytes(now, "python_traced_bytes"),
                megabytes(now, "malloc_trim_released_bytes"),
            )
            in_use, kept_free = megabytes(now, "malloc_in_use_bytes"), megabytes(now, "malloc_free_bytes")
            timeline.append((round(time.monotonic() - started), rss, python, trimmed, in_use, kept_free))
            extra = "" if python is None else f", Python-held {python} MB"
            extra += "" if in_use is None else f", held from malloc {in_use} MB, kept free {kept_free} MB"
            extra += "" if trimmed is None else f", malloc_trim gave back {trimmed} MB so far"
            print(
                f"  {timeline[-1][0]:>6} s: {sum(runner.tally.sessions.values())} sessions, "
                f"server RSS {rss} MB{extra}, off the path (not yet judged) {dict(runner.tally.unexpected)}",
                flush=True,
            )

    await asyncio.gather(sample(), *(runner.user(i, deadline) for i in range(args.sessions)))
    elapsed = time.monotonic() - started
    end = await settle(base, 60, closing_s, start.get("freeze_omni_process_open_fds"))
    lag_monitor.cancel()
    tally = runner.tally
    figures = {}
    for key, label in LEAK_FIGURES.items():
        before, after = start.get(f"freeze_omni_{key}"), end.get(f"freeze_omni_{key}")
        if before is None or after is None:
            continue
        scale = 1 / 2**20 if key.endswith("_bytes") else 1e3 if key.endswith("_seconds") else 1
        figures[label] = {"start": before * scale, "end": after * scale, "growth": (after - before) * scale}
    return {
        "sessions_concurrent": args.sessions,
        "duration_s": round(elapsed, 1),
        "sessions_served": sum(tally.sessions.values()),
        "sessions_by_behaviour": dict(tally.sessions),
        "closes": dict(sorted(tally.closes.items())),
        "unexpected": dict(tally.unexpected),
        "unexpected_examples": tally.examples,
        "off_path": tally.off_path,
        "client_stalled": dict(tally.client_stalled),
        "client_stalled_examples": tally.stalled_examples,
        "client_stalls_over_2s": len([1 for at, _ in runner.lag.stalls if at >= started]),
        "client_worst_stall_s": round(
            max((late for at, late in runner.lag.stalls if at >= started), default=0.0), 1
        ),
        "client_errors_by_code": dict(tally.errors),
        "responses_by_status": dict(tally.responses),
        "server_errors_by_code": {k: v for k, v in end.items() if k.startswith("freeze_omni_errors_total")},
        "warm_up_unexpected": dict(warm_tally.unexpected),
        "server_env": args.server_env,
        "leaks": figures,
        "resident_mb_timeline": timeline,
    }


SERVER_STALL = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) WARNING app\.loop_watch: event loop stalled for ([\d.]+) s",
    re.MULTILINE,
)


RESPONSE_STALL = re.compile(r"response (resp_\w+) sent nothing for [\d.]+ s \(cause=(\w+)\)")
RESPONSE_IN_DETAIL = re.compile(r"in response (resp_\w+)")
# What the server says held a quiet response (see `RealtimeSession._log_stalled_response`) that explains
# the client's wait: the engine still working on it behind real time (an overloaded engine: on the tiny
# model a segment's audio leaves in one piece at its end, so a slow engine leaves long gaps), or a pause
# for the user's interruption that the engine has not yet decided on.
# An answer paused by the user's speech stays silent until the engine has heard that turn (on an engine
# behind real time, long after the speech): documented, and late, not stuck.
EXPLAINED_STALLS = {"engine_behind_real_time", "paused_by_interruption"}


def judge_off_path(result: dict[str, Any], off_path: list[tuple], server_log: str) -> None:
    """Endings off the documented path that overlap a stall of the server's event loop of at least
    `LoopLag.STALL_S` (the server could not keep its side), or whose response the server logged as
    waiting on an engine running behind real time, are counted apart; the rest are unexplained."""
    stalls = [
        (time.mktime(time.strptime(m[1], "%Y-%m-%d %H:%M:%S")) + int(m[2]) / 1000, float(m[3]))
        for m in SERVER_STALL.finditer(server_log)
    ]
    causes = {m[1]: m[2] for m in RESPONSE_STALL.finditer(server_log)}
    result["server_stalls_over_2s"] = sum(1 for _, late in stalls if late >= LoopLag.STALL_S)
    result["server_worst_stall_s"] = max((late for _, late in stalls), default=0.0)
    result["server_quiet_responses_by_cause"] = dict(Counter(causes.values()))
    unexplained: Counter = Counter()
    server_stalled: Counter = Counter()
    overloaded: Counter = Counter()
    examples, stalled_examples, overloaded_examples = [], [], []
    for behaviour, what, detail, start, end in off_path:
        worst = max(
            (late for at, late in stalls if late >= LoopLag.STALL_S and at >= start and at - late <= end),
            default=0.0,
        )
        response = RESPONSE_IN_DETAIL.search(detail)
        cause = causes.get(response[1]) if response else None
        if cause in EXPLAINED_STALLS:
            overloaded[f"{behaviour}: {what}"] += 1
            if len(overloaded_examples) < 5:
                overloaded_examples.append(f"{behaviour} (server: {cause}): {detail}"[:500])
        elif worst > 0:
            server_stalled[f"{behaviour}: {what}"] += 1
            if len(stalled_examples) < 10:
                stalled_examples.append(f"{behaviour} (server stalled {worst:.1f} s): {detail}"[:500])
        else:
            unexplained[f"{behaviour}: {what}"] += 1
            if unexplained[f"{behaviour}: {what}"] <= 3:  # a few of each kind
                examples.append(f"{behaviour}: {detail}"[:500])
    result["unexpected"] = dict(unexplained)
    result["unexpected_examples"] = examples
    result["server_stalled"] = dict(server_stalled)
    result["server_stalled_examples"] = stalled_examples
    result["engine_behind"] = dict(overloaded)
    result["engine_behind_examples"] = overloaded_examples


def report(result: dict[str, Any]) -> None:
    print(f"\nsoak: {result['sessions_concurrent']} concurrent users for {result['duration_s']} s")
    print(f"sessions served: {result['sessions_served']}  {result['sessions_by_behaviour']}")
    print("endings (behaviour:close code; None: the client dropped; disconnected: the server dropped):")
    for key, count in result["closes"].items():
        print(f"  {key:<24} {count}")
    print(f"responses: {result['responses_by_status']}")
    print(f"errors received, by code: {dict(sorted(result['client_errors_by_code'].items()))}")
    print(f"unexplained endings: {sum(result['unexpected'].values())} {result['unexpected']}")
    for example in result["unexpected_examples"][:30]:
        print(f"  e.g. {example}")
    stalled = result["client_stalled"]
    print(
        f"off the documented path while the soak's own client was stalled (>= {LoopLag.STALL_S:g} s; "
        f"{result['client_stalls_over_2s']} stalls, worst {result['client_worst_stall_s']} s): "
        f"{sum(stalled.values())} {stalled}"
    )
    for example in result["client_stalled_examples"][:5]:
        print(f"  e.g. {example}")
    server_stalled = result.get("server_stalled", {})
    print(
        f"off the documented path while the server's event loop was stalled (>= {LoopLag.STALL_S:g} s; "
        f"{result.get('server_stalls_over_2s', 0)} stalls, worst {result.get('server_worst_stall_s', 0):.1f} s): "
        f"{sum(server_stalled.values())} {server_stalled}"
    )
    for example in result.get("server_stalled_examples", [])[:5]:
        print(f"  e.g. {example}")
    behind = result.get("engine_behind", {})
    print(
        "off the documented path while the server's engine ran behind real time on that answer (its log, "
        f"cause=engine_behind_real_time: late, not stuck): {sum(behind.values())} {behind}"
    )
    for example in result.get("engine_behind_examples", [])[:5]:
        print(f"  e.g. {example}")
    print(f"server's quiet-response log lines by cause: {result.get('server_quiet_responses_by_cause', {})}")
    print("after the last close, against the start (after warm-up):")
    print(f"  {'figure':<36}{'start':>12}{'end':>12}{'growth':>12}")
    for label, f in result["leaks"].items():
        print(f"  {label:<36}{f['start']:>12.1f}{f['end']:>12.1f}{f['growth']:>+12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100, help="concurrent virtual users (default 100)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--mix", default=DEFAULT_MIX, help=f"behaviour=weight,... (default {DEFAULT_MIX})")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--warm-up", type=float, default=60, help="seconds of load before the start figures")
    parser.add_argument("--sample-every", type=float, default=60, help="seconds between progress lines")
    parser.add_argument("--server-log", type=Path, help="keep the server's log here")
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the server (repeatable), e.g. FREEZE_OMNI_MALLOC_TRIM_INTERVAL_S=60, "
        "FREEZE_OMNI_TRACE_PYTHON_MEMORY=true, MALLOC_ARENA_MAX=2",
    )
    args = parser.parse_args()
    if args.port == 0:
        with socket.socket() as sock:
            sock.bind((args.host, 0))
            args.port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        server = start_server(args, workdir)
        try:
            result = asyncio.run(soak(args, f"http://{args.host}:{args.port}"))
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
            result_log = (workdir / "server.log").read_text()
            if args.server_log:
                args.server_log.write_text(result_log)
        result["server_exit_code"] = server.returncode
        result["server_log_tracebacks"] = result_log.count("Traceback")
        judge_off_path(result, result.pop("off_path"), result_log)
    report(result)
    print(
        f"server exit code {result['server_exit_code']}, tracebacks in its log: {result['server_log_tracebacks']}"
    )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
