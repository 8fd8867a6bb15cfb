"""Linear layers whose weights take fewer bytes: the LLM's matmuls on a CPU are bound by memory traffic.

One decode row through the embedded model's LLM streams about 21 MB of fp32 weights for a few
million multiply-adds, so a CPU spends its time reading weights, not computing. These layers keep
the weights in bf16 (half the bytes) or int8 with a per-output-channel scale (a quarter), and
compute in bf16 on CPUs that do bf16 dot products natively (AVX512-BF16, AMX). Only the linear
layers change: the residual stream, norms, rotary, attention and the KV cache stay in the model's
dtype, since the CPU's bf16 attention kernel is slower than fp32 (measured: benchmarks/RESULTS.md,
capacity part 5). Each output row depends on its own input row only, so a row's result does not
depend on the other rows in its batch.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from app.model.llm.linear_weights import LINEAR_WEIGHTS
from app.model.speech_out.codec import cpu_has_native_bf16

log = logging.getLogger(__name__)

# `aten._weight_int8pack_mm` on a CPU needs the input width to be a multiple of this (tried on torch 2.13:
# other widths return wrong numbers or crash the process); a layer of another width keeps its weights.
INT8_IN_MULTIPLE = 16


class BF16Linear(nn.Module):
    """y = x W^T + b with W held in bf16; x is rounded to bf16, y returned in x's dtype."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", linear.weight.detach().to(torch.bfloat16).contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x.to(torch.bfloat16), self.weight).to(x.dtype)
        return out if self.bias is None else out + self.bias


class Int8Linear(nn.Module):
    """Weight-only int8: W = scale[o] * q[o, i] with q in int8 (symmetric, per output channel).

    The product runs in bf16 on the int8 weights (`aten._weight_int8pack_mm`, unit scales) and the
    fp32 scales are applied to its output, so the scales are not rounded to bf16. The input width must
    be a multiple of `INT8_IN_MULTIPLE` (`int8_fits`).
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if not int8_fits(linear):
            raise ValueError(
                f"int8 weights need an input width that is a multiple of {INT8_IN_MULTIPLE}, "
                f"not {linear.in_features}"
            )
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().float()
        scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / 127.0
        quantized = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        self.register_buffer("weight_int8", quantized.contiguous())
        self.register_buffer("scale", scale.to(linear.weight.dtype))
        self.register_buffer("unit_scale", torch.ones(self.out_features, dtype=torch.bfloat16))
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def dequantized(self) -> torch.Tensor:
        """The weight these int8 values stand for, (out, in) in fp32."""
        return self.weight_int8.float() * self.scale.float()[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()
        out = torch.ops.aten._weight_int8pack_mm(flat, self.weight_int8, self.unit_scale)
        out = out.to(x.dtype) * self.scale
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*shape[:-1], self.out_features)


def int8_fits(linear: nn.Linear) -> bool:
    """Whether the int8 kernel computes this layer correctly (its input width)."""
    return linear.in_features % INT8_IN_MULTIPLE == 0


def resolve_linear_weights(name: str, device: torch.device | str, model_dtype: torch.dtype) -> str:
    """What `auto` means here: int8 on a CPU with native bf16 when the model runs in fp32, else `dtype`.

    On accelerators the whole model already runs in bf16 (`dtype=auto`), so nothing is compacted;
    int8 runs on a CPU only.
    """
    if name not in LINEAR_WEIGHTS:
        raise ValueError(f"unknown LLM weights {name!r}; use one of {', '.join(LINEAR_WEIGHTS)}")
    device = torch.device(device)
    if name == "int8" and device.type != "cpu":
        raise ValueError(f"int8 LLM weights run on a CPU only, not on {device}; use dtype or bfloat16")
    if name != "auto":
        return name
    if device.type == "cpu" and model_dtype == torch.float32 and cpu_has_native_bf16():
        return "int8"
    return "dtype"


def compact_linears(module: nn.Module, weights: str) -> int:
    """Replace every `nn.Linear` under `module` by its compact form, in place; returns how many.

    `dtype` leaves the module as it is. Tied weights (an LM head sharing the embedding table) are
    copied, not shared, by the compact layer; the embedding table itself stays as loaded. With `int8`, a
    layer whose input width the kernel cannot take (`int8_fits`) keeps its weights, with a log line.
    """
    if weights == "dtype":
        return 0
    kinds = {"bfloat16": BF16Linear, "int8": Int8Linear}
    if weights not in kinds:
        raise ValueError(f"cannot compact linear layers to {weights!r}; use dtype, bfloat16 or int8")
    replaced = 0
    kept: list[str] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            if weights == "int8" and not int8_fits(child):
                kept.append(f"{name} ({child.in_features} wide)")
                continue
            setattr(parent, name, kinds[weights](child))
            replaced += 1
    if kept:
        log.warning(
            "%d linear layers keep their weights: int8 needs input widths that are multiples of %d: %s",
            len(kept),
            INT8_IN_MULTIPLE,
            ", ".join(sorted(set(kept))),
        )
    return replaced
