"""Engine capacity: how many simulated real-time conversations one replica keeps in real time.

    python benchmarks/bench_engine.py [--model-path M --llm-path L] [--device cuda] [--json]
    python benchmarks/bench_engine.py --random-7b --device cuda      # Qwen2-7B-shaped random weights
    python benchmarks/bench_engine.py --random-7b --shrink 16        # the same code path, CPU-sized

Every simulated session streams a spoken question into the engine at real-time pace (one 160 ms
chunk every 160 ms, `act=False`), commits the turn when its audio ends, and consumes the answer's
events as a client would. For each number of sessions N the script checks that every session stayed
real time and measures first-audio latency, once with batching (the engine's `max_batch`) and once
with every forward forced to batch 1 (`max_batch=1`), interleaved in this one run. See
benchmarks/README.md for what each figure means.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.engine.engine import CHUNK_SAMPLES, AnswerStream, Engine  # noqa: E402
from app.engine.events import AnswerDone, AudioDelta  # noqa: E402
from app.engine.settings import EngineSettings  # noqa: E402
from app.model.adapter import AdapterConfig  # noqa: E402
from app.model.audio_llm import AudioLLM, AudioLLMConfig  # noqa: E402
from app.model.checkpoint import FreezeOmni, load_freeze_omni, resolve_dtype  # noqa: E402
from app.model.cmvn import CmvnStats  # noqa: E402
from app.model.codec import CodecConfig, CodecDecoder, init_unit_gain  # noqa: E402
from app.model.codec_stream import ServerConfig  # noqa: E402
from app.model.defaults import ensure_default_model  # noqa: E402
from app.model.duplex import IM_END, ChatTemplate, PromptTokens  # noqa: E402
from app.model.encoder import EncoderConfig  # noqa: E402
from app.model.frontend import fbank_whole  # noqa: E402
from app.model.llm import Qwen2Config, Qwen2Runtime  # noqa: E402
from app.model.pipeline import INPUT_RATE, OUTPUT_RATE  # noqa: E402
from app.model.speech_decoder import SpeechDecoder, SpeechDecoderConfig  # noqa: E402
from app.model.tiny import CHAT_TEMPLATE  # noqa: E402
from app.model.tiny_llm import write_tokenizer  # noqa: E402
from app.model.transformer import RMSNorm  # noqa: E402
from app.model.wav import read_wav, resample  # noqa: E402
from app.model.weights import assert_materialized  # noqa: E402

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
LEGEND = """\
(RT: every session kept real time; late: worst chunk verdict time minus the next chunk's due time;
 deficit: worst (time since first audio - audio received) at a packet; p50/p95: first-audio latency
 after the commit; all in ms. rows: LLM rows per step; in batch-1 mode they run as separate forwards)"""
MODES = {"batched": None, "batch-1": 1}  # max_batch override per mode (None: the engine default)


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


# -- one simulated client ------------------------------------------------------------------------
@dataclass
class SessionResult:
    """What one simulated client saw. Times in seconds; lateness and deficit < 0 mean margin."""

    worst_lateness: float = math.inf  # decision time - when the next chunk was due, worst chunk
    worst_deficit: float | None = None  # elapsed since first audio - audio produced, at each packet
    worst_stall: float | None = None  # how long playback had run dry when a packet came (info only)
    first_audio_latency: float | None = None  # commit -> first AudioDelta
    audio_seconds: float = 0.0
    status: str = "not finished"
    error: str = ""

    def real_time(self, slack: float, audio_slack: float) -> bool:
        return (
            not self.error
            and self.status in ("completed", "capped")
            and self.first_audio_latency is not None
            and self.worst_lateness <= slack
            and self.worst_deficit is not None
            and self.worst_deficit <= audio_slack
        )


async def _sleep_until(moment: float) -> None:
    delay = moment - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _timed_decision(engine: Engine, session_id: str, chunk: np.ndarray, due: float) -> float:
    await engine.feed_chunk(session_id, chunk, act=False)
    return time.perf_counter() - due


async def simulate_session(
    engine: Engine, wav: np.ndarray, start_at: float, answer_cap_s: float, result: SessionResult
) -> None:
    """Stream `wav` in real time, commit, then play the answer back; fills `result` as it goes."""
    session_id = await engine.open_session()
    try:
        await _sleep_until(start_at)
        await engine.begin_listen(session_id)
        decisions: list[asyncio.Task[float]] = []
        for index, chunk in enumerate(chunks_of(wav)):
            sent_at = start_at + (index + 1) * CHUNK_S  # the chunk's audio is complete now
            await _sleep_until(sent_at)
            due = sent_at + CHUNK_S  # its verdict must be back before the next chunk is
            decisions.append(asyncio.create_task(_timed_decision(engine, session_id, chunk, due)))
        committed_at = start_at + len(decisions) * CHUNK_S
        stream = await engine.commit_listen(session_id)
        result.worst_lateness = max(await asyncio.gather(*decisions))
        if stream is None:
            result.status, result.error = "no answer", "the turn was dropped"
            return
        await _play(engine, session_id, stream, committed_at, answer_cap_s, result)
    finally:
        await engine.close_session(session_id)


async def _play(
    engine: Engine,
    session_id: str,
    stream: AnswerStream,
    committed_at: float,
    answer_cap_s: float,
    result: SessionResult,
) -> None:
    """Consume the answer as a player would: playback starts at the first packet."""
    first_at: float | None = None
    capped = False
    async for event in stream:
        if not isinstance(event, AudioDelta):
            continue
        now = time.perf_counter()
        if first_at is None:
            first_at = now
            result.first_audio_latency = now - committed_at
        elapsed = now - first_at
        if result.audio_seconds > 0:  # the audio queued so far ran out at first_at + audio_seconds
            result.worst_stall = _worst(result.worst_stall, elapsed - result.audio_seconds)
        result.audio_seconds += len(event.samples) / OUTPUT_RATE
        result.worst_deficit = _worst(result.worst_deficit, elapsed - result.audio_seconds)
        if not capped and result.audio_seconds >= answer_cap_s:
            capped = True  # the listener has heard enough: stop it, as a client would
            await engine.cancel_answer(session_id, "benchmark cap")
    done: AnswerDone = stream.done
    result.status = "capped" if capped and done.status == "cancelled" else str(done.status)
    if done.status == "failed":
        result.error = done.reason


def _worst(current: float | None, value: float) -> float:
    return value if current is None else max(current, value)


# -- one run: N sessions on a fresh engine -------------------------------------------------------
@dataclass
class RunResult:
    """N sessions in one mode, and the engine's own counters for the run."""

    mode: str
    sessions: int
    real_time: bool
    timed_out: bool
    wall_s: float
    worst_lateness_ms: float
    worst_deficit_ms: float | None
    worst_stall_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    llm_rows_per_step: float
    mean_step_ms: float
    failures: list[str] = field(default_factory=list)


