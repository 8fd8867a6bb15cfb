"""What each stage of an engine step costs on this CPU: the same fixed work, timed by the thread's CPU clock.

    python benchmarks/bench_stages.py [--llm-weights auto] [--rounds 5] [--json]

The engine's figures (bench_engine.py, profile_engine.py) depend on how the steps of a run happened to
fall: on a shared machine an overloaded run makes fewer, fuller steps, so its CPU per step or per
second of audio moves with the load. This script times fixed pieces of work instead, on the embedded
trained model with one torch thread, each repeated and taken over `--rounds` rounds (median):

- encoder: one 160 ms chunk for B sessions in one `encode_chunks` call (fbank excluded), caches warm;
- LLM decode: one forward of R answer rows of one token each over 300 cached tokens, logits for each;
- LLM listen: one forward of R listen rows of two audio vectors each over 300 cached tokens;
- LLM prefill: one row of 64 new positions over 300 cached (a turn's opening, a text message);
- decoder round: one speech-decoder forward of R rows of one codec token each over 100 cached;
- codec window: one steady 60-token window (first window: 30 tokens) in the codec's dtype.

It only uses the model's public calls, so the same file runs against an older checkout (copy it there)
to put the code before a change beside the code after it, run after run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.model import LLMRow, ensure_default_model  # noqa: E402
from app.model.checkpoint_io.layout import load_freeze_omni  # noqa: E402
from app.model.speech_out.speech_decoder import ARRow  # noqa: E402


def cpu_ms(work: Callable[[], object], calls: int) -> float:
    """Thread CPU ms per call of `work`, after two untimed calls."""
    for _ in range(2):
        work()
    began = time.thread_time()
    for _ in range(calls):
        work()
    return 1000 * (time.thread_time() - began) / calls


def encoder_cost(model, sessions: int, calls: int) -> float:
    audio = model.audio
    states = [audio.encoder.new_state() for _ in range(sessions)]
    caches: list = [None] * sessions
    feats = torch.randn(sessions, 19, 80, generator=torch.Generator().manual_seed(sessions))
    for _ in range(20):  # the caches of a session that has been listening for 3 s
        _, caches = audio.encode_chunks(feats, states, caches)

    def work() -> None:
        nonlocal caches
        _, caches = audio.encode_chunks(feats, states, caches)

    return cpu_ms(work, calls)


def llm_cost(model, rows: int, tokens: int, calls: int, cached: int = 300) -> float:
    llm = model.llm
    hidden = llm.config.hidden_size
    generator = torch.Generator().manual_seed(rows)
    cache = llm.new_cache(rows, cached + (calls + 2) * tokens + 8)
    slots = [cache.allocate() for _ in range(rows)]
    llm.forward_rows([LLMRow(s, torch.randn(cached, hidden, generator=generator)) for s in slots], cache)
    inputs = torch.randn(rows, tokens, hidden, generator=generator)
    want_logits = tokens == 1

    def work() -> None:
        llm.forward_rows([LLMRow(s, inputs[i], want_logits=want_logits) for i, s in enumerate(slots)], cache)

    return cpu_ms(work, calls)


def decoder_cost(model, rows: int, calls: int, cached: int = 100) -> float:
    decoder = model.decoder
    hidden = decoder.config.hidden_size
    cache = decoder.new_cache(rows, cached + calls + 8)
    slots = [cache.allocate() for _ in range(rows)]
    generator = torch.Generator().manual_seed(rows)
    prefix = [
        ARRow(slot=s, embeds=torch.randn(cached, hidden, generator=generator), bidirectional=0) for s in slots
    ]
    decoder.forward_ar(prefix, cache, [0] * rows)

    def work() -> None:
        decoder.forward_ar(decoder.token_rows(slots, [5] * rows), cache, [0] * rows)

    return cpu_ms(work, calls)


def codec_cost(model, tokens: int, calls: int) -> float:
    ids = torch.arange(10, 10 + tokens)[None]
    return cpu_ms(lambda: model.codec(ids).float(), calls)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--llm-weights", default="auto", help="the LLM's linear layers, as FREEZE_OMNI_LLM_WEIGHTS"
    )
    parser.add_argument("--codec-dtype", default="auto", help="as FREEZE_OMNI_CODEC_DTYPE")
    parser.add_argument("--rounds", type=int, default=5, help="rounds over every figure (median reported)")
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON object")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    paths = ensure_default_model()
    options = {"codec_dtype": args.codec_dtype}
    try:
        model = load_freeze_omni(paths.model_path, paths.llm_path, llm_weights=args.llm_weights, **options)
    except TypeError:  # a checkout from before FREEZE_OMNI_LLM_WEIGHTS
        model = load_freeze_omni(paths.model_path, paths.llm_path, **options)
        args.llm_weights = "dtype (no such setting here)"
    figures: dict[str, Callable[[], float]] = {}
    for sessions in (1, 4, 8):
        figures[f"encoder B={sessions}"] = lambda b=sessions: encoder_cost(model, b, 30)
    for rows in (1, 4, 8, 16):
        figures[f"LLM decode R={rows}"] = lambda r=rows: llm_cost(model, r, 1, 30)
    for rows in (1, 4):
        figures[f"LLM listen R={rows}"] = lambda r=rows: llm_cost(model, r, 2, 30)
    figures["LLM prefill 64"] = lambda: llm_cost(model, 1, 64, 10)
    for rows in (1, 4, 8):
        figures[f"decoder round R={rows}"] = lambda r=rows: decoder_cost(model, r, 40)
    figures["codec window 60"] = lambda: codec_cost(model, 60, 5)
    figures["codec window 30"] = lambda: codec_cost(model, 30, 5)
    samples: dict[str, list[float]] = {name: [] for name in figures}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, measure in figures.items():
                samples[name].append(measure())
    codec_dtype = next(model.codec.parameters()).dtype
    print(
        f"thread CPU ms per call, median / best of {args.rounds} rounds; LLM weights {args.llm_weights}, "
        f"codec {codec_dtype}, 1 torch thread"
    )
    for name, values in samples.items():
        print(f"  {name:<20} {statistics.median(values):7.3f} / {min(values):7.3f}")
    if args.json:
        print(json.dumps({name: statistics.median(values) for name, values in samples.items()}))


if __name__ == "__main__":
    main()
