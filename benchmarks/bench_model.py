"""Model-core timings: one listen chunk, one LLM token, one speech token, one codec window, one turn.

    python benchmarks/bench_model.py [--model-path M --llm-path L] [--device cpu] [--repeat N]

Without paths it measures the embedded tiny model (made on first use). Input audio is synthetic
(a chirp plus noise), so nothing but the model is needed. Every figure is measured in this one run,
side by side; see benchmarks/README.md for what each one means.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.model import INPUT_RATE, OUTPUT_RATE, InferOptions, OfflinePipeline  # noqa: E402
from app.model.checkpoint_io.layout import FreezeOmni, load_freeze_omni  # noqa: E402
from app.model.llm.duplex import decide_state  # noqa: E402
from app.model.llm.kv_cache import SlotKVCache  # noqa: E402
from app.model.llm.qwen2 import LLMRow  # noqa: E402
from app.model.speech_in.encoder import EncoderState  # noqa: E402
from app.model.speech_in.frontend import StreamingFbank  # noqa: E402
from app.model.speech_out.codec_stream import decode_windows  # noqa: E402
from app.model.speech_out.speech_decoder import SegmentInput, reshape_llm_vectors  # noqa: E402
from app.model.turn_parts import (  # noqa: E402
    answer_start_embeds,
    system_prefill_embeds,
    turn_opening_embeds,
)

BATCH_SIZES = (1, 4, 16)


@dataclass
class Figure:
    """One measured quantity: per-call seconds."""

    name: str
    samples: list[float]

    @property
    def median_ms(self) -> float:
        return 1000 * statistics.median(self.samples)

    @property
    def p90_ms(self) -> float:
        return 1000 * float(np.percentile(self.samples, 90))


def synthetic_speech(seconds: float, seed: int) -> np.ndarray:
    """A rising chirp with a slow tremolo plus noise: fbank-shaped like speech, no espeak needed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * INPUT_RATE)) / INPUT_RATE
    chirp = np.sin(2 * np.pi * (150 + 400 * t / max(seconds, 1e-3)) * t)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t + seed)
    return (0.3 * chirp * envelope + 0.03 * rng.standard_normal(t.shape)).astype(np.float32)


class Timer:
    """Wall-clock per call, synchronising the accelerator so queued kernels are counted."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __call__(self, step: Callable[[], object], count: int, warmup: int) -> list[float]:
        for _ in range(warmup):
            step()
        self.sync()
        times = []
        for _ in range(count):
            start = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - start)
        return times


@dataclass
class ListenSessions:
    """B sessions listening side by side: one LLM cache slot, fbank and encoder state each."""

    model: FreezeOmni
    cache: SlotKVCache
    slots: list[int]
    fbanks: list[StreamingFbank]
    encoder_states: list[EncoderState]
    adapter_caches: list[torch.Tensor | None]
    audio: list[np.ndarray]
    chunks_done: int = 0

    @classmethod
    def start(cls, model: FreezeOmni, batch: int, chunks: int, extra_tokens: int = 0) -> ListenSessions:
        """Prefill every session's system prompt, ready for its first chunk."""
        cache = model.llm.new_cache(num_slots=batch, max_len=256 + 2 * chunks + extra_tokens)
        slots = [cache.allocate() for _ in range(batch)]
        prompt = system_prefill_embeds(model, None)
        model.llm.forward_rows([LLMRow(slot, prompt) for slot in slots], cache)
        fbank = StreamingFbank()
        seconds = (chunks + 1) * fbank.chunk_samples / INPUT_RATE
        return cls(
            model=model,
            cache=cache,
            slots=slots,
            fbanks=[StreamingFbank() for _ in range(batch)],
            encoder_states=[model.audio.encoder.new_state() for _ in range(batch)],
            adapter_caches=[None] * batch,
            audio=[synthetic_speech(seconds, seed) for seed in range(batch)],
        )

    def features(self, index: int) -> torch.Tensor:
        """Chunk `index`'s fbank for every session, (B, 19, 80); chunks must come in order."""
        rows = []
        for fbank, audio in zip(self.fbanks, self.audio, strict=True):
            size = fbank.chunk_samples
            rows.append(fbank.accept_chunk(audio[index * size : (index + 1) * size]))
        return torch.from_numpy(np.stack(rows))

    def step(self, feats: torch.Tensor) -> None:
        """Encoder, adapter, one LLM listen step and the state rule, for every session at once."""
        model = self.model
        vectors, self.adapter_caches = model.audio.encode_chunks(
            feats.to(model.device), self.encoder_states, self.adapter_caches
        )
        if self.chunks_done == 0:
            opening = turn_opening_embeds(model)
            rows = [
                LLMRow(s, torch.cat([opening, v.to(opening.dtype)]))
                for s, v in zip(self.slots, vectors, strict=True)
            ]
        else:
            rows = [LLMRow(s, v) for s, v in zip(self.slots, vectors, strict=True)]
        out = model.llm.forward_rows(rows, self.cache)
        for hidden in out.hidden:
            decide_state(model.audio.state_logits(hidden))
        self.chunks_done += 1