async def run_sessions(
    model: FreezeOmni, settings: EngineSettings, wavs: list[np.ndarray], mode: str, args: argparse.Namespace
) -> RunResult:
    """Run `settings.max_sessions` simulated clients at once and judge whether all kept real time."""
    count = settings.max_sessions
    engine = Engine(model, settings, name=f"{mode}-{count}")
    await engine.start()
    results = [SessionResult() for _ in range(count)]
    started = time.perf_counter()
    base = started + 0.2
    # Starts spread over `stagger` seconds: not all in one step, yet overlapping almost fully.
    tasks = [
        asyncio.create_task(
            simulate_session(
                engine, wavs[i % len(wavs)], base + i * args.stagger / count, args.answer_seconds, results[i]
            )
        )
        for i in range(count)
    ]
    done, pending = await asyncio.wait(tasks, timeout=args.seconds_per_n)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    wall = time.perf_counter() - started
    stats = engine.stats
    await engine.stop()
    for task, result in zip(tasks, results, strict=True):
        if task in done and task.exception() is not None:
            result.error = f"{type(task.exception()).__name__}: {task.exception()}"
        elif task in pending:
            result.error = f"not finished within {args.seconds_per_n:.0f} s"
    slack, audio_slack = args.slack_ms / 1000, args.audio_slack_ms / 1000
    latencies = [r.first_audio_latency for r in results if r.first_audio_latency is not None]
    deficits = [r.worst_deficit for r in results if r.worst_deficit is not None]
    stalls = [r.worst_stall for r in results if r.worst_stall is not None]
    forwards = stats.forwards_with_rows.get("llm", 0)
    return RunResult(
        mode=mode,
        sessions=count,
        real_time=all(r.real_time(slack, audio_slack) for r in results),
        timed_out=bool(pending),
        wall_s=wall,
        worst_lateness_ms=1000 * max(r.worst_lateness for r in results),
        worst_deficit_ms=1000 * max(deficits) if deficits else None,
        worst_stall_ms=1000 * max(stalls) if stalls else None,
        latency_p50_ms=1000 * float(np.percentile(latencies, 50)) if latencies else None,
        latency_p95_ms=1000 * float(np.percentile(latencies, 95)) if latencies else None,
        llm_rows_per_step=stats.rows.get("llm", 0) / forwards if forwards else 0.0,
        mean_step_ms=1000 * stats.step_seconds / stats.steps if stats.steps else 0.0,
        failures=sorted({r.error or r.status for r in results if not r.real_time(slack, audio_slack)}),
    )


