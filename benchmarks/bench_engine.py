"""Engine capacity: how many simulated real-time conversations one replica keeps in real time.

    python benchmarks/bench_engine.py [--model-path M --llm-path L] [--device cuda] [--json]
    python benchmarks/bench_engine.py --random-7b --device cuda      # Qwen2-7B-shaped random weights
    python benchmarks/bench_engine.py --random-7b --shrink 16        # the same code path, CPU-sized

Every simulated session is a conversation that lasts the whole measurement window (`--duration`):
it streams a spoken question into the engine at real-time pace (one 160 ms chunk every 160 ms,
`act=False`), commits the turn when its audio ends, plays the answer back in real time, pauses
briefly and asks the next question, so all N sessions overlap all the time. For each number of
sessions N the script checks that every session stayed real time and measures first-audio latency
per turn and the audio made per second, once with batching (the engine's `max_batch`) and once
with every forward forced to batch 1 (`max_batch=1`), interleaved in this one run. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import itertools
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.engine import AnswerStream, Engine  # noqa: E402
from app.engine.events import AnswerStatus, AudioDelta  # noqa: E402
from app.engine.runner import StepRunner  # noqa: E402
from app.engine.settings import EngineSettings  # noqa: E402
from app.model import (  # noqa: E402
    CHUNK_SAMPLES,  # noqa: E402
    INPUT_RATE,
    OUTPUT_RATE,
)
from app.model.checkpoint_io.defaults import ensure_default_model  # noqa: E402
from app.model.checkpoint_io.layout import FreezeOmni, load_freeze_omni, resolve_dtype  # noqa: E402
from app.model.checkpoint_io.weights import assert_materialized  # noqa: E402
from app.model.fixtures.tiny import CHAT_TEMPLATE  # noqa: E402
from app.model.fixtures.tiny_llm import write_tokenizer  # noqa: E402
from app.model.llm.compact_linear import LINEAR_WEIGHTS, compact_linears, resolve_linear_weights  # noqa: E402
from app.model.llm.duplex import IM_END, ChatTemplate, PromptTokens  # noqa: E402
from app.model.llm.qwen2 import Qwen2Config, Qwen2Runtime  # noqa: E402
from app.model.llm.transformer import RMSNorm  # noqa: E402
from app.model.speech_in.adapter import AdapterConfig  # noqa: E402
from app.model.speech_in.audio_llm import AudioLLM, AudioLLMConfig  # noqa: E402
from app.model.speech_in.cmvn import CmvnStats  # noqa: E402
from app.model.speech_in.encoder import EncoderConfig  # noqa: E402
from app.model.speech_in.frontend import fbank_whole  # noqa: E402
from app.model.speech_out.codec import (  # noqa: E402
    CodecConfig,
    CodecDecoder,
    init_unit_gain,
    resolve_codec_dtype,  # noqa: E402
)
from app.model.speech_out.codec_stream import ServerConfig  # noqa: E402
from app.model.speech_out.speech_decoder import SpeechDecoder, SpeechDecoderConfig  # noqa: E402
from app.model.wav import read_wav, resample  # noqa: E402

CHUNK_S = CHUNK_SAMPLES / INPUT_RATE
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
# Engine variants a run can compare (`--modes`), as overrides of the engine's settings.
VARIANTS: dict[str, dict[str, object]] = {
    "batched": {},  # the engine's defaults
    "batch-1": {"max_batch": 1},  # every row its own forward
    # The step structure before issue 12's step work: the codec inside the step, one codec token per step.
    "in-step": {"codec_thread": False, "speech_tokens_per_step": 1},
    "lane-1": {"codec_thread": True, "speech_tokens_per_step": 1},  # the codec on its lane, one token a step
    "lane-4": {"codec_thread": True, "speech_tokens_per_step": 4},  # ... and up to 4 at the pace of steps
    "in-step-4": {
        "codec_thread": False,
        "speech_tokens_per_step": 4,
    },  # the codec in the step, up to 4
    # The codec's dtype (a model setting, not the engine's): fp32 against bf16, the rest the defaults.
    "codec-fp32": {"codec_dtype": "float32"},
    "codec-bf16": {"codec_dtype": "bfloat16"},
    # This session's step against the one before it: fp32 codec, one text token a step, tokens spread.
    "new": {},
    "old": {
        "codec_dtype": "float32",
        "first_text_tokens_per_step": 1,
        "overload_priority": False,
        "window_deadline": False,
    },
    # The LLM's linear weights (a model setting): as loaded (fp32 on a CPU) against bf16 and int8.
    "llm-dtype": {"llm_weights": "dtype"},
    "llm-bf16": {"llm_weights": "bfloat16"},
    "llm-int8": {"llm_weights": "int8"},
    "text-1": {"first_text_tokens_per_step": 1},  # the defaults but one text token a step
    "no-deadline": {"window_deadline": False},  # the defaults but the bare pace (no codec-window deadline)
}
# Keys of VARIANTS that change the model, not the engine's settings.
MODEL_KEYS = ("codec_dtype", "llm_weights")
MODES = ("batched", "batch-1")  # the default comparison
# Runner stages timed per run: (name shown, StepRunner method).
STAGES = (("encoder", "_encode"), ("llm", "_llm"), ("decoder", "_speech"), ("codec", "_codec"))
# Codec tokens per text token that --random-7b allows a segment (its decoder never ends one):
# 10 x 25 ms = 0.25 s of speech per text token, an ordinary speaking rate.
RANDOM_SPEECH_PER_TEXT_TOKEN = 10
LEGEND = """\
RT: every session kept real time over the window. turns: answers heard (committed questions).
late: worst chunk verdict time minus the next chunk's due time. deficit: worst (time since an
answer's first audio - its audio received), at a packet. p50/p95: first-audio latency after the
end of the user's audio, over all turns. audio/s: answer audio delivered per second of the window,
all sessions together. busy: share of the window the engine spent in steps. Times in ms."""


# -- input audio -------------------------------------------------------------------------------
def spoken_questions(count: int, min_s: float = 2.0, max_s: float = 3.0) -> tuple[list[np.ndarray], str]:
    """`count` different questions at 16 kHz, 2-3 s each: espeak-ng speech, else numpy chirps."""
    espeak = shutil.which("espeak-ng")
    wavs: list[np.ndarray] = []
    with tempfile.TemporaryDirectory() as folder:
        for index in range(count):
            if espeak is None:
                wav = _chirp(index, min_s + (max_s - min_s) * (index % 5) / 4)
            else:
                path = Path(folder) / f"q{index}.wav"
                speed, pitch = 130 + 15 * (index // len(QUESTIONS) % 4), 35 + 10 * (index % 4)
                text = QUESTIONS[index % len(QUESTIONS)]
                command = [espeak, "-s", str(speed), "-p", str(pitch), "-w", str(path), text]
                subprocess.run(command, check=True, capture_output=True, timeout=60)
                samples, rate = read_wav(path)
                wav = resample(samples, rate, INPUT_RATE)
            # Pad with the silence a speaker leaves before the turn is committed; cut long ones.
            wav = np.pad(wav, (0, max(0, int(min_s * INPUT_RATE) - len(wav))))[: int(max_s * INPUT_RATE)]
            wavs.append(wav.astype(np.float32))
    return wavs, "espeak-ng" if espeak else "numpy chirps (espeak-ng not found)"


def _chirp(seed: int, seconds: float) -> np.ndarray:
    """A speech-like stand-in: a chirp with a syllable-rate tremolo, plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * INPUT_RATE)) / INPUT_RATE
    tone = np.sin(2 * np.pi * (150 + (20 * seed) % 100 + 300 * t / seconds) * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4.0 * t) ** 2
    return (0.3 * tone * envelope + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)