@torch.inference_mode()
def bench_listen(model: FreezeOmni, timer: Timer, repeat: int, warmup: int) -> dict[str, Figure]:
    """Per 160 ms chunk: fbank + step at batch 1, and the step alone at every batch size."""
    figures = {}
    chunks = repeat + warmup + 1
    sessions = ListenSessions.start(model, 1, chunks)
    sessions.step(sessions.features(0))  # the turn opening rides on the first chunk: not typical
    figures["chunk"] = Figure(
        "listen chunk: fbank+enc+adapter+LLM (B=1)",
        timer(lambda: sessions.step(sessions.features(sessions.chunks_done)), repeat, warmup),
    )
    for batch in BATCH_SIZES:
        sessions = ListenSessions.start(model, batch, chunks)
        # fbank runs per session on the CPU; compute it first so only the batched step is timed.
        feats = [sessions.features(index) for index in range(chunks)]
        sessions.step(feats[0])
        figures[f"batch{batch}"] = Figure(
            f"enc+adapter+LLM listen step (B={batch})",
            timer(lambda s=sessions, f=feats: s.step(f[s.chunks_done]), repeat, warmup),
        )
    return figures


@torch.inference_mode()
def bench_llm_decode(
    model: FreezeOmni, timer: Timer, repeat: int, warmup: int
) -> tuple[Figure, torch.Tensor]:
    """Per answer token (batch 1), after a listened chunk; also returns the hidden rows produced."""
    sessions = ListenSessions.start(model, 1, 1, extra_tokens=repeat + warmup + 16)
    sessions.step(sessions.features(0))
    cache, slot = sessions.cache, sessions.slots[0]
    out = model.llm.forward_rows([LLMRow(slot, answer_start_embeds(model), want_logits=True)], cache)
    hidden_rows: list[torch.Tensor] = []
    state = {"out": out}

    def step() -> None:
        # Argmax, fed back whatever it is (EOD too): only the cost of a step matters here.
        token = int(state["out"].logits[0].argmax())
        state["out"] = model.llm.forward_rows(
            [LLMRow(slot, model.llm.embed([token]), want_logits=True)], cache
        )
        hidden_rows.append(state["out"].hidden[0])

    times = timer(step, repeat, warmup)
    return Figure("LLM decode token (B=1)", times), torch.stack(hidden_rows[:16])


@torch.inference_mode()
def bench_speech_decoder(
    model: FreezeOmni, hidden_rows: torch.Tensor, timer: Timer, repeat: int, warmup: int
) -> Figure:
    """Per speech token (batch 1), conditioned on a 16-token segment; EOS is never taken."""
    decoder = model.decoder
    width = decoder.config.hidden_size
    prefix = reshape_llm_vectors(hidden_rows.to(decoder.dtype), width)
    text = reshape_llm_vectors(
        model.llm.embed(model.tokenize("What is two plus two?")).to(decoder.dtype), width
    )
    cache = decoder.new_cache(num_slots=1, max_len=prefix.shape[0] + text.shape[0] + 4 + repeat + warmup)
    slot = cache.allocate()
    rows = decoder.prepare_segments([SegmentInput(slot, prefix, text)], cache)
    state = {"logits": decoder.forward_ar(rows, cache, [prefix.shape[0]])}
    eos = decoder.config.eos

    def step() -> None:
        logits = decoder.mask_non_codes(state["logits"][0])
        logits[eos] = float("-inf")
        token = int(logits.argmax())
        state["logits"] = decoder.forward_ar(decoder.token_rows([slot], [token]), cache, [prefix.shape[0]])

    return Figure("speech decoder token (B=1)", timer(step, repeat, warmup))


@torch.inference_mode()
def bench_codec(model: FreezeOmni, timer: Timer, repeat: int, warmup: int) -> list[Figure]:
    """One generator call per streaming window: the first window's size and the steady one's."""
    from app.model.speech_out.codec_stream import DecodeWindow

    server = model.server
    overlap = server.decoder_chunk_overlap_size
    sizes = {
        "first": server.decoder_first_chunk_size + overlap,
        "steady": overlap + server.decoder_chunk_size + overlap,
    }
    rng = np.random.default_rng(0)
    figures = []
    for label, size in sizes.items():
        ids = tuple(int(t) for t in rng.integers(0, model.codec.config.n_codes, size))
        window = DecodeWindow(0, ids, 0, None, True, 0.0)
        times = timer(lambda w=window: decode_windows(model.codec, [w]), repeat, warmup)
        figures.append(Figure(f"codec window, {label} ({size} tokens)", times))
    return figures


