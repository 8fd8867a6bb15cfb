"""The LLM's linear layers with compact weights (bf16, int8): close to fp32, each row its own, loadable."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.model.llm import compact_linear
from app.model.llm.compact_linear import (
    BF16Linear,
    Int8Linear,
    compact_linears,
    resolve_linear_weights,
)
from app.model.llm.qwen2 import LLMRow, Qwen2Runtime, load_qwen2
from tests.model.llm_rows import assert_lockstep_equals_alone


@pytest.fixture(scope="module")
def fp32_runtime(tiny_qwen2_dir: Path) -> Qwen2Runtime:
    return load_qwen2(tiny_qwen2_dir)


@pytest.fixture(scope="module", params=["bfloat16", "int8"])
def compact_runtime(request, tiny_qwen2_dir: Path) -> Qwen2Runtime:
    runtime = load_qwen2(tiny_qwen2_dir)
    compact_linears(runtime, request.param)
    return runtime


def _linear(seed: int = 0, bias: bool = True) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(96, 48, bias=bias)


def test_int8_linear_is_the_product_with_its_dequantized_weight() -> None:
    linear = _linear()
    compact = Int8Linear(linear)
    x = torch.randn(5, 96)
    want = nn.functional.linear(x, compact.dequantized(), linear.bias)
    torch.testing.assert_close(compact(x), want, atol=0.02, rtol=0.01)  # x and the sum rounded to bf16
    # The quantization itself: every weight within half a step of its channel's scale.
    step = linear.weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((compact.dequantized() - linear.weight).abs() <= step / 2 + 1e-7).all()
    assert compact.weight_int8.dtype == torch.int8 and compact.weight_int8.abs().max() <= 127


@pytest.mark.parametrize("in_features", [16, 48, 80, 96, 384, 3584])
def test_int8_is_right_for_input_widths_that_are_multiples_of_16(in_features: int) -> None:
    torch.manual_seed(in_features)
    linear = nn.Linear(in_features, 7)
    compact = Int8Linear(linear)
    for rows in (1, 3, 17):
        x = torch.randn(rows, in_features)
        want = nn.functional.linear(x, compact.dequantized(), linear.bias)
        torch.testing.assert_close(compact(x), want, atol=0.03 * want.abs().max().item(), rtol=0.01)


def test_layers_the_int8_kernel_cannot_take_keep_their_weights(caplog) -> None:
    """The kernel gives wrong numbers or crashes for input widths that are not multiples of 16."""
    model = nn.Sequential(nn.Linear(96, 90), nn.Linear(90, 8), nn.Linear(8, 32))
    with pytest.raises(ValueError, match="multiple of 16"):
        Int8Linear(model[1])
    assert compact_linears(model, "int8") == 1
    assert isinstance(model[0], Int8Linear)
    assert type(model[1]) is nn.Linear and type(model[2]) is nn.Linear
    assert "90 wide" in caplog.text and "8 wide" in caplog.text
    assert model(torch.randn(2, 96)).shape == (2, 32)


def test_bf16_linear_is_close_to_fp32_and_keeps_the_input_dtype() -> None:
    linear = _linear(bias=False)
    compact = BF16Linear(linear)
    x = torch.randn(3, 7, 96)
    out = compact(x)
    assert out.dtype == torch.float32 and out.shape == (3, 7, 48)
    torch.testing.assert_close(out, linear(x), atol=0.03, rtol=0.02)


def test_compact_linears_replaces_every_linear_of_the_llm(tiny_qwen2_dir: Path) -> None:
    runtime = load_qwen2(tiny_qwen2_dir)
    linears = sum(isinstance(m, nn.Linear) for m in runtime.modules())
    assert compact_linears(runtime, "int8") == linears == 7 * runtime.config.num_hidden_layers + 1
    assert not any(isinstance(m, nn.Linear) for m in runtime.modules())
    assert runtime.dtype == torch.float32  # embeddings, norms and the KV cache stay as loaded
    assert compact_linears(load_qwen2(tiny_qwen2_dir), "dtype") == 0
    with pytest.raises(ValueError, match="float16"):
        compact_linears(runtime, "float16")


def test_compact_llm_stays_close_to_fp32(fp32_runtime, compact_runtime) -> None:
    """Prefill and decode steps: hidden states and logits near fp32's (not equal: the weights differ)."""
    caches = [r.new_cache(num_slots=1, max_len=64) for r in (fp32_runtime, compact_runtime)]
    slots = [c.allocate() for c in caches]
    inputs = [fp32_runtime.embed(torch.arange(3, 15))] + [fp32_runtime.embed([20 + i]) for i in range(6)]
    for embeds in inputs:
        want, got = (
            r.forward_rows([LLMRow(s, embeds, want_logits=True)], c)
            for r, c, s in zip((fp32_runtime, compact_runtime), caches, slots, strict=True)
        )
        scale = want.logits.abs().max()
        assert (got.logits - want.logits).abs().max() <= 0.05 * scale
        assert (got.hidden - want.hidden).abs().max() <= 0.05 * want.hidden.abs().max()


