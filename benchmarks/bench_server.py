"""Server capacity and overhead: N real-time WebSocket conversations against `/v1/realtime`.

    python benchmarks/bench_server.py                                  # starts a server (tiny model, CPU)
    python benchmarks/bench_server.py --sessions 1,2,4,8,16 --turns 3
    python benchmarks/bench_server.py --url ws://host:8000/v1/realtime --api-key K   # a running server

Every session is a client with a microphone: it streams 24 kHz pcm16 appends of 100 ms at real-time
pace, all the time (a noise floor between questions, `--floor-dbfs`, as a live microphone has), speaks
a question, lets server VAD end the turn, plays the answer as it comes and cancels it after
`--answer-seconds`, then pauses and asks again. With `--interrupt-after S` it also speaks into each
answer after S seconds of its audio: the interruption-to-silence time is from that speech's first
append to the last audio delta of the answer before the server's `speech_started` (the pause).
Phantom turns are `speech_started` events whose audio holds no speech the client sent. The server's overhead is the client's first-audio latency minus the one the
server's own engine reports on /metrics, for the very same answers. For each N the same conversations
also run straight on an `Engine` in this process (no server, no sockets; the question, silence until
`--vad-silence-ms` after its last sound, then the commit), as benchmarks/bench_engine.py does, side by
side in one run. See benchmarks/README.md ("bench_server.py") for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.config import Settings  # noqa: E402
from app.engine.engine import Engine  # noqa: E402
from app.engine.events import AudioDelta  # noqa: E402
from app.model import CHUNK_SAMPLES  # noqa: E402
from app.model.wav import read_wav, resample  # noqa: E402
from benchmarks.wire_formats import FORMATS, opus_codec_cost, print_formats, run_format  # noqa: E402

WIRE_RATE = 24000
MODEL_RATE = 16000
APPEND_S = 0.1
CHUNK_S = CHUNK_SAMPLES / MODEL_RATE
QUESTIONS = [
    "What is two plus two?",
    "Hello, how are you today?",
    "What colour is the sky?",
    "What day comes after Monday?",
    "What can you do for me?",
    "Tell me about the weather.",
    "Good morning, nice to meet you.",
    "Is it going to rain today?",
]
HEAD_BIAS_ROW = {"listen": 0, "answer": 1, "ignore": 2}
QUIET = 0.01  # below this a sample counts as silence (espeak-ng's pauses are near-digital silence)


# -- questions ---------------------------------------------------------------------------------------
def spoken_questions() -> list[np.ndarray]:
    """The questions spoken by espeak-ng, float32 at 24 kHz (two voices, so lengths differ)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is needed for spoken questions: apt-get install -y espeak-ng")
    questions = []
    with tempfile.TemporaryDirectory() as folder:
        for index, text in enumerate(QUESTIONS):
            path = Path(folder) / f"q{index}.wav"
            speed, pitch = (150, 40) if index % 2 == 0 else (180, 70)
            subprocess.run(
                [espeak, "-s", str(speed), "-p", str(pitch), "-w", str(path), text],
                check=True,
                capture_output=True,
            )
            samples, rate = read_wav(path)
            questions.append(resample(samples, rate, WIRE_RATE))
    return questions


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()


# -- results -------------------------------------------------------------------------------------------
@dataclass
class Turn:
    """One question and its answer, as the client saw them (seconds on the client's clock)."""

    question_s: float
    status: str = "asked"  # completed, capped, no answer, failed, cancelled, ...
    speech_end_at: float | None = None  # the question's last audio left the microphone
    turn_end_at: float | None = None  # server: speech_stopped arrived; engine: the commit
    first_audio_at: float | None = None
    audio_s: float = 0.0
    worst_stall_s: float | None = None  # how long the player had sat silent when audio came, at worst
    vad_lag_s: float | None = None  # speech_stopped arrival - when the audio it ends at was sent
    interrupt_to_silence_s: float | None = None  # onset of speech into the answer -> its last audio
    interrupt_unpaused: bool = False  # spoke into the answer, and it did not pause

    underruns: int = 0  # times a player with a `--cushion-ms` buffer had run dry when audio came

    _play_from: float | None = None  # when the player (re)started
    _played_since: float = 0.0  # audio received since then
    _cushion_from: float | None = None  # the cushioned player: when it last (re)primed
    _cushion_played: float = 0.0

    def heard(self, at: float, seconds: float, playout_s: float, cushion_s: float = 0.1) -> None:
        """Audio arrived: a player that starts `playout_s` after the first audio has played out what came
        before it, and sat silent for whatever time is left over (negative: audio still queued).

        A second player, as clients build them, starts `cushion_s` after audio comes; each time it has
        played out everything when the next audio arrives is an underrun, and it primes again."""
        if self._cushion_from is None or at > self._cushion_from + cushion_s + self._cushion_played:
            if self._cushion_from is not None:
                self.underruns += 1
            self._cushion_from, self._cushion_played = at, 0.0
        self._cushion_played += seconds
        if self.first_audio_at is None:
            self.first_audio_at = at
        if self._play_from is None:
            self._play_from, self._played_since = at, 0.0
        stall = at - (self._play_from + playout_s) - self._played_since
        self.worst_stall_s = stall if self.worst_stall_s is None else max(self.worst_stall_s, stall)
        self.audio_s += seconds
        self._played_since += seconds

    def flushed(self) -> None:
        """The player flushed on speech_started (a pause): it starts again with the next audio."""
        self._play_from = None
        self._cushion_from = None


