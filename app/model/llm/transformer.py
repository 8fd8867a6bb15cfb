"""Llama-family decoder layers (RMSNorm, RoPE, GQA, SwiGLU) that run mixed batches on slot caches.

Shared by the Qwen2 LLM runtime and the speech decoder. A batch is a list of rows, one per
sequence, each bringing any number of new tokens: a prefill of several tokens and a decode of one
can sit side by side. `BatchLayout` turns the rows into padded tensors, cache write indices and an
attention mask once per forward; every layer then reuses it.

Parameter names follow Hugging Face's Llama/Qwen2 layout (`self_attn.q_proj`, `mlp.gate_proj`,
`input_layernorm`, ...) so checkpoints load without renaming.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Cached attention over at least this many keys reads each row's slot in place, row by row, rather than
# gathering all rows into one padded batch (measured on the embedded model, CPU: see benchmarks/RESULTS.md).
PER_ROW_KEYS = 256


@dataclass(frozen=True)
class LayerDims:
    """Dimensions of one decoder layer."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    qkv_bias: bool


class RMSNorm(nn.Module):
    """Root-mean-square norm computed in fp32, as Llama and Qwen2 do."""

    def __init__(self, size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(dtype)


class RotaryEmbedding(nn.Module):
    """Rotary position tables (the default, unscaled rule)."""

    def __init__(self, head_dim: int, theta: float) -> None:
        super().__init__()
        # Computed on the fly rather than held as a buffer: it costs head_dim/2 numbers and lets
        # models be built on the meta device and loaded without any buffer to restore.
        self.head_dim = head_dim
        self.theta = theta
        self._inv_freq: dict[torch.device, torch.Tensor] = {}  # per device, made on first use

    def inverse_frequencies(self, device: torch.device) -> torch.Tensor:
        """1 / theta^(2i / head_dim), computed once per device (every forward needs it)."""
        inv_freq = self._inv_freq.get(device)
        if inv_freq is None:
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float32, device=device)
            inv_freq = self._inv_freq[device] = 1.0 / (self.theta ** (exponents / self.head_dim))
        return inv_freq

    def tables(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin for integer positions of any shape, with a trailing head_dim axis."""
        inv_freq = self.inverse_frequencies(positions.device)
        freqs = positions.to(torch.float32)[..., None] * inv_freq
        angles = torch.cat([freqs, freqs], dim=-1)
        return angles.cos().to(dtype), angles.sin().to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, T, heads, D) by tables of shape (B, T, D)."""
    cos = cos[:, :, None, :]
    sin = sin[:, :, None, :]
    return x * cos + _rotate_half(x) * sin


@dataclass
class BatchLayout:
    """Where each row's new tokens go in the padded batch, in the cache and in attention.

    Built once per forward and shared by all layers. `slots` is None for layers that run without a
    cache (bidirectional blocks that only attend to their own tokens).
    """

    num_new: list[int]
    valid: torch.Tensor  # (B, T) True for real tokens
    mask: torch.Tensor  # (B, 1, T, K) True where a query may attend to a key
    bias: (
        torch.Tensor
    )  # the same as an additive mask (0 or -inf) in the compute dtype, made once for all layers
    cos: torch.Tensor  # (B, T, head_dim)
    sin: torch.Tensor
    slots: torch.Tensor | None  # (B,)
    key_len: int
    write_rows: torch.Tensor  # (N,) batch index of every real token
    write_cols: torch.Tensor  # (N,) position in the padded row
    write_slots: torch.Tensor | None  # (N,) cache slot of every real token
    write_positions: torch.Tensor | None  # (N,) cache index of every real token
    slot_list: list[int] | None = None  # `slots` and the past lengths as host ints, for per-row attention
    past: list[int] | None = None

    @property
    def batch_size(self) -> int:
        return len(self.num_new)

    @property
    def max_new(self) -> int:
        return self.valid.shape[1]

    def pad(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """Stack rows of shape (n_i, H) into (B, T, H), zero-padded."""
        first = rows[0]
        padded = first.new_zeros((len(rows), self.max_new, first.shape[-1]))
        padded[self.write_rows, self.write_cols] = torch.cat(rows, dim=0)
        return padded

    def last_positions(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H): each row's last real token."""
        index = torch.tensor([n - 1 for n in self.num_new], device=x.device)
        return x[torch.arange(x.shape[0], device=x.device), index]


def build_layout(
    num_new: list[int],
    rotary: RotaryEmbedding,
    *,
    dtype: torch.dtype,
    device: torch.device,
    slots: list[int] | None = None,
    past_lengths: list[int] | None = None,
    rope_starts: list[int] | None = None,
    bidirectional: list[int] | None = None,
) -> BatchLayout:
    """Describe a batch of rows: row i brings `num_new[i]` tokens after `past_lengths[i]` cached ones.

    `rope_starts[i]` is the rotary position of row i's first new token (default: its past length;
    the speech decoder restarts positions at 0 after its prefix). Every token sees the row's past.
    The first `bidirectional[i]` new tokens also see each other (a conditioning block); every later
    token sees what comes before it and itself (causal). Default 0: fully causal.
    """
    batch = len(num_new)
    if batch == 0 or min(num_new) < 1:
        raise ValueError(f"every row needs at least one new token, got {num_new}")
    past = past_lengths if past_lengths is not None else [0] * batch
    starts = rope_starts if rope_starts is not None else past
    block = bidirectional if bidirectional is not None else [0] * batch
    max_new = max(num_new)

    new_counts = torch.tensor(num_new, device=device)
    cols = torch.arange(max_new, device=device)
    valid = cols[None, :] < new_counts[:, None]
    write_rows, write_cols = valid.nonzero(as_tuple=True)

    past_t = torch.tensor(past, device=device)
    positions = torch.tensor(starts, device=device)[:, None] + cols[None, :]
    cos, sin = rotary.tables(positions, dtype)

    key_len = max(p + n for p, n in zip(past, num_new, strict=True))
    keys = torch.arange(key_len, device=device)
    total = (past_t + new_counts)[:, None, None]
    mask = keys[None, None, :] < total  # (B, 1, K): keys that exist for the row
    # Query t of row b sees keys below past + max(t + 1, block): causal after the leading block.
    block_t = torch.tensor(block, device=device)[:, None]
    visible = past_t[:, None] + torch.maximum(cols[None, :] + 1, block_t)  # (B, T)
    mask = mask & (keys[None, None, :] < visible[:, :, None])  # (B, T, K)
    # Padded queries must still see one key, or softmax over nothing yields NaN.
    mask = mask | (~valid[:, :, None] & (keys[None, None, :] == 0))

    write_slots = write_positions = slot_t = None
    if slots is not None:
        slot_t = torch.tensor(slots, device=device)
        write_slots = slot_t[write_rows]
        write_positions = past_t[write_rows] + write_cols
    mask = mask[:, None]
    # SDPA turns a boolean mask into this in every call; once per forward serves every layer.
    bias = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill_(~mask, float("-inf"))
    return BatchLayout(
        num_new=list(num_new),
        valid=valid,
        mask=mask,
        bias=bias,
        cos=cos,
        sin=sin,
        slots=slot_t,
        key_len=key_len,
        write_rows=write_rows,
        write_cols=write_cols,
        write_slots=write_slots,
        write_positions=write_positions,
        slot_list=list(slots) if slots is not None else None,
        past=list(past),
    )


class Attention(nn.Module):
    """Grouped-query attention with optional qkv bias, reading and writing a slot cache."""

    def __init__(self, dims: LayerDims) -> None:
        super().__init__()
        self.dims = dims
        q_size = dims.num_heads * dims.head_dim
        kv_size = dims.num_kv_heads * dims.head_dim
        self.q_proj = nn.Linear(dims.hidden_size, q_size, bias=dims.qkv_bias)
        self.k_proj = nn.Linear(dims.hidden_size, kv_size, bias=dims.qkv_bias)
        self.v_proj = nn.Linear(dims.hidden_size, kv_size, bias=dims.qkv_bias)
        self.o_proj = nn.Linear(q_size, dims.hidden_size, bias=False)

    def forward(
        self,
        x: torch.Tensor,
        layout: BatchLayout,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        batch, length, _ = x.shape
        d = self.dims
        q = self.q_proj(x).view(batch, length, d.num_heads, d.head_dim)
        k = self.k_proj(x).view(batch, length, d.num_kv_heads, d.head_dim)
        v = self.v_proj(x).view(batch, length, d.num_kv_heads, d.head_dim)
        q = apply_rotary(q, layout.cos, layout.sin)
        k = apply_rotary(k, layout.cos, layout.sin)
        if cache is not None:
            if layout.slots is None or layout.write_slots is None:
                raise ValueError("a cached layer needs a layout built with slots")
            key_buffer, value_buffer = cache
            if length == 1:  # one new token per row (decode rounds): its keys are a view, no gather
                new_keys, new_values = k[:, 0], v[:, 0]
            else:
                new_keys, new_values = (
                    k[layout.write_rows, layout.write_cols],
                    v[layout.write_rows, layout.write_cols],
                )
            key_buffer[layout.write_slots, layout.write_positions] = new_keys
            value_buffer[layout.write_slots, layout.write_positions] = new_values
            if batch > 1 and layout.key_len >= PER_ROW_KEYS:
                out = self._attend_per_row(q, key_buffer, value_buffer, layout)
                return self.o_proj(out.reshape(batch, length, d.num_heads * d.head_dim))
            # index_select, not `buffer[slots, :key_len]`: the same copy, about 4x faster on a CPU.
            k = torch.index_select(key_buffer[:, : layout.key_len], 0, layout.slots)
            v = torch.index_select(value_buffer[:, : layout.key_len], 0, layout.slots)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            attn_mask=layout.bias,
            enable_gqa=d.num_kv_heads != d.num_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, d.num_heads * d.head_dim))

    def _attend_per_row(
        self, q: torch.Tensor, key_buffer: torch.Tensor, value_buffer: torch.Tensor, layout: BatchLayout
    ) -> torch.Tensor:
        """Each row against a view of its own slot, (B, T, heads, D) out; padded queries stay 0.

        Gathering every row's keys into one padded batch copies B x key_len cached rows per layer,
        which grows with the conversation; views of each slot copy nothing and skip the padding.
        """
        d = self.dims
        out = q.new_zeros(q.shape)
        for row, (slot, new) in enumerate(zip(layout.slot_list, layout.num_new, strict=True)):
            total = layout.past[row] + new
            keys = key_buffer[slot, :total].transpose(0, 1)[None]
            values = value_buffer[slot, :total].transpose(0, 1)[None]
            # One new token sees every key of its row; several need the row's mask (causal, blocks).
            bias = None if new == 1 else layout.bias[row : row + 1, :, :new, :total]
            out[row, :new] = F.scaled_dot_product_attention(
                q[row : row + 1, :new].transpose(1, 2),
                keys,
                values,
                attn_mask=bias,
                enable_gqa=d.num_kv_heads != d.num_heads,
            )[0].transpose(0, 1)
        return out


class SwiGLU(nn.Module):
    """The gated feed-forward block: down(silu(gate(x)) * up(x))."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm block: x += attn(norm(x)); x += mlp(norm(x))."""

    def __init__(self, dims: LayerDims) -> None:
        super().__init__()
        self.self_attn = Attention(dims)
        self.mlp = SwiGLU(dims.hidden_size, dims.intermediate_size)
        self.input_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(dims.hidden_size, dims.rms_norm_eps)

    def forward(
        self,
        x: torch.Tensor,
        layout: BatchLayout,
        cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), layout, cache)
        return x + self.mlp(self.post_attention_layernorm(x))