def chunks_of(samples: np.ndarray) -> list[np.ndarray]:
    """Zero-pad to whole 160 ms chunks and split."""
    padded = np.pad(samples, (0, (-len(samples)) % CHUNK_SAMPLES))
    return [padded[i : i + CHUNK_SAMPLES] for i in range(0, len(padded), CHUNK_SAMPLES)]


# -- one simulated conversation --------------------------------------------------------------------
@dataclass
class TurnResult:
    """One question and its answer, as the client saw them. Times in seconds."""

    question_s: float
    status: str = "asked"  # completed, capped, cut (window closed), failed, cancelled, no answer
    first_audio_latency: float | None = None  # end of the user's audio -> first AudioDelta
    audio_seconds: float = 0.0  # answer audio received before the window closed
    worst_deficit: float | None = None  # elapsed since first audio - audio received, at each packet
    worst_stall: float | None = None  # how long the player had run dry when a packet came (info only)
    error: str = ""


@dataclass
class SessionResult:
    """What one simulated client saw over the window. Lateness and deficit < 0 mean margin."""

    worst_lateness: float = -math.inf  # decision time - when the next chunk was due, worst chunk
    chunks: int = 0
    turns: list[TurnResult] = field(default_factory=list)
    error: str = ""

    def problems(self, slack: float, audio_slack: float) -> list[str]:
        """Why this session did not keep real time (empty when it did)."""
        found = [self.error] if self.error else []
        if self.worst_lateness > slack:
            found.append("chunk verdict late")
        for turn in self.turns:
            if turn.status not in ("completed", "capped", "cut"):
                found.append(f"answer {turn.status}{': ' + turn.error if turn.error else ''}")
            elif turn.first_audio_latency is None:
                found.append("answer without audio")
            elif turn.worst_deficit is not None and turn.worst_deficit > audio_slack:
                found.append("audio made slower than it plays")
        if not self.turns and not self.error:
            found.append("no question committed in the window")
        return sorted(set(found))


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _timed_decision(engine: Engine, session_id: str, chunk: np.ndarray, due: float) -> float:
    await engine.feed_chunk(session_id, chunk, act=False)
    return time.perf_counter() - due


async def converse(
    engine: Engine,
    questions: list[np.ndarray],
    first_question: int,
    start_at: float,
    end_at: float,
    args: argparse.Namespace,
    result: SessionResult,
) -> None:
    """Ask, listen to the answer, pause, ask again, until the window closes; fills `result`.

    At the window's end a question being spoken is dropped and an answer being played is
    cancelled; an answer still waiting for its first audio is waited for, so that every committed
    turn has a first-audio latency.
    """
    session_id = await engine.open_session()
    try:
        start = start_at
        for index in itertools.count(first_question):
            if start + CHUNK_S > end_at:
                break
            wav = questions[index % len(questions)]
            turn = TurnResult(question_s=len(wav) / INPUT_RATE)
            asked = await _ask(engine, session_id, wav, start, end_at, result)
            if asked is None:
                break  # the window closed while the question was being spoken
            stream, committed_at = asked
            result.turns.append(turn)
            if stream is None:
                turn.status = "no answer"
                break
            play_end = await _hear(engine, session_id, stream, committed_at, end_at, args, turn)
            if turn.status not in ("completed", "capped"):
                break
            start = max(play_end, time.perf_counter()) + args.pause
    finally:
        await engine.close_session(session_id)


