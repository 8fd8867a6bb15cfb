"""Our Qwen2 runtime against transformers' own implementation, and its slot cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from app.model.llm.kv_cache import CacheFullError
from app.model.llm.qwen2 import LLMRow, Qwen2Runtime, load_qwen2
from tests.model.llm_rows import assert_lockstep_equals_alone, run_alone


@pytest.fixture(scope="module")
def runtime(tiny_qwen2_dir: Path) -> Qwen2Runtime:
    return load_qwen2(tiny_qwen2_dir)


@pytest.fixture(scope="module")
def reference(tiny_qwen2_dir: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_qwen2_dir, dtype=torch.float32).eval()


def _prompt(n: int, seed: int) -> torch.Tensor:
    return torch.randint(3, 500, (n,), generator=torch.Generator().manual_seed(seed))


def test_matches_transformers_over_prefill_and_20_decode_steps(runtime, reference) -> None:
    from transformers import DynamicCache

    cache = runtime.new_cache(num_slots=2, max_len=64)
    slot = cache.allocate()
    ids = _prompt(9, seed=1)
    ours = runtime.forward_rows([LLMRow(slot, runtime.embed(ids), want_logits=True)], cache)
    hf_cache = DynamicCache()
    with torch.no_grad():
        theirs = reference(input_ids=ids[None], past_key_values=hf_cache, output_hidden_states=True)
    torch.testing.assert_close(ours.logits[0], theirs.logits[0, -1], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours.hidden[0], theirs.hidden_states[-1][0, -1], atol=1e-4, rtol=0)
    token = int(theirs.logits[0, -1].argmax())
    for _ in range(20):
        ours = runtime.forward_rows([LLMRow(slot, runtime.embed([token]), want_logits=True)], cache)
        with torch.no_grad():
            theirs = reference(
                input_ids=torch.tensor([[token]]), past_key_values=hf_cache, output_hidden_states=True
            )
        torch.testing.assert_close(ours.logits[0], theirs.logits[0, -1], atol=1e-4, rtol=0)
        torch.testing.assert_close(ours.hidden[0], theirs.hidden_states[-1][0, -1], atol=1e-4, rtol=0)
        token = int(theirs.logits[0, -1].argmax())
    assert cache.lengths[slot] == 29


def test_mixed_batch_of_three_sessions_equals_each_alone(runtime) -> None:
    embed = runtime.embed
    # Session a: prefill 7 then decode; b: prefill 3 then a 5-token chunk; c: joins late with 12.
    plans = {
        "a": [embed(_prompt(7, 2)), embed([5]), embed([9]), embed([11])],
        "b": [embed(_prompt(3, 3)), embed(_prompt(5, 4)), embed([7]), embed([8])],
        "c": [embed(_prompt(12, 5)), embed([6]), embed(_prompt(2, 6))],
    }
    alone = {name: run_alone(runtime, steps) for name, steps in plans.items()}
    cache = runtime.new_cache(num_slots=3, max_len=64)
    slots = {name: cache.allocate() for name in plans}
    batched: dict[str, list[torch.Tensor]] = {name: [] for name in plans}
    schedule = [["a", "b"], ["a", "b", "c"], ["a", "b", "c"], ["b", "a", "c"]]
    cursor = dict.fromkeys(plans, 0)
    for names in schedule:
        rows = [LLMRow(slots[n], plans[n][cursor[n]], want_logits=True) for n in names]
        out = runtime.forward_rows(rows, cache)
        for i, n in enumerate(names):
            batched[n].append(out.logits[i])
            cursor[n] += 1
    for name in plans:
        for got, want in zip(batched[name], alone[name], strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("per_row_keys", [1, 10**9], ids=["per-row", "gathered"])
def test_long_caches_read_per_row_equal_each_alone(runtime, monkeypatch, per_row_keys) -> None:
    """Rows over long caches attend to views of their own slots (no gather); both paths equal each alone."""
    import app.model.llm.transformer as transformer

    monkeypatch.setattr(transformer, "PER_ROW_KEYS", per_row_keys)
    embed = runtime.embed
    plans = {
        "long": [embed(_prompt(40, 12)), embed([5]), embed(_prompt(4, 13))],
        "short": [embed(_prompt(3, 14)), embed(_prompt(6, 15)), embed([8])],
        "decode": [embed(_prompt(25, 16)), embed([9]), embed([10])],
    }
    assert_lockstep_equals_alone(runtime, plans, steps=3)


def test_forked_cache_continues_exactly_like_the_original(runtime) -> None:
    cache = runtime.new_cache(num_slots=3, max_len=64)
    slot = cache.allocate()
    runtime.forward_rows([LLMRow(slot, runtime.embed(_prompt(10, 7)))], cache)
    branch = cache.fork(slot)
    assert cache.lengths[branch] == cache.lengths[slot] == 10
    follow = runtime.embed(_prompt(4, 8))
    out = runtime.forward_rows(
        [LLMRow(slot, follow, want_logits=True), LLMRow(branch, follow, want_logits=True)], cache
    )
    torch.testing.assert_close(out.logits[0], out.logits[1], atol=1e-6, rtol=0)
    # The branch diverges without touching the original.
    runtime.forward_rows([LLMRow(branch, runtime.embed([42]))], cache)
    assert cache.lengths[slot] == 14 and cache.lengths[branch] == 15


def test_slots_are_freed_and_capacity_is_enforced(runtime) -> None:
    cache = runtime.new_cache(num_slots=2, max_len=8)
    a = cache.allocate()
    cache.allocate()
    with pytest.raises(CacheFullError):
        cache.allocate()
    cache.free(a)
    assert cache.num_free == 1
    b = cache.allocate()
    with pytest.raises(CacheFullError, match="capacity of 8"):
        runtime.forward_rows([LLMRow(b, runtime.embed(_prompt(9, 9)))], cache)
    assert cache.lengths[b] == 0
