"""Does compacting the LLM's weights change what the model says? Greedy turns, fp32 against each variant.

    python benchmarks/compare_llm_weights.py [--weights bfloat16,int8] [--count 50] [--ignorables]

Every held-out question (training/heldout.py: voices, speeds, pitches and noise training never used;
the first `--count` of the domain's questions) goes through the offline pipeline greedily (text and
speech tokens) on the embedded trained model, once with the LLM's linear layers in fp32 and once per
variant of `FREEZE_OMNI_LLM_WEIGHTS`. Printed per variant: turns whose answer text, text tokens,
per-chunk state decisions and codec tokens equal fp32's; the largest state-probability difference;
the answers that are right (the expected text) in each; and the LLM's CPU time per turn (listening and answering).
A variant that changes decisions says so here; the setting's default follows from these figures.

Then the cost of one LLM forward as the engine runs it (`--rows`: decode rows of one token each, every row
over `--cached` tokens of its own conversation, logits for each), the variants interleaved round by round
in one process (`--rounds`), thread CPU time: median and best per variant, and the ratio to fp32's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.model import InferOptions, LLMRow, OfflinePipeline, TurnResult, ensure_default_model  # noqa: E402
from app.model.checkpoint_io.layout import load_freeze_omni  # noqa: E402
from app.model.llm.compact_linear import compact_linears  # noqa: E402
from training import domain  # noqa: E402
from training.heldout import Recording, held_out_question, ignorable_sounds  # noqa: E402


@dataclass
class Comparison:
    """How one variant's turns compare with fp32's."""

    same_text: int = 0
    same_tokens: int = 0
    same_states: int = 0
    same_codec: int = 0
    right: int = 0
    max_prob_diff: float = 0.0
    llm_cpu_s: float = 0.0
    differences: list[str] | None = None


def run_turns(weights: str, recordings: list[Recording]) -> tuple[list[TurnResult], float]:
    """Greedy turns on a freshly loaded model with its LLM compacted to `weights`; and the LLM's CPU s."""
    paths = ensure_default_model()
    model = load_freeze_omni(paths.model_path, paths.llm_path)
    compact_linears(model.llm, weights)
    pipeline = OfflinePipeline(model)
    llm_cpu = 0.0
    original = model.llm.forward_rows

    def timed(rows, cache):
        nonlocal llm_cpu
        began = time.thread_time()
        try:
            return original(rows, cache)
        finally:
            llm_cpu += time.thread_time() - began

    model.llm.forward_rows = timed  # type: ignore[method-assign]
    return [pipeline.run(rec.samples, InferOptions.greedy()) for rec in recordings], llm_cpu


def compare(base: list[TurnResult], other: list[TurnResult], recordings: list[Recording]) -> Comparison:
    result = Comparison(differences=[])
    for rec, a, b in zip(recordings, base, other, strict=True):
        result.same_text += a.text == b.text
        result.same_tokens += a.token_ids == b.token_ids
        result.same_states += a.states == b.states
        result.same_codec += a.codec_ids == b.codec_ids
        result.right += rec.answer is not None and b.text == rec.answer
        diff = max(
            (
                abs(x - y)
                for pa, pb in zip(a.state_probs, b.state_probs, strict=True)
                for x, y in zip(pa, pb, strict=True)
            ),
            default=0.0,
        )
        result.max_prob_diff = max(result.max_prob_diff, diff)
        if a.text != b.text or a.states != b.states:
            result.differences.append(f"{rec.description}: fp32 {a.text!r} -> {b.text!r}")
    return result