async def _ask(
    engine: Engine, session_id: str, wav: np.ndarray, start: float, end_at: float, result: SessionResult
) -> tuple[AnswerStream | None, float] | None:
    """Speak `wav` from `start` at real-time pace and commit; None if the window closed first."""
    await _sleep_until(start)
    await engine.begin_listen(session_id)
    chunks = chunks_of(wav)
    decisions: list[asyncio.Task[float]] = []
    for index, chunk in enumerate(chunks):
        sent_at = start + (index + 1) * CHUNK_S  # the chunk's audio is complete now
        if sent_at > end_at:
            break
        await _sleep_until(sent_at)
        due = sent_at + CHUNK_S  # its verdict must be back before the next chunk is
        decisions.append(asyncio.create_task(_timed_decision(engine, session_id, chunk, due)))
    spoken = len(decisions) == len(chunks)
    stream = await engine.commit_listen(session_id) if spoken else None
    lateness = await asyncio.gather(*decisions)
    result.chunks += len(lateness)
    result.worst_lateness = max([result.worst_lateness, *lateness])
    if not spoken:
        await engine.drop_listen(session_id)
        return None
    return stream, start + len(chunks) * CHUNK_S


async def _hear(
    engine: Engine,
    session_id: str,
    stream: AnswerStream,
    committed_at: float,
    end_at: float,
    args: argparse.Namespace,
    turn: TurnResult,
) -> float:
    """Consume the answer as a player would; returns when its playback ends.

    Playback starts at the first packet; a packet that comes after the queued audio ran out
    plays from its arrival (a stall). The client cancels the answer after `--answer-seconds` of
    audio, as a listener who has heard enough would, or when the window closes.
    """
    first_at: float | None = None
    play_end = committed_at
    stopped = False
    while stream.done is None:
        wait = None if first_at is None or stopped else max(0.0, end_at - time.perf_counter())
        try:
            event = await asyncio.wait_for(stream.next_event(), wait)
        except TimeoutError:
            stopped, turn.status = True, "cut"
            await engine.cancel_answer(session_id, "measurement window closed")
            continue
        if stopped or not isinstance(event, AudioDelta):
            continue
        now = time.perf_counter()
        if now > end_at and first_at is not None:
            stopped, turn.status = True, "cut"  # judged up to the window's end only
            await engine.cancel_answer(session_id, "measurement window closed")
            continue
        if first_at is None:
            first_at = play_end = now
            turn.first_audio_latency = now - committed_at
        elif now > play_end:
            turn.worst_stall = _worst(turn.worst_stall, now - play_end)
        turn.audio_seconds += len(event.samples) / OUTPUT_RATE
        play_end = max(play_end, now) + len(event.samples) / OUTPUT_RATE
        turn.worst_deficit = _worst(turn.worst_deficit, now - first_at - turn.audio_seconds)
        if now > end_at:  # the first audio came after the window: count its latency, stop
            stopped, turn.status = True, "cut"
            await engine.cancel_answer(session_id, "measurement window closed")
        elif turn.audio_seconds >= args.answer_seconds:
            stopped, turn.status = True, "capped"
            await engine.cancel_answer(session_id, "benchmark cap")
    done = stream.done
    if not stopped:
        turn.status = str(done.status)
        if done.status == AnswerStatus.FAILED:
            turn.error = done.reason
    elif done.status == AnswerStatus.FAILED:
        turn.status, turn.error = "failed", done.reason
    return play_end


def _worst(current: float | None, value: float) -> float:
    return value if current is None else max(current, value)


# -- one run: N conversations on a fresh engine ------------------------------------------------------
@dataclass
class RunResult:
    """N conversations in one mode over the window, and the engine's own counters for the run."""

    mode: str
    sessions: int
    real_time: bool
    window_s: float
    wall_s: float
    turns: int
    chunks: int
    worst_lateness_ms: float | None
    worst_deficit_ms: float | None
    worst_stall_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    audio_s: float  # answer audio delivered within the window, all sessions
    audio_per_s: float  # audio_s / window_s
    busy: float  # engine step time / wall time of the run
    mean_step_ms: float
    longest_step_ms: float
    rows_per_step: dict[str, float]  # rows a step gathers per stage (batch-1 runs them one by one)
    stage_share: dict[str, float]  # share of step time per stage
    cpu_per_step_ms: float = 0.0  # engine thread CPU time per step (a busy machine: wall > CPU)
    codec_cpu_per_s_ms: float = 0.0  # codec decoding CPU per second of window (in the step when in-step)
    cores_used: float = 0.0  # process CPU time / wall: the engine, its codec lane and the clients
    engine_cpu_per_audio_s: float = 0.0  # engine thread + codec lane CPU s per s of answer audio made
    failures: list[str] = field(default_factory=list)


@dataclass
class StepClock:
    """Time spent per runner stage, and the longest whole step, over one run."""

    stage_seconds: dict[str, float] = field(default_factory=dict)
    longest_step: float = 0.0
    step_cpu: float = 0.0
    steps: int = 0
    codec_cpu: float = 0.0