@dataclass
class Run:
    """N sessions on one path."""

    path: str  # "server" or "engine"
    sessions: int
    turns: list[Turn] = field(default_factory=list)
    phantom_turns: int = 0  # speech_started with no speech sent in its audio
    refused: int = 0  # sessions the server refused (capacity_exceeded, then 1013)
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    client_cpu: float | None = None  # CPU seconds of this process per wall second (engine path: all of it)
    server_cpu: float | None = None  # the same for the server's process, when it is ours
    engine_in_server_s: float | None = None  # the server's engine: answer start -> first audio, mean
    step_s: float | None = None  # mean time of one engine step

    def latencies(self, since: str) -> list[float]:
        return [
            t.first_audio_at - getattr(t, since)
            for t in self.turns
            if t.first_audio_at is not None and getattr(t, since) is not None
        ]

    def problems(self, audio_slack: float) -> list[str]:
        found = list(self.errors)
        for turn in self.turns:
            if turn.status not in ("completed", "capped"):
                found.append(f"answer {turn.status}")
            elif turn.worst_stall_s is not None and turn.worst_stall_s > audio_slack:
                found.append("the player ran dry")
        return sorted(set(found))


# -- the server path -------------------------------------------------------------------------------------
class Microphone:
    """Sends 100 ms appends on a fixed real-time schedule: queued speech over the room's floor, else the
    floor alone (white noise at `floor_dbfs`; None: digital silence). Each append is 100 ms of the
    session's input clock, so the client knows where on that clock it put speech."""

    def __init__(
        self, ws: Any, floor_dbfs: float | None, seed: int, floor_under_speech: bool = False
    ) -> None:
        self.ws = ws
        self.floor_under_speech = floor_under_speech
        self.pending = bytearray()
        self.queued = 0  # bytes of speech ever queued
        self.sent = 0  # bytes of speech ever sent
        self.send_times: list[float] = []  # when each append left
        self.waiters: list[tuple[int, asyncio.Future[float]]] = []
        self.onset_waiters: list[tuple[int, asyncio.Future[float]]] = []
        self.speech_spans: list[list[float]] = []  # [start_ms, end_ms] of speech on the input clock
        self.started_at = 0.0
        self.appends = 0
        step = int(WIRE_RATE * APPEND_S)
        if floor_dbfs is None:
            self.floor = np.zeros(step * 50, dtype=np.int16)
        else:
            noise = np.random.default_rng(seed).standard_normal(step * 50) * 10 ** (floor_dbfs / 20)
            self.floor = np.round(noise * 32767).astype(np.int16)

    def say(self, audio: bytes) -> tuple[asyncio.Future[float], asyncio.Future[float]]:
        """Queue speech; the futures get the times its first and its last byte were sent."""
        loop = asyncio.get_running_loop()
        onset: asyncio.Future[float] = loop.create_future()
        self.onset_waiters.append((self.queued, onset))
        self.pending += audio
        self.queued += len(audio)
        future: asyncio.Future[float] = loop.create_future()
        self.waiters.append((self.queued, future))
        return onset, future

    def holds_speech(self, start_ms: float, end_ms: float) -> bool:
        """Whether any speech was sent between two points of the input clock."""
        return any(span[0] < end_ms and start_ms < span[1] for span in self.speech_spans)

    async def run(self) -> None:
        step = int(2 * WIRE_RATE * APPEND_S)
        samples = step // 2
        self.started_at = time.perf_counter()
        while True:
            speech = bytes(self.pending[:step])
            del self.pending[:step]
            offset = (self.appends * samples) % (len(self.floor) - samples)
            piece = self.floor[offset : offset + samples].astype(np.int32)
            if speech:
                if not self.floor_under_speech:  # a noise gate: speech as it comes, its pauses exact zeros
                    piece[: len(speech) // 2] = 0
                piece[: len(speech) // 2] += np.frombuffer(speech, dtype="<i2")
                clock_ms = 1000 * self.appends * APPEND_S
                end_ms = clock_ms + 1000 * len(speech) / (2 * WIRE_RATE)
                if self.speech_spans and self.speech_spans[-1][1] >= clock_ms:
                    self.speech_spans[-1][1] = end_ms
                else:
                    self.speech_spans.append([clock_ms, end_ms])
            data = np.clip(piece, -32768, 32767).astype("<i2").tobytes()
            await self.ws.send(
                json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})
            )
            now = time.perf_counter()
            for start, onset in [w for w in self.onset_waiters if w[0] < self.sent + len(speech)]:
                onset.set_result(now)
                self.onset_waiters.remove((start, onset))
            self.sent += len(speech)
            for end, future in [w for w in self.waiters if w[0] <= self.sent]:
                future.set_result(now)
                self.waiters.remove((end, future))
            self.send_times.append(now)
            self.appends += 1
            await _sleep_until(self.started_at + self.appends * APPEND_S)

    def sent_time_of_ms(self, clock_ms: float) -> float:
        """When the append holding `clock_ms` of the session's input clock left (every append is audio)."""
        index = max(0, math.ceil(clock_ms / 1000 / APPEND_S) - 1)
        return self.send_times[min(index, len(self.send_times) - 1)]


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _read(ws: Any, queue: asyncio.Queue[tuple[float, dict]]) -> None:
    async for raw in ws:
        queue.put_nowait((time.perf_counter(), json.loads(raw)))