def sweep(
    model: FreezeOmni, base: EngineSettings, wavs: list[np.ndarray], args: argparse.Namespace
) -> list[RunResult]:
    """For each N, run every mode still going; a mode stops after `--stop-after` failing N in a row.

    Both modes run each N back to back, so machine load drifts alike for both.
    """
    failures_in_a_row = dict.fromkeys(MODES, 0)
    runs: list[RunResult] = []
    for count in [n for n in args.sessions if n <= args.max_sessions]:
        for mode, max_batch in MODES.items():
            if failures_in_a_row[mode] >= args.stop_after:
                continue
            settings = replace(base, max_sessions=count, max_batch=max_batch or base.max_batch)
            run = asyncio.run(run_sessions(model, settings, wavs, mode, args))
            runs.append(run)
            print(_progress_line(run), flush=True)
            failures_in_a_row[mode] = 0 if run.real_time else failures_in_a_row[mode] + 1
        if min(failures_in_a_row.values()) >= args.stop_after:
            break
    return runs


def warm_up(model: FreezeOmni, base: EngineSettings, wavs: list[np.ndarray]) -> None:
    """Two unmeasured turns, one per mode, so first-call costs do not land on N=1."""
    args = argparse.Namespace(
        stagger=0.1, answer_seconds=1.0, seconds_per_n=120.0, slack_ms=1e9, audio_slack_ms=1e9
    )
    for max_batch in (base.max_batch, 1):
        settings = replace(base, max_sessions=2, max_batch=max_batch)
        asyncio.run(run_sessions(model, settings, wavs, "warm-up", args))


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
    """Segment cuts for random weights: about 10 codec tokens per text token, ordinary speech."""
    return replace(base, max_segment_tokens=20, max_speech_tokens=200)


# -- output ------------------------------------------------------------------------------------
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _progress_line(run: RunResult) -> str:
    verdict = "REAL TIME" if run.real_time else "not real time"
    why = "" if run.real_time else f" ({'; '.join(run.failures)[:120]})"
    return (
        f"  [{run.mode:>7}] N={run.sessions:<3} {verdict}{why}: worst chunk lateness "
        f"{_ms(run.worst_lateness_ms)} ms, worst audio deficit {_ms(run.worst_deficit_ms)} ms (stall "
        f"{_ms(run.worst_stall_ms)} ms), first audio "
        f"p50 {_ms(run.latency_p50_ms)} / p95 {_ms(run.latency_p95_ms)} ms, LLM rows/step "
        f"{run.llm_rows_per_step:.1f}, step {run.mean_step_ms:.1f} ms, {run.wall_s:.1f} s"
    )