def _clock_steps(runner: StepRunner, device: torch.device) -> StepClock:
    """Wrap the runner's step and stage methods to time them (synchronising on a GPU)."""
    clock = StepClock()
    sync: Callable[[], None] = torch.cuda.synchronize if device.type == "cuda" else lambda: None

    def timed(method: Callable, record: Callable[[float], None]) -> Callable:
        def run(*args, **kwargs):
            began = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync()
                record(time.perf_counter() - began)

        return run

    def add_to(stage: str) -> Callable[[float], None]:
        def record(seconds: float) -> None:
            clock.stage_seconds[stage] += seconds

        return record

    def longest(seconds: float) -> None:
        clock.longest_step = max(clock.longest_step, seconds)

    for stage, attribute in STAGES:
        if (method := getattr(runner, attribute, None)) is not None:
            clock.stage_seconds[stage] = 0.0
            setattr(runner, attribute, timed(method, add_to(stage)))
    step = timed(runner.execute, longest)

    def execute(plan):
        began = time.thread_time()
        try:
            return step(plan)
        finally:
            clock.step_cpu += time.thread_time() - began
            clock.steps += 1

    deliver = runner._deliver_audio

    def deliver_audio(finished, outcome, failed):
        clock.codec_cpu += sum(batch.cpu_seconds for batch in finished)
        return deliver(finished, outcome, failed)

    runner.execute = execute
    runner._deliver_audio = deliver_audio
    return clock


async def run_sessions(
    model: FreezeOmni,
    settings: EngineSettings,
    questions: list[np.ndarray],
    mode: str,
    args: argparse.Namespace,
) -> RunResult:
    """Run `settings.max_sessions` conversations for `--duration` s and judge whether all kept real time."""
    count = settings.max_sessions
    engine = Engine(model, settings, name=f"{mode}-{count}")
    clock = _clock_steps(engine.runner, model.device)
    await engine.start()
    results = [SessionResult() for _ in range(count)]
    cpu_began = time.process_time()
    begin = time.perf_counter() + 0.2
    end_at = begin + args.stagger + args.duration
    # First questions start spread over `stagger` seconds, so chunks fall in different steps;
    # different question and answer lengths keep the turns out of step afterwards.
    tasks = [
        asyncio.create_task(
            converse(engine, questions, 5 * i, begin + i * args.stagger / count, end_at, args, results[i])
        )
        for i in range(count)
    ]
    done, pending = await asyncio.wait(tasks, timeout=end_at + args.grace - time.perf_counter())
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - begin
    cores = (time.process_time() - cpu_began) / max(wall, 1e-9)
    stats = engine.stats
    await engine.stop()
    for task, result in zip(tasks, results, strict=True):
        if task in done and task.exception() is not None:
            result.error = f"{type(task.exception()).__name__}: {task.exception()}"
        elif task in pending:
            result.error = f"still waiting for an answer {args.grace:.0f} s after the window"
    slack, audio_slack = args.slack_ms / 1000, args.audio_slack_ms / 1000
    turns = [t for r in results for t in r.turns]
    latencies = [t.first_audio_latency for t in turns if t.first_audio_latency is not None]
    deficits = [t.worst_deficit for t in turns if t.worst_deficit is not None]
    stalls = [t.worst_stall for t in turns if t.worst_stall is not None]
    lateness = [r.worst_lateness for r in results if r.chunks]
    window = args.stagger + args.duration
    audio = sum(t.audio_seconds for t in turns)
    step_total = sum(clock.stage_seconds.values())
    problems = [p for r in results for p in r.problems(slack, audio_slack)]
    return RunResult(
        mode=mode,
        sessions=count,
        real_time=not problems,
        window_s=window,
        wall_s=wall,
        turns=len(turns),
        chunks=sum(r.chunks for r in results),
        worst_lateness_ms=1000 * max(lateness) if lateness else None,
        worst_deficit_ms=1000 * max(deficits) if deficits else None,
        worst_stall_ms=1000 * max(stalls) if stalls else None,
        latency_p50_ms=1000 * float(np.percentile(latencies, 50)) if latencies else None,
        latency_p95_ms=1000 * float(np.percentile(latencies, 95)) if latencies else None,
        audio_s=audio,
        audio_per_s=audio / window,
        busy=stats.step_seconds / wall,
        mean_step_ms=1000 * stats.step_seconds / stats.steps if stats.steps else 0.0,
        rows_per_step={
            stage: stats.rows.get(stage, 0) / stats.forwards_with_rows[stage]
            for stage, _ in STAGES
            if stats.forwards_with_rows.get(stage)
        },
        stage_share={stage: s / step_total for stage, s in clock.stage_seconds.items() if step_total},
        longest_step_ms=1000 * clock.longest_step,
        cpu_per_step_ms=1000 * clock.step_cpu / max(clock.steps, 1),
        codec_cpu_per_s_ms=1000 * clock.codec_cpu / wall,
        cores_used=cores,
        # A lane's codec CPU is not in the step's; in the step it is (counted once either way).
        engine_cpu_per_audio_s=(clock.step_cpu + (clock.codec_cpu if settings.codec_thread else 0.0))
        / max(audio, 1e-9),
        failures=sorted(set(problems)),
    )


def sweep(
    model: FreezeOmni, base: EngineSettings, questions: list[np.ndarray], args: argparse.Namespace
) -> list[RunResult]:
    """For each N, run every mode still going; a mode stops after `--stop-after` failing N in a row.

    Both modes run each N back to back (their order alternating), so machine load drifts alike.
    """
    failures_in_a_row = dict.fromkeys(args.modes, 0)
    runs: list[RunResult] = []
    for position, count in enumerate(n for n in args.sessions if n <= args.max_sessions):
        modes = list(args.modes)
        for mode in modes if position % 2 == 0 else modes[::-1]:
            if failures_in_a_row[mode] >= args.stop_after:
                continue
            settings, variant_model = variant(model, base, mode, count)
            run = asyncio.run(run_sessions(variant_model, settings, questions, mode, args))
            runs.append(run)
            print(_progress_line(run), flush=True)
            failures_in_a_row[mode] = 0 if run.real_time else failures_in_a_row[mode] + 1
        if min(failures_in_a_row.values()) >= args.stop_after:
            break
    return runs