async def server_session(
    url: str,
    headers: dict[str, str],
    questions: list[bytes],
    first: int,
    start_at: float,
    args: argparse.Namespace,
    run: Run,
) -> None:
    """One client: microphone, questions, answers; appends its turns to `run`."""
    import websockets

    async with websockets.connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        events: asyncio.Queue[tuple[float, dict]] = asyncio.Queue()
        reader = asyncio.create_task(_read(ws, events))
        try:
            _, greeting = await asyncio.wait_for(events.get(), 20)
        except TimeoutError:
            reader.cancel()
            raise RuntimeError("no session.created within 20 s") from None
        if greeting["type"] == "error" and greeting["error"]["code"] == "capacity_exceeded":
            run.refused += 1  # admission said no: the server stays real time for the others
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            return
        mic = Microphone(ws, args.floor_dbfs, seed=first, floor_under_speech=args.floor_under_speech)
        microphone = asyncio.create_task(mic.run())
        try:
            await _sleep_until(start_at)
            for index in range(args.turns):
                audio = questions[(first + index) % len(questions)]
                turn = Turn(question_s=len(audio) / (2 * WIRE_RATE))
                run.turns.append(turn)
                _, spoken = mic.say(audio)
                interruption = questions[(first + index + 1) % len(questions)]
                await _hear(ws, events, mic, spoken, turn, args, run, interruption)
                if turn.status not in ("completed", "capped"):
                    break
                await asyncio.sleep(args.pause)
            # The floor alone for a while: any turn it opens is a phantom.
            await _listen_to_floor(events, mic, args.floor_after, run)
        finally:
            microphone.cancel()
            reader.cancel()
            await asyncio.gather(microphone, reader, return_exceptions=True)


def _phantom(event: dict, mic: Microphone) -> bool:
    """A speech_started whose audio (pre-roll, then the speech that opened it) holds no speech we sent."""
    start = event["audio_start_ms"]
    return not mic.holds_speech(start, start + PHANTOM_WINDOW_MS)


UNPAUSED_AFTER_S = 0.5  # answer audio arriving this long after speech began into it: not paused
PHANTOM_WINDOW_MS = 1200  # the pre-roll (300 ms) and the speech that opens a turn (250 ms), with room


async def _listen_to_floor(
    events: asyncio.Queue[tuple[float, dict]], mic: Microphone, seconds: float, run: Run
) -> None:
    deadline = time.perf_counter() + seconds
    while (left := deadline - time.perf_counter()) > 0:
        try:
            _, event = await asyncio.wait_for(events.get(), left)
        except TimeoutError:
            return
        if event["type"] == "input_audio_buffer.speech_started" and _phantom(event, mic):
            run.phantom_turns += 1


async def _hear(
    ws: Any,
    events: asyncio.Queue[tuple[float, dict]],
    mic: Microphone,
    spoken: asyncio.Future[float],
    turn: Turn,
    args: argparse.Namespace,
    run: Run,
    interruption: bytes,
) -> None:
    """Follow one turn's events until its response is done (cancelling it at `--answer-seconds`), speaking
    into the answer after `--interrupt-after` seconds of it when asked to."""
    deadline = time.perf_counter() + turn.question_s + args.turn_timeout
    response_id: str | None = None
    capped = False
    onset: asyncio.Future[float] | None = None
    last_delta_at: float | None = None
    paused_at: float | None = None
    while True:
        try:
            at, event = await asyncio.wait_for(events.get(), max(0.01, deadline - time.perf_counter()))
        except TimeoutError:
            turn.status = "no answer" if turn.first_audio_at is None else "unfinished"
            return
        if spoken.done() and turn.speech_end_at is None:
            turn.speech_end_at = spoken.result()
        kind = event["type"]
        if kind == "input_audio_buffer.speech_started":
            if _phantom(event, mic):
                run.phantom_turns += 1
            elif onset is not None and paused_at is None and response_id is not None:
                paused_at = at
                turn.flushed()
                if last_delta_at is not None and onset.done():
                    turn.interrupt_to_silence_s = last_delta_at - onset.result()
        elif kind == "input_audio_buffer.speech_stopped" and turn.turn_end_at is None:
            turn.turn_end_at = at
            turn.vad_lag_s = at - mic.sent_time_of_ms(event["audio_end_ms"])
        elif kind == "response.created" and response_id is None:
            response_id = event["response"]["id"]
        elif kind == "response.output_audio.delta" and event["response_id"] == response_id:
            if paused_at is None:
                last_delta_at = at
                if onset is not None and onset.done() and at - onset.result() > UNPAUSED_AFTER_S:
                    turn.interrupt_unpaused = True  # still playing well after speech began
            turn.heard(
                at,
                len(base64.b64decode(event["delta"])) / (2 * WIRE_RATE),
                args.playout_ms / 1000,
                args.cushion_ms / 1000,
            )
            if args.interrupt_after is not None and onset is None and turn.audio_s >= args.interrupt_after:
                onset, _ = mic.say(interruption)
            if not capped and turn.audio_s >= args.answer_seconds:
                capped = True
                await ws.send(json.dumps({"type": "response.cancel"}))
        elif kind == "error":
            # A cancel that crosses the answer's natural end finds nothing to cancel: not a failure.
            if not (capped and event["error"]["code"] == "response_cancel_not_active"):
                turn.status = f"error {event['error']['code']}"
                return
        elif kind == "response.done" and event["response"]["id"] == response_id:
            status = event["response"]["status"]
            turn.status = "capped" if capped and status in ("cancelled", "completed") else status
            if turn.speech_end_at is None and spoken.done():
                turn.speech_end_at = spoken.result()
            return