def summarize(runs: list[RunResult]) -> dict:
    """The side-by-side table, the capacity ratio and the latency ratio."""
    by_key = {(r.mode, r.sessions): r for r in runs}
    counts = sorted({r.sessions for r in runs})
    header = f"{'N':>4} | " + " | ".join(f"{m:^40}" for m in MODES)
    sub = f"{'':>4} | " + " | ".join(
        f"{'RT':>3} {'late':>6} {'deficit':>7} {'p50':>6} {'p95':>6} {'rows':>5}" for _ in MODES
    )
    print(f"\n{header}\n{sub}\n" + "-" * len(sub))
    for count in counts:
        cells = []
        for mode in MODES:
            run = by_key.get((mode, count))
            if run is None:
                cells.append(f"{'(stopped)':^40}")
                continue
            verdict = "yes" if run.real_time else "NO"
            cells.append(
                f"{verdict:>3} {_ms(run.worst_lateness_ms):>6} {_ms(run.worst_deficit_ms):>7} "
                f"{_ms(run.latency_p50_ms):>6} {_ms(run.latency_p95_ms):>6} {run.llm_rows_per_step:>5.1f}"
            )
        print(f"{count:>4} | " + " | ".join(cells))
    print(LEGEND)
    best = {m: max((r.sessions for r in runs if r.mode == m and r.real_time), default=0) for m in MODES}
    # "+": the largest N tried still kept real time, so the capacity may be higher.
    last = {m: max((r for r in runs if r.mode == m), key=lambda r: r.sessions, default=None) for m in MODES}
    capped = {m: last[m] is not None and last[m].real_time for m in MODES}
    summary: dict = {"max_real_time_sessions": best, "largest_n_tried_was_real_time": capped}
    label = {m: f"{best[m]}{'+' if capped[m] else ''}" for m in MODES}
    print(f"\nmost real-time sessions: batched {label['batched']}, batch-1 {label['batch-1']}", end="")
    if best["batch-1"]:
        summary["capacity_ratio"] = best["batched"] / best["batch-1"]
        at_least = ">= " if capped["batched"] else ""
        print(f"  ->  ratio {at_least}{summary['capacity_ratio']:.1f}x (the aim is >= 8x)")
    else:
        print("  ->  ratio undefined (batch-1 kept no N in real time)")
    common = [n for n in counts if all(by_key.get((m, n)) and by_key[(m, n)].real_time for m in MODES)]
    if common:
        n = max(common)
        b1, bt = by_key[("batch-1", n)], by_key[("batched", n)]
        summary["latency_compared_at"] = n
        summary["latency_p50_ratio"] = b1.latency_p50_ms / bt.latency_p50_ms
        print(
            f"first-audio latency p50 at N={n} (largest N both keep in real time): batch-1 "
            f"{b1.latency_p50_ms:.0f} ms / batched {bt.latency_p50_ms:.0f} ms "
            f"= {summary['latency_p50_ratio']:.2f}x"
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
        "--random-7b", action="store_true", help="Qwen2-7B-shaped random weights, no checkpoint"
    )
    parser.add_argument("--shrink", type=int, default=1, help="with --random-7b: divide every width by this")
    parser.add_argument("--max-answer-tokens", type=int, default=48, help="text tokens per answer")
    parser.add_argument(
        "--answer-seconds", type=float, default=4.0, help="a client stops an answer after this much audio"
    )
    parser.add_argument(
        "--sessions", default="1,2,4,8,12,16,24,32,48,64,96,128", help="session counts to try"
    )
    parser.add_argument("--max-sessions", type=int, default=128, help="never try more sessions than this")
    parser.add_argument(
        "--seconds-per-n", type=float, default=30.0, help="a run still going after this fails"
    )
    parser.add_argument(
        "--stagger", type=float, default=0.5, help="session starts are spread over this many s"
    )
    parser.add_argument(
        "--stop-after", type=int, default=2, help="stop a mode after this many failing N in a row"
    )
    parser.add_argument("--slack-ms", type=float, default=20.0, help="allowed chunk-decision lateness")
    parser.add_argument("--audio-slack-ms", type=float, default=20.0, help="allowed audio deficit")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON object")
    args = parser.parse_args(argv)
    args.sessions = sorted({int(n) for n in args.sessions.split(",") if n.strip()})
    if (args.model_path is None) != (args.llm_path is None):
        parser.error("give both --model-path and --llm-path, or neither")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    wavs, source = spoken_questions(16)
    base = EngineSettings(max_answer_tokens=args.max_answer_tokens, seed=0)
    # Room for the system prompt and one turn; attention only reads the used part of a slot.
    base = replace(base, llm_max_len=base.turn_reserve + 256)
    loading = time.perf_counter()
    if args.random_7b:
        model = build_random_model(device, dtype, args.shrink, np.concatenate(wavs))
        base = random_settings(base)
        what = f"random Qwen2-7B-shaped weights, widths / {args.shrink}"
    else:
        if args.model_path is None:
            paths = ensure_default_model()
            args.model_path, args.llm_path = str(paths.model_path), str(paths.llm_path)
        model = load_freeze_omni(args.model_path, args.llm_path, device=device, dtype=dtype)
        what = f"{args.model_path} + {args.llm_path}"
    if device.type == "cpu":
        what += f", {torch.get_num_threads()} torch threads"
    params = sum(
        p.numel() for m in (model.llm, model.audio, model.decoder, model.codec) for p in m.parameters()
    )
    ready = time.perf_counter() - loading
    print(f"model: {what} ({params / 1e6:.1f} M parameters, {device}, {dtype}), ready in {ready:.1f} s")
    print(
        f"input: {len(wavs)} questions from {source}, {min(map(len, wavs)) / INPUT_RATE:.1f}-"
        f"{max(map(len, wavs)) / INPUT_RATE:.1f} s; answers up to {args.max_answer_tokens} tokens and "
        f"{args.answer_seconds:.0f} s of audio; batched max_batch={base.max_batch}; slack "
        f"{args.slack_ms:.0f} ms (chunks) / {args.audio_slack_ms:.0f} ms (audio); "
        f"cap {args.seconds_per_n:.0f} s per run"
    )
    warm_up(model, base, wavs)
    started = time.perf_counter()
    runs = sweep(model, base, wavs, args)
    summary = summarize(runs)
    print(f"sweep took {time.perf_counter() - started:.0f} s")
    if args.json:
        results = {"settings": vars(args), "runs": [asdict(r) for r in runs], "summary": summary}
        print(json.dumps(results, default=str))


if __name__ == "__main__":
    main()