def warm_up(
    model: FreezeOmni, base: EngineSettings, questions: list[np.ndarray], args: argparse.Namespace
) -> None:
    """A short unmeasured run per mode, so first-call costs do not land on N=1."""
    quick = argparse.Namespace(**{**vars(args), "duration": 4.0, "stagger": 0.1})
    for mode in args.modes:
        settings, variant_model = variant(model, base, mode, 2)
        asyncio.run(run_sessions(variant_model, settings, questions, "warm-up", quick))


_codecs: dict[tuple[int, torch.dtype], torch.nn.Module] = {}
_llms: dict[tuple[int, str], Qwen2Runtime] = {}
_plain_llm: dict[int, Qwen2Runtime] = {}  # id of a compacted copy -> the LLM as loaded


def with_llm_weights(model: FreezeOmni, weights: str) -> FreezeOmni:
    """The model with its LLM's linear layers in `weights` (`FREEZE_OMNI_LLM_WEIGHTS`): a copy of the LLM
    as loaded, compacted once per kind; `dtype` gives the LLM as loaded."""
    plain = _plain_llm.get(id(model.llm), model.llm)
    kind = resolve_linear_weights(weights, model.device, model.dtype)
    if kind == "dtype":
        return replace(model, llm=plain)
    key = (id(plain), kind)
    if key not in _llms:
        _llms[key] = copy.deepcopy(plain)
        compact_linears(_llms[key], kind)
        _plain_llm[id(_llms[key])] = plain
    return replace(model, llm=_llms[key])


def variant(
    model: FreezeOmni, base: EngineSettings, mode: str, count: int
) -> tuple[EngineSettings, FreezeOmni]:
    """The engine settings and the model of one mode: a `codec_dtype` key gives the model a copy of its
    codec in that dtype (made once), an `llm_weights` key a copy of its LLM with those linear weights
    (made once), the other keys override the engine's settings."""
    overrides = dict(VARIANTS[mode])
    model_keys = {key: overrides.pop(key) for key in MODEL_KEYS if key in overrides}
    if "codec_dtype" in model_keys:
        dtype = resolve_codec_dtype(model_keys["codec_dtype"], model.device)
        key = (id(model), dtype)
        if key not in _codecs:
            _codecs[key] = copy.deepcopy(model.codec).to(dtype)
        model = replace(model, codec=_codecs[key])
    if "llm_weights" in model_keys:
        model = with_llm_weights(model, str(model_keys["llm_weights"]))
    return replace(base, max_sessions=count, **overrides), model