async def run_server_sessions(
    url: str, headers: dict[str, str], questions: list[bytes], count: int, args: argparse.Namespace
) -> Run:
    run = Run("server", count)
    begin = time.perf_counter() + 0.3
    tasks = [
        asyncio.create_task(
            server_session(url, headers, questions, 3 * i, begin + i * args.stagger / count, args, run)
        )
        for i in range(count)
    ]
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            run.errors.append(f"{type(result).__name__}: {result}"[:160])
    run.wall_s = time.perf_counter() - begin
    return run


# -- the engine path (no server) --------------------------------------------------------------------------
async def engine_session(
    engine: Engine,
    questions: list[np.ndarray],
    first: int,
    start_at: float,
    args: argparse.Namespace,
    run: Run,
) -> None:
    """The same conversation straight on the engine: the question's chunks at real-time pace, silence until
    `--vad-silence-ms` after its last sound, then the commit: about where server VAD ends the turn."""
    session_id = await engine.open_session()
    try:
        start = start_at
        for index in range(args.turns):
            wav = questions[(first + index) % len(questions)]
            turn = Turn(question_s=len(wav) / MODEL_RATE)
            run.turns.append(turn)
            # The VAD counts the question's own trailing quiet towards its wait for silence.
            voiced = np.flatnonzero(np.abs(wav) > QUIET)
            quiet_tail = len(wav) - (voiced[-1] + 1 if voiced.size else 0)
            silence = max(0, int(MODEL_RATE * args.vad_silence_ms / 1000) - quiet_tail)
            audio = np.concatenate([wav, np.zeros(silence, dtype=np.float32)])
            padded = np.concatenate([audio, np.zeros((-len(audio)) % CHUNK_SAMPLES, dtype=np.float32)])
            chunks = padded.reshape(-1, CHUNK_SAMPLES)
            feeds = []
            for number, chunk in enumerate(chunks):
                await _sleep_until(start + (number + 1) * CHUNK_S)
                feeds.append(asyncio.create_task(engine.feed_chunk(session_id, chunk, act=False)))
            turn.speech_end_at = start + len(wav) / MODEL_RATE
            turn.turn_end_at = start + len(chunks) * CHUNK_S
            stream = await engine.commit_listen(session_id)
            await asyncio.gather(*feeds)
            capped = False
            while stream is not None and stream.done is None:
                event = await stream.next_event()
                if isinstance(event, AudioDelta) and not capped:
                    turn.heard(
                        time.perf_counter(),
                        len(event.samples) / WIRE_RATE,
                        args.playout_ms / 1000,
                        args.cushion_ms / 1000,
                    )
                    if turn.audio_s >= args.answer_seconds:
                        capped = True
                        await engine.cancel_answer(session_id, "benchmark cap")
            turn.status = "no answer" if stream is None else ("capped" if capped else str(stream.done.status))
            start = time.perf_counter() + args.pause
    finally:
        await engine.close_session(session_id)


async def run_engine_sessions(
    engine_factory: Any, questions: list[np.ndarray], count: int, args: argparse.Namespace
) -> Run:
    run = Run("engine", count)
    engine = engine_factory()
    await engine.start()
    begin = time.perf_counter() + 0.3
    tasks = [
        asyncio.create_task(
            engine_session(engine, questions, 3 * i, begin + i * args.stagger / count, args, run)
        )
        for i in range(count)
    ]
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            run.errors.append(f"{type(result).__name__}: {result}"[:160])
    run.wall_s = time.perf_counter() - begin
    run.step_s = engine.stats.step_seconds / max(engine.stats.steps, 1)
    await engine.stop()
    return run


# -- a server of our own, in a child process ------------------------------------------------------------------
def serve_child(settings_json: str, head: str) -> None:
    """Child process: run the server; once the model is in, hold the state head (tiny model) and say so."""
    from app.serving import GracefulServer, uvicorn_config

    config = uvicorn_config(Settings(**json.loads(settings_json)))
    server = GracefulServer(config)

    def announce_when_ready() -> None:
        while (state := getattr(config.app.state, "server", None)) is None or not state.ready:
            if state is not None and state.load_error:
                print(f"failed: {state.load_error}", flush=True)
                return
            time.sleep(0.05)
        if head != "model":
            for engine in state.pool.engines:
                bias = engine.model.audio.predictor_head.bias
                with torch.no_grad():
                    bias.zero_()
                    bias[HEAD_BIAS_ROW[head]] = 50.0
        print("ready", flush=True)

    threading.Thread(target=announce_when_ready, daemon=True).start()
    server.run()


def start_server(settings: dict[str, Any], head: str) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, __file__, "--serve-child", json.dumps(settings, default=str), "--head", head],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = child.stdout.readline().strip() if child.stdout else ""
    if line != "ready":
        child.kill()
        raise SystemExit(f"the server did not start: {line or 'no output'}")
    return child


