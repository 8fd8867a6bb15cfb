"""Our own lean runtime for the frozen Qwen2 LLM.

It loads any Hugging Face Qwen2 folder (config.json, safetensors or .bin shards) and runs one
forward over rows from several sessions at once: each row names its cache slot and brings either
token ids or input embeddings, one token (decode) or many (prefill). It returns every row's
last-position hidden state after the final norm (what the duplex state head and the speech decoder
read) and, where asked, the LM-head logits of that position.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from app.model.checkpoint_io.weights import load_state_dict_strict, read_weight_files
from app.model.llm.kv_cache import CacheShape, SlotKVCache
from app.model.llm.transformer import DecoderLayer, LayerDims, RMSNorm, RotaryEmbedding, build_layout


@dataclass(frozen=True)
class Qwen2Config:
    """The fields of a Hugging Face Qwen2 config.json that the forward needs."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    max_position_embeddings: int
    torch_dtype: str = "float32"

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict) -> Qwen2Config:
        if raw.get("rope_scaling"):
            raise ValueError(f"rope_scaling {raw['rope_scaling']} is not supported; only plain RoPE is")
        rope_theta = raw.get("rope_theta")
        if rope_theta is None:  # newer transformers nest it under rope_parameters
            rope_theta = (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0)
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=raw["num_attention_heads"],
            num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=float(rope_theta),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            max_position_embeddings=raw.get("max_position_embeddings", 32768),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype") or "float32",
        )

    @classmethod
    def from_folder(cls, folder: Path) -> Qwen2Config:
        path = Path(folder) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: --llm-path must be a Hugging Face Qwen2 folder")
        return cls.from_dict(json.loads(path.read_text()))

    def layer_dims(self) -> LayerDims:
        return LayerDims(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_heads=self.num_attention_heads,
            num_kv_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            qkv_bias=True,
        )


@dataclass
class LLMRow:
    """One session's new input for a step: embeddings (n, hidden) written after its cached tokens."""

    slot: int
    embeds: torch.Tensor
    want_logits: bool = False


@dataclass
class LLMStepOutput:
    """Per row: the last position's hidden state after the final norm, and logits where asked."""

    hidden: torch.Tensor  # (B, hidden)
    logits: torch.Tensor | None  # (R, vocab) for the rows with want_logits, in row order
    logit_rows: list[int]


class Qwen2Body(nn.Module):
    """Embeddings, decoder layers and final norm (HF's `model.*`)."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(
            DecoderLayer(config.layer_dims()) for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta)


class Qwen2Runtime(nn.Module):
    """Qwen2 causal LM whose KV cache belongs to the caller (a `SlotKVCache`)."""

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__()
        self.config = config
        self.model = Qwen2Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    def new_cache(self, num_slots: int, max_len: int) -> SlotKVCache:
        """A cache of `num_slots` sequences of up to `max_len` tokens each."""
        c = self.config
        shape = CacheShape(c.num_hidden_layers, c.num_key_value_heads, c.head_dim, num_slots, max_len)
        return SlotKVCache(shape, dtype=self.dtype, device=self.device)

    def embed(self, token_ids: torch.Tensor | list[int]) -> torch.Tensor:
        """Token ids -> input embeddings (n, hidden)."""
        ids = torch.as_tensor(token_ids, dtype=torch.long, device=self.device)
        return self.model.embed_tokens(ids)

    @torch.inference_mode()
    def forward_rows(self, rows: list[LLMRow], cache: SlotKVCache) -> LLMStepOutput:
        """Run one step for all rows: append their inputs to their slots and read the last position."""
        slots = [row.slot for row in rows]
        if len(set(slots)) != len(slots):
            raise ValueError(f"a slot may appear once per step, got {slots}")
        num_new = [row.embeds.shape[0] for row in rows]
        for slot, n in zip(slots, num_new, strict=True):
            cache.check_room(slot, n)
        past = [cache.lengths[s] for s in slots]
        body = self.model
        layout = build_layout(
            num_new, body.rotary_emb, dtype=self.dtype, device=self.device, slots=slots, past_lengths=past
        )
        x = layout.pad([row.embeds.to(self.dtype) for row in rows])
        for index, layer in enumerate(body.layers):
            x = layer(x, layout, cache.layer(index))
        cache.advance(slots, num_new)
        hidden = body.norm(layout.last_positions(x))
        logit_rows = [i for i, row in enumerate(rows) if row.want_logits]
        logits = self.lm_head(hidden[logit_rows]).float() if logit_rows else None
        return LLMStepOutput(hidden=hidden, logits=logits, logit_rows=logit_rows)


def load_qwen2(
    folder: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Qwen2Runtime:
    """Load a Hugging Face Qwen2 folder into our runtime, strictly.

    `dtype` defaults to fp32 on CPU and the checkpoint's own dtype elsewhere.
    """
    folder = Path(folder)
    config = Qwen2Config.from_folder(folder)
    if dtype is None:
        dtype = torch.float32 if torch.device(device).type == "cpu" else getattr(torch, config.torch_dtype)
    with torch.device("meta"):
        model = Qwen2Runtime(config)
    weights = read_weight_files(folder)
    optional = {"lm_head.weight"} if config.tie_word_embeddings else set()
    # Rotary tables are computed, never loaded; older exports may still carry them.
    weights.drop_suffix("rotary_emb.inv_freq")
    load_state_dict_strict(model, weights, device=device, dtype=dtype, optional=optional)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