def _steps(runtime: Qwen2Runtime, seed: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 500, (12,), generator=generator)
    return [
        runtime.embed(ids[:7]),
        runtime.embed(ids[7:9]),
        runtime.embed(ids[9:10]),
        runtime.embed(ids[10:]),
    ]


def test_compact_llm_rows_batched_equal_each_alone(compact_runtime) -> None:
    """A row's result must not depend on the rows beside it (the compact kernels work row by row)."""
    plans = {name: _steps(compact_runtime, seed) for seed, name in enumerate(("a", "b", "c"))}
    assert_lockstep_equals_alone(compact_runtime, plans, steps=4)


def test_auto_is_int8_on_a_cpu_with_native_bf16_running_fp32(monkeypatch) -> None:
    monkeypatch.setattr(compact_linear, "cpu_has_native_bf16", lambda: True)
    assert resolve_linear_weights("auto", "cpu", torch.float32) == "int8"
    assert resolve_linear_weights("auto", "cpu", torch.bfloat16) == "dtype"
    assert resolve_linear_weights("auto", "cuda", torch.bfloat16) == "dtype"
    monkeypatch.setattr(compact_linear, "cpu_has_native_bf16", lambda: False)
    assert resolve_linear_weights("auto", "cpu", torch.float32) == "dtype"
    assert resolve_linear_weights("bfloat16", "cpu", torch.float32) == "bfloat16"
    assert resolve_linear_weights("int8", "cpu", torch.float32) == "int8"
    with pytest.raises(ValueError, match="CPU only"):
        resolve_linear_weights("int8", "cuda", torch.bfloat16)
    with pytest.raises(ValueError, match="unknown LLM weights"):
        resolve_linear_weights("int4", "cpu", torch.float32)


def test_the_model_loads_and_answers_with_int8_llm_weights(tiny_model_dir, spoken_16k) -> None:
    from app.model import InferOptions, OfflinePipeline, load_freeze_omni

    model = load_freeze_omni(tiny_model_dir.model_path, tiny_model_dir.llm_path, llm_weights="int8")
    assert isinstance(model.llm.lm_head, Int8Linear)
    assert isinstance(model.decoder.out_fnn, nn.Linear)  # only the LLM is compacted
    result = OfflinePipeline(model).run(spoken_16k, InferOptions.greedy(max_new_tokens=8))
    assert len(result.states) > 0 and result.token_ids and result.audio.size > 0


def test_the_setting_reads_the_environment_and_refuses_unknown_values(monkeypatch) -> None:
    from pydantic import ValidationError

    from app.config import Settings

    assert Settings().llm_weights == "auto"
    monkeypatch.setenv("FREEZE_OMNI_LLM_WEIGHTS", "int8")
    assert Settings().llm_weights == "int8"
    monkeypatch.setenv("FREEZE_OMNI_LLM_WEIGHTS", "int4")
    with pytest.raises(ValidationError, match="llm_weights"):
        Settings()