def process_cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU seconds of a process, from /proc (Linux); None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape_metrics(metrics_url: str) -> dict[str, float]:
    """The server's /metrics samples by name (labels included); empty when it cannot be read."""
    try:
        with urllib.request.urlopen(metrics_url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    pairs = (line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return {name: float(value) for name, value in pairs}


def per_event(before: dict[str, float], after: dict[str, float], total: str, count: str) -> float | None:
    """The mean of a summed quantity over the events counted between two scrapes."""
    if total not in before or total not in after or after[count] <= before[count]:
        return None
    return (after[total] - before[total]) / (after[count] - before[count])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Target:
    """The server under test: where to reach it, and its process when it is ours."""

    url: str
    headers: dict[str, str]
    metrics_url: str
    pid: int | None = None


def measure_server(target: Target, questions: list[bytes], count: int, args: argparse.Namespace) -> Run:
    """N client sessions against the server, with CPU use and the server's own engine latency."""
    client_before, server_before = time.process_time(), process_cpu_seconds(target.pid)
    metrics_before = scrape_metrics(target.metrics_url)
    run = asyncio.run(run_server_sessions(target.url, target.headers, questions, count, args))
    wall = max(run.wall_s, 1e-9)
    run.client_cpu = (time.process_time() - client_before) / wall
    server_after = process_cpu_seconds(target.pid)
    if server_before is not None and server_after is not None:
        run.server_cpu = (server_after - server_before) / wall
    metrics_after = scrape_metrics(target.metrics_url)
    run.engine_in_server_s = per_event(
        metrics_before,
        metrics_after,
        "freeze_omni_first_audio_seconds_sum",
        "freeze_omni_first_audio_seconds_count",
    )
    run.step_s = per_event(
        metrics_before, metrics_after, "freeze_omni_engine_busy_seconds", "freeze_omni_engine_steps"
    )
    return run


def measure_engine(
    engine_factory: Any, questions: list[np.ndarray], count: int, args: argparse.Namespace
) -> Run:
    """N sessions straight on a fresh engine in this process (clients and engine share its CPU)."""
    before = time.process_time()
    run = asyncio.run(run_engine_sessions(engine_factory, questions, count, args))
    run.client_cpu = (time.process_time() - before) / max(run.wall_s, 1e-9)
    return run


def measure_formats(target: Target, questions_24k: list[np.ndarray], args: argparse.Namespace) -> list[dict]:
    """Bytes per session-second of each wire format at N=`--formats`, and what Opus costs in CPU."""
    results = []
    for fmt in FORMATS:
        before = process_cpu_seconds(target.pid)
        traffic = asyncio.run(run_format(target.url, target.headers, fmt, questions_24k, args.formats, args))
        after = process_cpu_seconds(target.pid)
        if before is not None and after is not None:
            traffic.server_cpu = (after - before) / max(traffic.wall_s, 1e-9)
        results.append(traffic)
    codec = opus_codec_cost(np.concatenate(questions_24k))
    print_formats(results, codec, args.formats)
    return [
        {
            "format": t.name,
            "in_kbit_per_session_s": round(t.kbit_per_session_second("in"), 2),
            "out_kbit_per_session_s": round(t.kbit_per_session_second("out"), 2),
            "out_kbit_per_answer_s": round(t.out_kbit_per_answer_second(), 2),
            "answered": f"{t.answered}/{t.turns}",
            "server_cpu_cores": t.server_cpu,
            "errors": t.errors,
        }
        for t in results
    ] + [{"opus_codec": codec}]


# -- output ---------------------------------------------------------------------------------------------------
def _ms(values: list[float], q: float | None = None) -> str:
    if not values:
        return "-"
    return f"{1000 * (float(np.mean(values)) if q is None else float(np.percentile(values, q))):.0f}"


def _cores(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def summary(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """One sweep point's figures (milliseconds as text, "-" where there is none)."""
    after_turn = run.latencies("turn_end_at")
    after_speech = run.latencies("speech_end_at")
    stalls = [t.worst_stall_s for t in run.turns if t.worst_stall_s is not None]
    lags = [t.vad_lag_s for t in run.turns if t.vad_lag_s is not None]
    to_silence = [t.interrupt_to_silence_s for t in run.turns if t.interrupt_to_silence_s is not None]
    problems = run.problems(args.audio_slack_ms / 1000)
    return {
        "path": run.path,
        "sessions": run.sessions,
        "real_time": not problems,
        "problems": problems,
        "turns": len(run.turns),
        "turn_end_to_audio_p50_ms": _ms(after_turn, 50),
        "turn_end_to_audio_p95_ms": _ms(after_turn, 95),
        "turn_end_to_audio_mean_ms": _ms(after_turn),
        "speech_end_to_audio_p50_ms": _ms(after_speech, 50),
        "speech_end_to_audio_p95_ms": _ms(after_speech, 95),
        "engine_in_server_mean_ms": "-"
        if run.engine_in_server_s is None
        else f"{1000 * run.engine_in_server_s:.0f}",
        "worst_stall_ms": _ms(stalls and [max(stalls)]),
        "worst_vad_lag_ms": _ms(lags and [max(lags)]),
        "step_ms": "-" if run.step_s is None else f"{1000 * run.step_s:.1f}",
        "interrupt_to_silence_p50_ms": _ms(to_silence, 50),
        "interrupt_to_silence_p95_ms": _ms(to_silence, 95),
        "interruptions_unpaused": sum(t.interrupt_unpaused for t in run.turns),
        "phantom_turns": run.phantom_turns if run.path == "server" else "-",
        "refused_sessions": run.refused,
        "answered_turns": sum(t.status in ("completed", "capped") for t in run.turns),
        "underruns": sum(t.underruns for t in run.turns),
        "turns_with_underruns": sum(t.underruns > 0 for t in run.turns),
        "client_cpu": _cores(run.client_cpu),
        "server_cpu": _cores(run.server_cpu),
        "wall_s": round(run.wall_s, 1),
    }


HEADER = (
    "  N  path    real turns   turn end -> audio    speech end->audio    stall  vad lag   step   CPU (cores)"
    "   interrupt->silence  phantom\n"
    "                           p50   p95  mean        p50   p95          (ms)     (ms)   (ms)  here server"
    "     p50   p95 unpaused  turns"
)


def print_row(row: dict[str, Any]) -> None:
    verdict = "yes" if row["real_time"] else "NO"
    why = "" if row["real_time"] else "  (" + "; ".join(row["problems"])[:100] + ")"
    print(
        f"{row['sessions']:>3}  {row['path']:<6}  {verdict:<4} {row['turns']:>5}  "
        f"{row['turn_end_to_audio_p50_ms']:>5} {row['turn_end_to_audio_p95_ms']:>5} "
        f"{row['turn_end_to_audio_mean_ms']:>5}      "
        f"{row['speech_end_to_audio_p50_ms']:>5} {row['speech_end_to_audio_p95_ms']:>5}  "
        f"{row['worst_stall_ms']:>7}  {row['worst_vad_lag_ms']:>7}  {row['step_ms']:>5}  "
        f"{row['client_cpu']:>5} {row['server_cpu']:>5}   {row['interrupt_to_silence_p50_ms']:>5} "
        f"{row['interrupt_to_silence_p95_ms']:>5} {row['interruptions_unpaused']:>8} {row['phantom_turns']:>6}{why}",
        flush=True,
    )


def print_overhead(rows: list[dict[str, Any]]) -> None:
    """Per N: the server's overhead on the very same answers, and the engine alone for comparison."""
    lines = []
    engine_alone = {r["sessions"]: r for r in rows if r["path"] == "engine"}
    for row in rows:
        if row["path"] != "server" or "-" in (
            row["turn_end_to_audio_mean_ms"],
            row["engine_in_server_mean_ms"],
        ):
            continue
        seen, inside = float(row["turn_end_to_audio_mean_ms"]), float(row["engine_in_server_mean_ms"])
        line = f"  N={row['sessions']}: client {seen:.0f} ms, server's engine {inside:.0f} ms: overhead {seen - inside:+.0f} ms"
        alone = engine_alone.get(row["sessions"])
        if alone is not None and alone["turn_end_to_audio_mean_ms"] != "-":
            line += f"   (engine alone, other answers: {alone['turn_end_to_audio_mean_ms']} ms)"
        lines.append(line)
    if lines:
        print("turn end -> first audio, mean; the client's view against the server's engine, same answers:")
        print("\n".join(lines))


def print_curve(rows: list[dict[str, Any]], cushion_ms: float) -> None:
    """The latency-vs-sessions curve as a table: what N users get, the refused ones included."""
    served = [r for r in rows if r["path"] == "server"]
    if not served:
        return
    print(
        f"latency vs sessions (server): first audio after the end of speech; underruns of a player with a "
        f"{cushion_ms:g} ms cushion\n"
        "  N  admitted refused  answered/asked   p50 (ms)  p95 (ms)  underruns (turns with any)"
    )
    for r in served:
        print(
            f"{r['sessions']:>3}  {r['sessions'] - r['refused_sessions']:>8} {r['refused_sessions']:>7}  "
            f"{r['answered_turns']:>8}/{r['turns']:<5}  {r['speech_end_to_audio_p50_ms']:>8}  "
            f"{r['speech_end_to_audio_p95_ms']:>8}  {r['underruns']:>9} ({r['turns_with_underruns']})",
            flush=True,
        )


# -- main -------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="ws URL of a running server's /v1/realtime; default: start one here")
    parser.add_argument("--api-key", help="sent as Authorization: Bearer")
    parser.add_argument("--model-path", type=Path)
    parser.add_argument("--llm-path", type=Path)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sessions", default="1,2,4,8", help="session counts to sweep (default 1,2,4,8)")
    parser.add_argument("--turns", type=int, default=2, help="questions per session (default 2)")
    parser.add_argument(
        "--pause", type=float, default=0.5, help="seconds between an answer and the next question"
    )
    parser.add_argument(
        "--stagger", type=float, default=0.5, help="session starts spread over this many seconds"
    )
    parser.add_argument(
        "--answer-seconds", type=float, default=4.0, help="cancel an answer after this much audio"
    )
    parser.add_argument("--max-answer-tokens", type=int, default=48)
    parser.add_argument("--turn-timeout", type=float, default=20.0, help="a turn unanswered this long fails")
    parser.add_argument("--audio-slack-ms", type=float, default=20.0)
    parser.add_argument(
        "--playout-ms",
        type=float,
        default=0.0,
        help="the player starts this long after the first audio (default 0: at once)",
    )
    parser.add_argument(
        "--vad-silence-ms",
        type=int,
        default=Settings.model_fields["vad_silence_ms"].default,
        help="engine path: the commit comes this long after a question's last sound (the server's VAD default)",
    )
    parser.add_argument(
        "--head",
        choices=["listen", "model"],
        default="listen",
        help="own server only: hold the state head on 'listen' (every turn ends by VAD, as the engine "
        "path's commit) or leave it to the model",
    )
    parser.add_argument(
        "--floor-dbfs",
        type=lambda v: None if v == "none" else float(v),
        default=-60.0,
        help="the microphone's noise floor between and under utterances, dBFS (default -60; 'none': digital "
        "silence)",
    )
    parser.add_argument(
        "--floor-under-speech",
        action="store_true",
        help="mix the floor under speech too (default: speech as espeak-ng makes it, its pauses exact zeros, "
        "as a noise gate or echo canceller passes it: the harder case for a VAD)",
    )
    parser.add_argument(
        "--interrupt-after",
        type=float,
        default=None,
        help="speak into each answer after this many seconds of its audio (interruption-to-silence)",
    )
    parser.add_argument(
        "--floor-after",
        type=float,
        default=3.0,
        help="seconds of floor alone after a session's last turn (phantom turns counted all along)",
    )
    parser.add_argument(
        "--cushion-ms",
        type=float,
        default=100.0,
        help="the curve's player buffers this much before playing, and again after each underrun "
        "(default 100)",
    )
    parser.add_argument(
        "--admission-max-load",
        type=float,
        default=None,
        help="own server only: FREEZE_OMNI_ADMISSION_MAX_LOAD (default: the server's; 0: no measured "
        "admission, only the fixed cap of max(--sessions))",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VALUE,...",
        help="own server only: start one server per variant, with these settings over the defaults "
        "(Settings field names, e.g. 'before:codec_thread=false,speech_tokens_per_step=1', or 'after:' for "
        "the defaults); every N runs on each, in alternating order, side by side in one run. Repeat it",
    )
    parser.add_argument(
        "--png",
        default="latency_vs_sessions.png",
        help="where to write the latency-vs-sessions curve as a PNG (needs matplotlib: pip install "
        "-e '.[bench]'); 'none' skips it (default latency_vs_sessions.png)",
    )
    parser.add_argument("--no-engine", action="store_true", help="skip the engine-only comparison")
    parser.add_argument(
        "--formats",
        type=int,
        default=8,
        help="sessions per wire format for the bytes-per-session-second comparison (pcm16 JSON, pcm16 "
        "binary, G.711, Opus) and Opus's CPU cost; 0 skips it (default 8)",
    )
    parser.add_argument("--formats-only", action="store_true", help="only the wire-format comparison")
    parser.add_argument("--json", action="store_true", help="also print all figures as one JSON object")
    parser.add_argument("--serve-child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def server_settings(args: argparse.Namespace, counts: list[int]) -> dict[str, Any]:
    """The settings of the server we start (and of the engine-only runs)."""
    values: dict[str, Any] = {
        "max_sessions": max(counts),
        "max_answer_tokens": args.max_answer_tokens,
        "devices": [args.device],
        "dtype": args.dtype,
        "seed": 0,
        "log_level": "warning",
        "idle_timeout_s": 600.0,
    }
    if args.admission_max_load is not None:
        values["admission_max_load"] = args.admission_max_load
    if args.model_path and args.llm_path:
        return values | {"model_path": str(args.model_path), "llm_path": str(args.llm_path)}
    from app.model.checkpoint_io.defaults import ensure_default_model

    paths = ensure_default_model()
    return values | {"model_path": str(paths.model_path), "llm_path": str(paths.llm_path)}


def parse_variants(specs: list[str]) -> dict[str, dict[str, str]]:
    """`NAME:KEY=VALUE,...` -> {NAME: {KEY: VALUE}}; Settings checks the values when a server starts."""
    variants: dict[str, dict[str, str]] = {}
    for spec in specs:
        name, _, body = spec.partition(":")
        overrides = dict(pair.split("=", 1) for pair in body.split(",") if pair.strip())
        unknown = set(overrides) - set(Settings.model_fields)
        if not name or unknown:
            raise SystemExit(
                f"--variant {spec!r}: give NAME:KEY=VALUE,... with Settings fields (unknown: {unknown})"
            )
        variants[name] = overrides
    return variants


def write_curve_png(rows: list[dict[str, Any]], path: str, cushion_ms: float) -> None:
    """The latency-vs-sessions curve as a PNG: first audio p50/p95 and underruns per N, per variant."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            f"no PNG written ({path}): it needs matplotlib, which is not installed. Install it with "
            "`pip install -e '.[bench]'` (or `pip install matplotlib`); the table above has the same figures.",
            flush=True,
        )
        return
    served = [r for r in rows if r["path"] == "server"]
    if not served:
        return
    figure, (latency_axis, underrun_axis) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    variants = list(dict.fromkeys(r.get("variant", "server") for r in served))
    for position, variant in enumerate(variants):
        color = colors[position % len(colors)]
        points = sorted(
            (r for r in served if r.get("variant", "server") == variant), key=lambda r: r["sessions"]
        )
        n = [r["sessions"] for r in points]
        for key, style, label in (
            ("speech_end_to_audio_p50_ms", "o-", "p50"),
            ("speech_end_to_audio_p95_ms", "s--", "p95"),
        ):
            values = [float("nan") if r[key] == "-" else float(r[key]) for r in points]
            latency_axis.plot(n, values, style, color=color, label=f"{variant} {label}")
        underrun_axis.plot(
            n, [r["underruns"] for r in points], "o-", color=color, label=f"{variant} underruns"
        )
        refused = [r["refused_sessions"] for r in points]
        if any(refused):
            underrun_axis.plot(n, refused, "x:", color=color, label=f"{variant} refused sessions")
    latency_axis.axhline(800, color="grey", linewidth=0.8, linestyle=":")
    latency_axis.set_ylabel("first audio after end of speech (ms)")
    latency_axis.set_title("Latency vs sessions (bench_server.py)")
    latency_axis.legend(fontsize=8)
    latency_axis.grid(alpha=0.3)
    underrun_axis.set_ylabel(f"underruns ({cushion_ms:g} ms cushion) / refused")
    underrun_axis.set_xlabel("concurrent voice sessions (N)")
    underrun_axis.set_xscale("log", base=2)
    underrun_axis.set_xticks(sorted({r["sessions"] for r in served}))
    underrun_axis.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    underrun_axis.legend(fontsize=8)
    underrun_axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    print(f"latency-vs-sessions curve written to {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.serve_child:
        serve_child(args.serve_child, args.head)
        return
    counts = [int(n) for n in args.sessions.split(",")]
    questions_24k = spoken_questions()
    questions_pcm = [pcm16(q) for q in questions_24k]
    questions_16k = [resample(q, WIRE_RATE, MODEL_RATE) for q in questions_24k]
    values = server_settings(args, counts)
    variants = parse_variants(args.variant) if args.variant else {"server": {}}
    if args.url is not None and len(variants) > 1:
        raise SystemExit("--variant starts servers of its own: leave out --url")
    children: list[subprocess.Popen] = []
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    targets: dict[str, Target] = {}
    for name, overrides in variants.items():
        child = None
        if args.url is None:
            port = free_port()
            try:
                child = start_server(values | overrides | {"port": port}, args.head)
            except BaseException:
                for each in children:
                    each.terminate()
                raise
            children.append(child)
            url = f"ws://127.0.0.1:{port}/v1/realtime"
        else:
            url = args.url
        http = url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
        metrics = http.split("/v1/realtime")[0] + "/metrics"
        targets[name] = Target(url, headers, metrics, child.pid if child else None)
    target = next(iter(targets.values()))
    url = target.url
    child = children[0] if children else None
    engine_factory = None
    if not args.no_engine:
        from app.model.checkpoint_io.layout import load_freeze_omni

        settings = Settings(**values)
        model = load_freeze_omni(
            settings.model_path,
            settings.llm_path,
            device=args.device,
            dtype=args.dtype,
            codec_dtype=settings.codec_dtype,
            llm_weights=settings.llm_weights,
        )
        # Every asked session is served: the engine-only side measures serving, not admission.
        engine_settings = replace(settings.engine_settings(), admission_max_load=0.0)
        engine_factory = lambda: Engine(model, engine_settings, name="bench")  # noqa: E731
    lengths = [len(q) / (2 * WIRE_RATE) for q in questions_pcm]
    print(
        f"server {url} ({'started here, head ' + args.head if child else 'given'}); {len(QUESTIONS)} questions of "
        f"{min(lengths):.1f}-{max(lengths):.1f} s, {args.turns} turns per session, answers cut at "
        f"{args.answer_seconds:g} s, max_answer_tokens {args.max_answer_tokens}, playout delay "
        f"{args.playout_ms:g} ms",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    formats: list[dict[str, Any]] = []
    try:
        warm = argparse.Namespace(**{**vars(args), "turns": 1})  # first-call costs stay out of N=1
        for each in targets.values():
            asyncio.run(run_server_sessions(each.url, headers, questions_pcm, 1, warm))
        if engine_factory and not args.formats_only:
            asyncio.run(run_engine_sessions(engine_factory, questions_16k, 1, warm))
        if args.formats:
            formats = measure_formats(target, questions_24k, args)
        print(HEADER)
        for position, count in enumerate([] if args.formats_only else counts):
            paths = [("server", name) for name in targets] + ([("engine", "")] if engine_factory else [])
            for path, name in paths if position % 2 == 0 else paths[::-1]:  # drift in load hits all alike
                if path == "server":
                    run = measure_server(targets[name], questions_pcm, count, args)
                else:
                    run = measure_engine(engine_factory, questions_16k, count, args)
                rows.append(summary(run, args) | {"variant": name or "engine"})
                if len(targets) > 1 and path == "server":
                    print(f"[{name}]", end=" ")
                print_row(rows[-1])
    finally:
        for each in children:
            each.terminate()
            each.wait(timeout=30)
    print_overhead(rows)
    for name in targets:
        if len(targets) > 1:
            print(f"\n[{name}] {variants[name] or 'the defaults'}")
        print_curve([r for r in rows if r["variant"] in (name, "engine")], args.cushion_ms)
    if args.png != "none" and not args.formats_only:
        write_curve_png(rows, args.png, args.cushion_ms)
    if args.json:
        print(
            json.dumps({"settings": {**values, **vars(args)}, "runs": rows, "formats": formats}, default=str)
        )


if __name__ == "__main__":
    main()