# -- random Qwen2-7B-shaped weights --------------------------------------------------------------
def build_random_model(
    device: torch.device, dtype: torch.dtype, shrink: int, cmvn_audio: np.ndarray
) -> FreezeOmni:
    """A Freeze-Omni with the published dims (every width divided by `shrink`) and random weights.

    Modules are built on the meta device and given random storage directly in `dtype` on `device`,
    so a 7B LLM never exists in fp32. Random weights never sample the speech decoder's EOS nor much
    punctuation, and random codec audio has no quiet points: see `random_settings` and the server
    config below for how segments and packets are cut instead.
    """
    if shrink not in (1, 2, 4, 8, 16):
        raise SystemExit("--shrink must be 1, 2, 4, 8 or 16 (the codec needs a multiple of 32 channels)")
    folder = Path(tempfile.mkdtemp(prefix="random-7b-tokenizer-"))
    text_vocab = write_tokenizer(folder)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    hidden, width = 3584 // shrink, 1024 // shrink
    llm_config = Qwen2Config(
        vocab_size=max(152064 // shrink, (text_vocab + 63) // 64 * 64),
        hidden_size=hidden,
        intermediate_size=18944 // shrink,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        tie_word_embeddings=False,
        max_position_embeddings=32768,
        torch_dtype="bfloat16",
    )
    audio_config = AudioLLMConfig(
        encoder=EncoderConfig(
            input_dim=80,
            subsampling_input_dim=80,
            subsampling_output_dim=width,
            transformer_input_dim=width,
            attention_dim=width,
            attention_heads=16,
            linear_units=4096 // shrink,
            num_blocks=24,
            chunk_size=4,
            left_chunks=16,
            output_dim=width,
        ),
        adapter=AdapterConfig(enc_out_dim=width, llm_embed_dim=hidden),
        prompt_num=25,
        task_num=20,
        num_states=4,
        chat_template=CHAT_TEMPLATE,
        eod_id=im_end,
    )
    decoder_config = SpeechDecoderConfig(
        hidden_size=896 // shrink,
        codec_vocab=1024,
        num_heads=14,
        intermediate_size=4864 // shrink,
        num_blocks=4,
    )
    with torch.device("meta"):
        llm = Qwen2Runtime(llm_config)
        audio = AudioLLM(audio_config, hidden)
        decoder = SpeechDecoder(decoder_config)
    generator = torch.Generator(device=device).manual_seed(0)
    for module in (llm, audio, decoder):
        _randomize(module, device, dtype, generator)
    with torch.no_grad():
        # Logits spread like a trained model's; rows past the text vocabulary and unprintable
        # pieces never win, so answers are word pieces (as the tiny model does).
        llm.lm_head.weight.mul_(4.0)
        silent = [i for i in range(text_vocab) if not _printable(tokenizer, i, im_end)]
        llm.lm_head.weight[silent] = 0.0
        llm.lm_head.weight[text_vocab:] = 0.0
        decoder.out_fnn.bias[decoder_config.eos] = -30.0  # segments end at max_speech_tokens
    mean, istd = CmvnStats.from_features(fbank_whole(cmvn_audio)).mean_istd()
    audio.encoder.global_cmvn.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
    audio.encoder.global_cmvn.istd = torch.as_tensor(istd, dtype=torch.float32, device=device)
    for module, what in ((llm, "LLM"), (audio, "audio LLM"), (decoder, "speech decoder")):
        assert_materialized(module, what)
    codec = init_unit_gain(CodecDecoder(CodecConfig.tiny(channels=512 // shrink)), seed=0)
    codec = codec.to(device=device, dtype=torch.float32).eval()
    # Noise-like random audio is never quiet; cut every codec window at its quietest point, as
    # the published server does on real speech, which has pauses.
    server = ServerConfig(decoder_seg_threshold_first_pack=1.01, decoder_seg_threshold=1.01)
    template = ChatTemplate.parse(CHAT_TEMPLATE)
    prompt_tokens = PromptTokens(
        im_end=im_end,
        user_prefix=list(tokenizer.encode(template.user_prefix, add_special_tokens=False)),
        assistant_suffix=list(tokenizer.encode(template.assistant_suffix, add_special_tokens=False)),
    )
    return FreezeOmni(
        audio.eval(),
        llm.eval(),
        tokenizer,
        decoder.eval(),
        codec,
        server,
        template,
        prompt_tokens,
        device,
        dtype,
    )


def _randomize(
    module: nn.Module, device: torch.device, dtype: torch.dtype, generator: torch.Generator
) -> None:
    """Give every meta parameter storage: norms 1, biases 0, matrices N(0, 1/fan_in)."""
    for sub in module.modules():
        for name, param in list(sub.named_parameters(recurse=False)):
            value = torch.empty(param.shape, device=device, dtype=dtype)
            if param.dim() >= 2:
                value.normal_(0.0, 1.0 / math.sqrt(math.prod(param.shape[1:])), generator=generator)
            elif name == "weight" and isinstance(sub, nn.LayerNorm | RMSNorm):
                value.fill_(1.0)
            else:
                value.zero_()
            setattr(sub, name, nn.Parameter(value, requires_grad=False))


def _printable(tokenizer: object, token_id: int, im_end: int) -> bool:
    text = tokenizer.decode([token_id])
    return token_id == im_end or bool(
        text and "\ufffd" not in text and text.isprintable() and "<|" not in text
    )


def random_settings(base: EngineSettings) -> EngineSettings:
    """Segment cuts for random weights, whose speech decoder never ends a segment itself."""
    return replace(base, max_speech_tokens=RANDOM_SPEECH_PER_TEXT_TOKEN * base.max_segment_tokens)


# -- output ------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _progress_line(run: RunResult) -> str:
    verdict = "REAL TIME" if run.real_time else "not real time"
    why = "" if run.real_time else f" ({'; '.join(run.failures)[:120]})"
    rows = " ".join(f"{stage} {value:.1f}" for stage, value in run.rows_per_step.items())
    shares = " ".join(f"{stage} {100 * value:.0f}%" for stage, value in run.stage_share.items())
    return (
        f"  [{run.mode:>7}] N={run.sessions:<3} {verdict}{why}: {run.turns} turns, {run.chunks} chunks; "
        f"worst chunk lateness {_ms(run.worst_lateness_ms)} ms, worst audio deficit "
        f"{_ms(run.worst_deficit_ms)} ms (stall {_ms(run.worst_stall_ms)} ms); first audio p50 "
        f"{_ms(run.latency_p50_ms)} / p95 {_ms(run.latency_p95_ms)} ms; audio {run.audio_s:.1f} s in "
        f"{run.window_s:.0f} s = {run.audio_per_s:.2f} s/s; engine busy {100 * run.busy:.0f}%, step "
        f"{run.mean_step_ms:.1f} ms (longest {run.longest_step_ms:.0f} ms, CPU {run.cpu_per_step_ms:.1f} ms); "
        f"codec CPU {run.codec_cpu_per_s_ms:.0f} ms/s; engine CPU {run.engine_cpu_per_audio_s:.3f} s per s of "
        f"audio; {run.cores_used:.2f} cores; rows/step {rows}; "
        f"step time {shares}"
    )


CELL = f"{'RT':>3} {'turns':>5} {'late':>6} {'deficit':>7} {'p50':>6} {'p95':>6} {'audio/s':>7} {'busy':>5}"


def _cell(run: RunResult | None) -> str:
    if run is None:
        return f"{'(stopped)':^{len(CELL)}}"
    return (
        f"{'yes' if run.real_time else 'NO':>3} {run.turns:>5} {_ms(run.worst_lateness_ms):>6} "
        f"{_ms(run.worst_deficit_ms):>7} {_ms(run.latency_p50_ms):>6} {_ms(run.latency_p95_ms):>6} "
        f"{run.audio_per_s:>7.2f} {100 * run.busy:>4.0f}%"
    )


def summarize(runs: list[RunResult], modes: tuple[str, ...] = MODES) -> dict:
    """The side-by-side table, and the first mode against the second: capacity, latency and audio-rate
    ratios, and CPU per step."""
    by_key = {(r.mode, r.sessions): r for r in runs}
    counts = sorted({r.sessions for r in runs})
    header = f"{'N':>4} | " + " | ".join(f"{m:^{len(CELL)}}" for m in modes)
    sub = f"{'':>4} | " + " | ".join(CELL for _ in modes)
    print(f"\n{header}\n{sub}\n" + "-" * len(sub))
    for count in counts:
        print(f"{count:>4} | " + " | ".join(_cell(by_key.get((mode, count))) for mode in modes))
    print(LEGEND)
    best = {m: max((r.sessions for r in runs if r.mode == m and r.real_time), default=0) for m in modes}
    # "+": the largest N tried still kept real time, so the capacity may be higher.
    last = {m: max((r for r in runs if r.mode == m), key=lambda r: r.sessions, default=None) for m in modes}
    capped = {m: last[m] is not None and last[m].real_time for m in modes}
    summary: dict = {"max_real_time_sessions": best, "largest_n_tried_was_real_time": capped}
    print(
        "\nmost real-time sessions: " + ", ".join(f"{m} {best[m]}{'+' if capped[m] else ''}" for m in modes)
    )
    print(
        "CPU per step (engine thread) / codec lane CPU per second of window, ms; engine CPU per second of "
        "answer audio made, s: "
    )
    for count in counts:
        cells = [by_key.get((m, count)) for m in modes]
        print(
            f"  N={count:<3} "
            + " | ".join(
                f"{m}: {r.cpu_per_step_ms:.1f} / {r.codec_cpu_per_s_ms:.0f}; {r.engine_cpu_per_audio_s:.3f} "
                f"({r.cores_used:.2f} cores)"
                for m, r in zip(modes, cells, strict=True)
                if r is not None
            )
        )
    if len(modes) < 2:
        return summary
    new, old = modes[0], modes[1]
    if best[old]:
        summary["capacity_ratio"] = best[new] / best[old]
        at_least = ">= " if capped[new] else ""
        print(f"capacity {new} / {old}: {at_least}{summary['capacity_ratio']:.1f}x")
    else:
        print(f"capacity ratio undefined ({old} kept no N in real time)")
    if best[new] and best[old]:
        rates = {m: by_key[(m, best[m])].audio_per_s for m in (new, old)}
        summary["audio_per_s_at_capacity"] = rates
        summary["audio_rate_ratio"] = rates[new] / rates[old]
        print(
            f"audio made per second at that capacity: {new} {rates[new]:.2f} s/s (N={best[new]}),"
            f" {old} {rates[old]:.2f} s/s (N={best[old]})  ->  {summary['audio_rate_ratio']:.1f}x"
        )
    common = [
        n
        for n in counts
        if all(by_key.get((m, n)) and by_key[(m, n)].real_time for m in (new, old))
        and by_key[(old, n)].latency_p50_ms
        and by_key[(new, n)].latency_p50_ms
    ]
    if common:
        n = max(common)
        b1, bt = by_key[(old, n)], by_key[(new, n)]
        summary["latency_compared_at"] = n
        summary["latency_p50_ratio"] = b1.latency_p50_ms / bt.latency_p50_ms
        summary["latency_p95_ratio"] = b1.latency_p95_ms / bt.latency_p95_ms
        print(
            f"first-audio latency at N={n} (largest N both keep in real time): p50 {old} "
            f"{b1.latency_p50_ms:.0f} / {new} {bt.latency_p50_ms:.0f} ms = "
            f"{summary['latency_p50_ratio']:.2f}x, p95 {b1.latency_p95_ms:.0f} / "
            f"{bt.latency_p95_ms:.0f} ms = {summary['latency_p95_ratio']:.2f}x"
        )
    return summary


# -- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model-path", help="Freeze-Omni checkpoint folder (default: the embedded tiny model)"
    )
    parser.add_argument("--llm-path", help="its Qwen2 folder")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), fp32, bf16, fp16")
    parser.add_argument(
        "--codec-dtype",
        default="auto",
        help="the codec's dtype, as the server's FREEZE_OMNI_CODEC_DTYPE: auto (bf16 on CUDA and CPUs with "
        "native bf16, else fp32), float32, bfloat16; modes codec-fp32 / codec-bf16 compare the two",
    )
    parser.add_argument(
        "--llm-weights",
        default="auto",
        choices=LINEAR_WEIGHTS,
        help="the LLM's linear layers, as the server's FREEZE_OMNI_LLM_WEIGHTS: auto (int8 on a CPU with "
        "native bf16, else as loaded), dtype, bfloat16, int8; modes llm-dtype / llm-bf16 / llm-int8 compare them",
    )
    parser.add_argument(
        "--random-7b", action="store_true", help="Qwen2-7B-shaped random weights, no checkpoint"
    )
    parser.add_argument("--shrink", type=int, default=1, help="with --random-7b: divide every width by this")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (default on CPU: one fewer than the cores, left to the clients)",
    )
    parser.add_argument("--sessions", default="1,4,8,12,16,24,32,48,64,96,128", help="session counts to try")
    parser.add_argument("--max-sessions", type=int, default=128, help="never try more sessions than this")
    parser.add_argument(
        "--duration", type=float, default=20.0, help="seconds every conversation runs per N and mode"
    )
    parser.add_argument(
        "--pause", type=float, default=0.3, help="s between an answer's end and the next question"
    )
    parser.add_argument(
        "--stagger", type=float, default=1.0, help="first questions start spread over this many s"
    )
    parser.add_argument(
        "--segment-tokens",
        type=int,
        default=6,
        help="engine max_segment_tokens (text tokens per spoken segment)",
    )
    parser.add_argument("--max-answer-tokens", type=int, default=24, help="text tokens per answer")
    parser.add_argument(
        "--answer-seconds", type=float, default=6.0, help="a client stops an answer after this much audio"
    )
    parser.add_argument(
        "--grace", type=float, default=10.0, help="a run still waiting this long after the window fails"
    )
    parser.add_argument(
        "--stop-after", type=int, default=2, help="stop a mode after this many failing N in a row"
    )
    parser.add_argument("--slack-ms", type=float, default=20.0, help="allowed chunk-decision lateness")
    parser.add_argument("--audio-slack-ms", type=float, default=20.0, help="allowed audio deficit")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help=f"engine variants to compare, the first against the second ({', '.join(VARIANTS)}; "
        "default batched,batch-1); in-step is the step structure before the codec lane",
    )
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := [m for m in args.modes if m not in VARIANTS]:
        parser.error(f"unknown --modes {unknown}; choose from {', '.join(VARIANTS)}")
    args.sessions = sorted({int(n) for n in args.sessions.split(",") if n.strip()})
    if (args.model_path is None) != (args.llm_path is None):
        parser.error("give both --model-path and --llm-path, or neither")
    if args.segment_tokens < 1 or args.max_answer_tokens < 1 or args.duration <= 0:
        parser.error("--segment-tokens, --max-answer-tokens and --duration must be positive")
    return args