def bench_turns(model: FreezeOmni, timer: Timer, turns: int, seconds: float) -> tuple[Figure, float, float]:
    """Whole offline turns on synthetic input; returns (per-turn time, input s, mean output s)."""
    pipeline = OfflinePipeline(model)
    question = synthetic_speech(seconds, seed=123)
    output_seconds: list[float] = []

    def turn() -> None:
        result = pipeline.run(question, InferOptions())
        output_seconds.append(len(result.audio) / OUTPUT_RATE)

    times = timer(turn, turns, 1)
    return Figure("offline turn", times), seconds, statistics.mean(output_seconds[1:])


def _cells(row: tuple[str, ...], widths: list[int]) -> str:
    # the first column reads as a label (left), the rest as numbers (right)
    return "  ".join(
        cell.ljust(width) if i == 0 else cell.rjust(width)
        for i, (cell, width) in enumerate(zip(row, widths, strict=True))
    )


def print_table(title: str, rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = _cells(header, widths)
    print(f"\n{title}\n{line}\n{'-' * len(line)}")
    for row in rows:
        print(_cells(row, widths))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model-path", type=Path, help="Freeze-Omni checkpoint folder (default: the tiny model)"
    )
    parser.add_argument("--llm-path", type=Path, help="Qwen2 folder (with --model-path)")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--dtype", default="auto", help="auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, ..."
    )
    parser.add_argument("--repeat", type=int, default=50, help="timed calls per figure (default 50)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    parser.add_argument("--turns", type=int, default=3, help="timed offline turns (default 3)")
    parser.add_argument(
        "--turn-seconds", type=float, default=3.0, help="input length of a turn (default 3 s)"
    )
    args = parser.parse_args(argv)
    if (args.model_path is None) != (args.llm_path is None):
        parser.error("give both --model-path and --llm-path, or neither (the tiny default model)")
    if args.repeat < 1 or args.turns < 1:
        parser.error("--repeat and --turns must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.model_path is None:
        from app.model.checkpoint_io.defaults import ensure_default_model

        paths = ensure_default_model()
        args.model_path, args.llm_path = paths.model_path, paths.llm_path
    model = load_freeze_omni(args.model_path, args.llm_path, device=args.device, dtype=args.dtype)
    timer = Timer(model.device)
    llm = model.llm.config
    print(
        f"model {args.model_path} + {args.llm_path}\n"
        f"device {model.device}, dtype {model.dtype}, torch threads {torch.get_num_threads()}, "
        f"LLM {llm.num_hidden_layers} layers x {llm.hidden_size}, repeat {args.repeat}, warmup {args.warmup}"
    )

    listen = bench_listen(model, timer, args.repeat, args.warmup)
    decode, hidden_rows = bench_llm_decode(model, timer, args.repeat, args.warmup)
    speech = bench_speech_decoder(model, hidden_rows, timer, args.repeat, args.warmup)
    codec = bench_codec(model, timer, args.repeat, args.warmup)
    turn, input_s, output_s = bench_turns(model, timer, args.turns, args.turn_seconds)

    per_call = [listen["chunk"], decode, speech, *codec, turn]
    print_table(
        "per call (batch 1)",
        [(f.name, f"{f.median_ms:.3f}", f"{f.p90_ms:.3f}", str(len(f.samples))) for f in per_call],
        ("figure", "median ms", "p90 ms", "n"),
    )
    chunk_ms = 1000 * StreamingFbank().chunk_samples / INPUT_RATE
    rtf = statistics.median(turn.samples) / (input_s + output_s)
    print(
        f"\nlisten chunk uses {listen['chunk'].median_ms / chunk_ms:.1%} of its {chunk_ms:.0f} ms of audio; "
        f"offline turn: {input_s:.2f} s in + {output_s:.2f} s out, real-time factor {rtf:.3f} "
        f"(processing / (input + output) seconds, median of {len(turn.samples)})"
    )

    single = listen["batch1"].median_ms
    rows = []
    for batch in BATCH_SIZES:
        figure = listen[f"batch{batch}"]
        per_session = figure.median_ms / batch
        rows.append(
            (
                str(batch),
                f"{figure.median_ms:.3f}",
                f"{figure.p90_ms:.3f}",
                f"{per_session:.3f}",
                f"{single / per_session:.2f}x",
            )
        )
    print_table(
        "listen step batched (encoder + adapter + LLM + state rule, per 160 ms chunk)",
        rows,
        ("sessions", "step median ms", "step p90 ms", "per session ms", "speedup/session"),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