def forward_costs(
    weights: list[str], rows: list[int], cached: int, rounds: int, calls: int = 40
) -> dict[tuple[str, int], list[float]]:
    """CPU ms of one LLM forward of `rows` one-token rows over `cached` tokens, per variant, interleaved."""
    paths = ensure_default_model()
    plain = load_freeze_omni(paths.model_path, paths.llm_path).llm
    llms = {}
    for kind in weights:
        llms[kind] = load_freeze_omni(paths.model_path, paths.llm_path, llm_weights=kind).llm
    llms["dtype"] = plain
    hidden = plain.config.hidden_size
    generator = torch.Generator().manual_seed(0)
    costs: dict[tuple[str, int], list[float]] = {}
    for index in range(rounds):
        order = list(llms) if index % 2 == 0 else list(reversed(llms))
        for kind in order:
            llm = llms[kind]
            for count in rows:
                cache = llm.new_cache(count, cached + calls + 8)
                slots = [cache.allocate() for _ in range(count)]
                llm.forward_rows(
                    [LLMRow(s, torch.randn(cached, hidden, generator=generator)) for s in slots], cache
                )
                steps = [torch.randn(count, 1, hidden, generator=generator) for _ in range(calls)]
                began = time.thread_time()
                for step in steps:
                    llm.forward_rows(
                        [LLMRow(s, step[i], want_logits=True) for i, s in enumerate(slots)], cache
                    )
                costs.setdefault((kind, count), []).append(1000 * (time.thread_time() - began) / calls)
    return costs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default="bfloat16,int8", help="variants compared with float32")
    parser.add_argument("--count", type=int, default=50, help="held-out questions (the domain has 50)")
    parser.add_argument("--ignorables", action="store_true", help="also the backchannels and noises")
    parser.add_argument("--rows", default="1,4,8,16", help="decode rows per timed LLM forward")
    parser.add_argument("--cached", type=int, default=300, help="tokens each row's conversation holds")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of the forward timing")
    parser.add_argument("--forwards-only", action="store_true", help="only the forward timing")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    pairs = range(min(args.count, len(domain.PAIRS)))
    recordings = [held_out_question(i, p, seed=290_000 + i) for i, p in enumerate(pairs)]
    if args.ignorables:
        recordings += ignorable_sounds(seed=280_000)
    variants = [w.strip() for w in args.weights.split(",") if w.strip()]
    rows = [int(r) for r in args.rows.split(",") if r.strip()]
    costs = forward_costs(variants, rows, args.cached, args.rounds)
    print(
        f"one LLM forward, thread CPU ms, median / best of {args.rounds} interleaved rounds ({args.cached} cached):"
    )
    for count in rows:
        base = statistics.median(costs[("dtype", count)])
        cells = [f"dtype {base:.2f} / {min(costs[('dtype', count)]):.2f}"]
        for kind in variants:
            median = statistics.median(costs[(kind, count)])
            cells.append(f"{kind} {median:.2f} / {min(costs[(kind, count)]):.2f} ({median / base:.2f}x)")
        print(f"  {count:>2} rows: " + ", ".join(cells))
    if args.forwards_only:
        return
    print(f"{len(recordings)} held-out recordings, greedy, 1 torch thread")
    base, base_cpu = run_turns("dtype", recordings)
    base_right = sum(
        rec.answer is not None and t.text == rec.answer for rec, t in zip(recordings, base, strict=True)
    )
    print(f"float32: {base_right} right; LLM CPU {1000 * base_cpu / len(recordings):.1f} ms per turn")
    for weights in variants:
        turns, cpu = run_turns(weights, recordings)
        c = compare(base, turns, recordings)
        n = len(recordings)
        print(
            f"{weights}: same text {c.same_text}/{n}, same text tokens {c.same_tokens}/{n}, same state "
            f"decisions {c.same_states}/{n}, same codec tokens {c.same_codec}/{n}; state probs differ by "
            f"at most {c.max_prob_diff:.4f}; {c.right} right (fp32 {base_right}); LLM CPU "
            f"{1000 * cpu / n:.1f} ms per turn ({cpu / max(base_cpu, 1e-9):.2f}x fp32)"
        )
        for line in c.differences or []:
            print(f"  differs: {line}")


if __name__ == "__main__":
    main()
