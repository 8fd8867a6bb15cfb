"""Where an engine step's time goes: N simulated voice conversations, the step profiled in its thread.

    python benchmarks/profile_engine.py --sessions 4,8,16 --duration 12 [--top 30] [--torch]

The conversations are `bench_engine.py`'s (spoken questions at real-time pace, answers played back
in real time). Only the engine's worker thread is profiled (cProfile, enabled around each step),
so the figures are the step itself: the per-stage split, the functions with most own time, and
the CPU time per step (thread CPU clock) next to its wall time, which on a shared machine says how
much of a step was spent waiting for a core. `--torch` adds torch's operator profile (op counts
and self CPU time), which shows how many small ops a step launches.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_engine import STAGES, engine_settings, run_sessions, spoken_questions  # noqa: E402

from app.engine import engine as engine_module  # noqa: E402
from app.model.checkpoint_io.defaults import ensure_default_model  # noqa: E402
from app.model.checkpoint_io.layout import load_freeze_omni  # noqa: E402


class StepProfiler:
    """Wraps `StepRunner.execute` of every engine made while installed: cProfile and CPU clocks."""

    def __init__(self, use_torch: bool) -> None:
        self.profile = cProfile.Profile()
        self.use_torch = use_torch
        self.torch_events: list = []
        self.steps = 0
        self.wall = 0.0
        self.cpu = 0.0

    def install(self) -> None:
        original = engine_module.StepRunner
        profiler = self

        class ProfiledRunner(original):  # type: ignore[misc, valid-type]
            def execute(self, plan):
                torch_prof = None
                if profiler.use_torch:
                    torch_prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
                    torch_prof.__enter__()
                began, began_cpu = time.perf_counter(), time.thread_time()
                profiler.profile.enable()
                try:
                    return super().execute(plan)
                finally:
                    profiler.profile.disable()
                    profiler.cpu += time.thread_time() - began_cpu
                    profiler.wall += time.perf_counter() - began
                    profiler.steps += 1
                    if torch_prof is not None:
                        torch_prof.__exit__(None, None, None)
                        profiler.torch_events.extend(torch_prof.key_averages())

        engine_module.StepRunner = ProfiledRunner


def stage_split(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds per runner stage, from the profile."""
    split = {}
    for (_, _, name), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for stage, method in (*STAGES, ("decoder rounds", "_speech_rounds")):
            if name == method:
                split[stage] = split.get(stage, 0.0) + cumulative
    return split


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", default="4,8,16")
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--top", type=int, default=25, help="functions listed by own time")
    parser.add_argument("--torch", action="store_true", help="also torch's operator profile")
    parser.add_argument("--speech-tokens", type=int, default=None, help="speech_tokens_per_step override")
    parser.add_argument("--codec-dtype", default="auto", help="auto, float32 or bfloat16 (as the server's)")
    parser.add_argument(
        "--llm-weights",
        default="auto",
        help="the LLM's linear layers: auto, dtype, bfloat16 or int8 (as the server's)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    bench_args = argparse.Namespace(
        duration=args.duration,
        stagger=1.0,
        pause=0.3,
        segment_tokens=6,
        max_answer_tokens=24,
        answer_seconds=6.0,
        grace=10.0,
        slack_ms=20.0,
        audio_slack_ms=20.0,
    )
    questions, source = spoken_questions(16)
    paths = ensure_default_model()
    model = load_freeze_omni(
        str(paths.model_path),
        str(paths.llm_path),
        device=torch.device("cpu"),
        codec_dtype=args.codec_dtype,
        llm_weights=args.llm_weights,
    )
    base = engine_settings(bench_args, questions)
    if args.speech_tokens is not None:
        base = replace(base, speech_tokens_per_step=args.speech_tokens)
    codec_dtype = next(model.codec.parameters()).dtype
    linear = type(model.llm.lm_head).__name__
    print(
        f"model {paths.model_path}; questions from {source}; 1 torch thread; codec in {codec_dtype}; "
        f"LLM linear layers {linear} (--llm-weights {args.llm_weights})"
    )
    asyncio.run(run_sessions(model, replace(base, max_sessions=2), questions, "warm-up", bench_args))
    for count in (int(n) for n in args.sessions.split(",")):
        profiler = StepProfiler(args.torch)
        original = engine_module.StepRunner
        profiler.install()
        try:
            run = asyncio.run(
                run_sessions(model, replace(base, max_sessions=count), questions, "profiled", bench_args)
            )
        finally:
            engine_module.StepRunner = original
        stats = pstats.Stats(profiler.profile)
        split = stage_split(stats)
        steps = max(profiler.steps, 1)
        print(
            f"\n=== N={count}: {'REAL TIME' if run.real_time else 'not real time'}; {profiler.steps} steps, "
            f"wall {1000 * profiler.wall / steps:.1f} ms/step, thread CPU {1000 * profiler.cpu / steps:.1f} "
            f"ms/step (profiler overhead included); first audio p50/p95 {run.latency_p50_ms or 0:.0f}/"
            f"{run.latency_p95_ms or 0:.0f} ms; rows/step "
            + " ".join(f"{k} {v:.1f}" for k, v in run.rows_per_step.items())
        )
        print("stage ms/step: " + ", ".join(f"{k} {1000 * v / steps:.1f}" for k, v in split.items()))
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(args.top)
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[-6000:])
        if profiler.torch_events:
            totals: dict[str, list[float]] = {}
            for event in profiler.torch_events:
                entry = totals.setdefault(event.key, [0, 0.0])
                entry[0] += event.count
                entry[1] += event.self_cpu_time_total
            ops = sum(c for c, _ in totals.values())
            print(f"torch ops per step: {ops / steps:.0f}")
            for key, (calls, self_us) in sorted(totals.items(), key=lambda kv: -kv[1][1])[: args.top]:
                print(f"  {key:<40} {calls / steps:8.1f} calls/step {self_us / steps / 1000:7.2f} ms/step")


if __name__ == "__main__":
    main()
