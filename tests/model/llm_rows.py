"""Checks shared by the LLM tests: a row's result must not depend on the rows batched beside it."""

from __future__ import annotations

import torch

from app.model.llm.qwen2 import LLMRow, Qwen2Runtime


def run_alone(runtime: Qwen2Runtime, steps: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each step's logits for one sequence in a cache of its own."""
    cache = runtime.new_cache(num_slots=1, max_len=64)
    slot = cache.allocate()
    return [runtime.forward_rows([LLMRow(slot, s, want_logits=True)], cache).logits[0] for s in steps]


def assert_lockstep_equals_alone(
    runtime: Qwen2Runtime, plans: dict[str, list[torch.Tensor]], steps: int
) -> None:
    """Run every plan's first `steps` steps batched together, one row each, and hold each row to its run alone."""
    expected = {name: run_alone(runtime, plan) for name, plan in plans.items()}
    cache = runtime.new_cache(num_slots=len(plans), max_len=64)
    slots = {name: cache.allocate() for name in plans}
    for step in range(steps):
        rows = [LLMRow(slots[name], plans[name][step], want_logits=True) for name in plans]
        out = runtime.forward_rows(rows, cache)
        for i, name in enumerate(plans):
            torch.testing.assert_close(out.logits[i], expected[name][step], atol=1e-5, rtol=0)