def engine_settings(args: argparse.Namespace, questions: list[np.ndarray]) -> EngineSettings:
    """The engine's settings for the sweep, with cache room for every turn of a window."""
    base = EngineSettings(
        max_answer_tokens=args.max_answer_tokens,
        max_segment_tokens=args.segment_tokens,
        seed=0,
        admission_max_load=0.0,  # every asked session is served: this measures serving, not admission
    )
    # A turn holds its opening (~30 positions), two per chunk, and the answer; a window holds at
    # most one turn per (shortest question + pause). Past the room the engine would re-read the
    # conversation, a cost a session only pays after many turns, not every few seconds.
    shortest = min(len(q) for q in questions) / INPUT_RATE
    longest_chunks = max(math.ceil(len(q) / CHUNK_SAMPLES) for q in questions)
    turns = math.ceil((args.duration + args.stagger) / (shortest + args.pause)) + 1
    per_turn = 64 + 2 * longest_chunks + args.max_answer_tokens
    return replace(base, llm_max_len=base.turn_reserve + 256 + turns * per_turn)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    if args.threads > 0 or device.type == "cpu":
        # The simulated clients and the engine's event loop need a core of their own.
        torch.set_num_threads(args.threads or max(1, torch.get_num_threads() - 1))
    questions, source = spoken_questions(16)
    base = engine_settings(args, questions)
    loading = time.perf_counter()
    if args.random_7b:
        model = build_random_model(device, dtype, args.shrink, np.concatenate(questions))
        base = random_settings(base)
        what = f"random Qwen2-7B-shaped weights, widths / {args.shrink}"
    else:
        if args.model_path is None:
            paths = ensure_default_model()
            args.model_path, args.llm_path = str(paths.model_path), str(paths.llm_path)
        model = load_freeze_omni(args.model_path, args.llm_path, device=device, dtype=dtype)
        what = f"{args.model_path} + {args.llm_path}"
    codec_dtype = resolve_codec_dtype(args.codec_dtype, device)
    model = replace(model, codec=model.codec.to(codec_dtype))
    what += f", codec in {codec_dtype}"
    params = sum(
        p.numel() for m in (model.llm, model.audio, model.decoder, model.codec) for p in m.parameters()
    )
    model = with_llm_weights(model, args.llm_weights)
    what += f", LLM linear weights {resolve_linear_weights(args.llm_weights, device, model.dtype)}"
    if device.type == "cpu":
        what += f", {torch.get_num_threads()} torch thread{'s' if torch.get_num_threads() > 1 else ''}"
    ready = time.perf_counter() - loading
    print(f"model: {what} ({params / 1e6:.1f} M parameters, {device}, {dtype}), ready in {ready:.1f} s")
    speech = (
        f"{base.max_speech_tokens} codec tokens"
        if args.random_7b
        else "the decoder's own end (max " + str(base.max_speech_tokens) + " codec tokens)"
    )
    print(
        f"conversations: {len(questions)} questions from {source}, "
        f"{min(map(len, questions)) / INPUT_RATE:.1f}-{max(map(len, questions)) / INPUT_RATE:.1f} s, "
        f"asked for {args.duration:.0f} s (+{args.stagger:.0f} s of staggered starts), "
        f"{args.pause:.1f} s pause after each answer\n"
        f"answers: up to {args.max_answer_tokens} text tokens in segments of up to "
        f"{base.max_segment_tokens}, each spoken until {speech}; clients stop an answer after "
        f"{args.answer_seconds:.0f} s of audio\n"
        f"engine: batched max_batch={base.max_batch}, LLM room {base.llm_max_len} tokens per session; "
        f"slack {args.slack_ms:.0f} ms (chunks) / {args.audio_slack_ms:.0f} ms (audio)"
    )
    warm_up(model, base, questions, args)
    started = time.perf_counter()
    runs = sweep(model, base, questions, args)
    summary = summarize(runs, tuple(args.modes))
    print(f"sweep took {time.perf_counter() - started:.0f} s")
    if args.json:
        results = {"settings": vars(args), "runs": [asdict(r) for r in runs], "summary": summary}
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
