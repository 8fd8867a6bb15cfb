"""The speech decoder ("LLM2TTS"): LLM text and hidden states in, single-codebook codec tokens out.

Three stacks of Llama layers (HF parameter names, no biases, full multi-head attention):
- `layers_pre_nn`: the pre-network over the re-embedded segment text, bidirectional, no final norm;
- `layers_prefix`: the prefix tower over the LLM hidden states; layer i's keys and values become the
  cached prefix of AR layer i (its hidden output is otherwise unused);
- `layers` + `norm` + `out_fnn`: the autoregressive decoder.

Quirks of the published model kept on purpose:
- the conditioning block [BOS, pre_nn(text)] attends bidirectionally to itself and to the prefix;
- rotary positions restart at 0 for the prefix and again for the AR stream (position = cache
  length - prefix length), although both share one cache;
- sampling is top-k (k=2 in server.json) with no temperature; generation stops at EOS or 1000 tokens.
Deliberate change: BOS, SOS and PAD are masked out of sampling; the published code could sample
them and then hand the codec an id it has no code for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from app.model.llm.kv_cache import CacheShape, SlotKVCache
from app.model.llm.transformer import (
    BatchLayout,
    DecoderLayer,
    LayerDims,
    RMSNorm,
    RotaryEmbedding,
    build_layout,
)


@dataclass(frozen=True)
class SpeechDecoderConfig:
    """Dimensions from `decoder/model.json`, a JSON list `[idim, odim, {args}]`."""

    hidden_size: int  # idim: also the width of the reshaped LLM vectors
    codec_vocab: int  # odim: codec codebook size; four special ids follow it
    num_heads: int
    intermediate_size: int
    num_blocks: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_tokens: int = 1000

    @property
    def bos(self) -> int:
        return self.codec_vocab

    @property
    def sos(self) -> int:
        return self.codec_vocab + 1

    @property
    def eos(self) -> int:
        return self.codec_vocab + 2

    @property
    def pad(self) -> int:
        return self.codec_vocab + 3

    @property
    def vocab_size(self) -> int:
        return self.codec_vocab + 4

    @classmethod
    def from_model_json(cls, raw: list) -> SpeechDecoderConfig:
        idim, odim, args = raw
        return cls(
            hidden_size=int(args.get("transformer_attention_dim", idim)),
            codec_vocab=int(odim),
            num_heads=int(args["transformer_attention_heads"]),
            intermediate_size=int(args["transformer_linear_units"]),
            num_blocks=int(args["transformer_num_blocks"]),
        )

    @classmethod
    def from_file(cls, path: Path) -> SpeechDecoderConfig:
        return cls.from_model_json(json.loads(Path(path).read_text()))

    def to_model_json(self) -> list:
        """The published file's shape, with the keys our loader reads plus its fixed training flags."""
        return [
            self.hidden_size,
            self.codec_vocab,
            {
                "idim": self.hidden_size,
                "odim": self.codec_vocab,
                "encoder_input_dim": self.hidden_size,
                "encoder_output_dim": self.hidden_size,
                "encoder_layer_config": "transformer",
                "encoder_criterion": "ce",
                "kv_cache_prefix_finetune": 1,
                "train_dtype": "bfloat16",
                "transformer_attention_dim": self.hidden_size,
                "transformer_attention_heads": self.num_heads,
                "transformer_linear_units": self.intermediate_size,
                "transformer_num_blocks": self.num_blocks,
                "transformer_dropout_rate": 0.1,
                "transformer_attention_dropout_rate": 0.1,
            },
        ]

    def layer_dims(self) -> LayerDims:
        return LayerDims(
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_heads,
            head_dim=self.hidden_size // self.num_heads,
            rms_norm_eps=self.rms_norm_eps,
            qkv_bias=False,
        )


@dataclass
class SegmentInput:
    """One text segment to speak: LLM hidden states and re-embedded text, both (n, hidden_size)."""

    slot: int
    prefix: torch.Tensor
    text: torch.Tensor


@dataclass
class ARRow:
    """New AR-stream input for one slot: a conditioning block plus SOS, or one sampled token."""

    slot: int
    embeds: torch.Tensor  # (n, hidden_size)
    bidirectional: int  # leading tokens that see each other (the conditioning block)


def reshape_llm_vectors(vectors: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """(N, llm_hidden) -> (N * llm_hidden / hidden_size, hidden_size), row-major: the published trick."""
    if vectors.shape[-1] % hidden_size:
        raise ValueError(
            f"LLM width {vectors.shape[-1]} is not a multiple of the speech decoder width {hidden_size}"
        )
    return vectors.reshape(-1, hidden_size)


class SpeechDecoder(nn.Module):
    """LLM2TTS with a caller-owned slot cache: one slot per segment being spoken."""

    def __init__(self, config: SpeechDecoderConfig) -> None:
        super().__init__()
        self.config = config
        dims = config.layer_dims()
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers_pre_nn = nn.ModuleList(DecoderLayer(dims) for _ in range(config.num_blocks // 2))
        self.layers_prefix = nn.ModuleList(DecoderLayer(dims) for _ in range(config.num_blocks))
        self.layers = nn.ModuleList(DecoderLayer(dims) for _ in range(config.num_blocks))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.out_fnn = nn.Linear(config.hidden_size, config.vocab_size)
        self.rotary_emb_pre_nn = RotaryEmbedding(dims.head_dim, config.rope_theta)
        self.rotary_emb_prefix = RotaryEmbedding(dims.head_dim, config.rope_theta)
        self.rotary_emb = RotaryEmbedding(dims.head_dim, config.rope_theta)

    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def new_cache(self, num_slots: int, max_len: int) -> SlotKVCache:
        """One slot holds one segment: prefix + conditioning block + generated tokens."""
        d = self.config.layer_dims()
        shape = CacheShape(self.config.num_blocks, d.num_kv_heads, d.head_dim, num_slots, max_len)
        return SlotKVCache(shape, dtype=self.dtype, device=self.device)

    def _layout(self, num_new: list[int], rotary: RotaryEmbedding, **kwargs) -> BatchLayout:
        return build_layout(num_new, rotary, dtype=self.dtype, device=self.device, **kwargs)

    @torch.inference_mode()
    def prepare_segments(self, segments: list[SegmentInput], cache: SlotKVCache) -> list[ARRow]:
        """Run the pre-network and the prefix tower for new segments (batched).

        Writes each segment's prefix into its (empty) slot and returns its first AR row:
        [BOS, pre_nn(text), SOS], whose logits give the first codec token.
        """
        if not segments:
            return []
        for seg in segments:
            if cache.lengths[seg.slot] != 0:
                raise ValueError(f"segment slot {seg.slot} is not empty")
            cache.check_room(seg.slot, seg.prefix.shape[0] + seg.text.shape[0] + 2)
        text_lengths = [seg.text.shape[0] for seg in segments]
        layout = self._layout(text_lengths, self.rotary_emb_pre_nn, bidirectional=text_lengths)
        x = layout.pad([seg.text.to(self.dtype) for seg in segments])
        for layer in self.layers_pre_nn:
            x = layer(x, layout)
        conditioned = [x[i, :n] for i, n in enumerate(text_lengths)]

        slots = [seg.slot for seg in segments]
        prefix_lengths = [seg.prefix.shape[0] for seg in segments]
        layout = self._layout(
            prefix_lengths,
            self.rotary_emb_prefix,
            slots=slots,
            past_lengths=[0] * len(segments),
            bidirectional=prefix_lengths,
        )
        h = layout.pad([seg.prefix.to(self.dtype) for seg in segments])
        for index, layer in enumerate(self.layers_prefix):
            h = layer(h, layout, cache.layer(index))
        cache.advance(slots, prefix_lengths)

        bos, sos = self.embedding(torch.tensor([self.config.bos, self.config.sos], device=self.device))
        return [
            ARRow(slot=slot, embeds=torch.cat([bos[None], cond, sos[None]]), bidirectional=cond.shape[0] + 1)
            for slot, cond in zip(slots, conditioned, strict=True)
        ]

    def token_rows(self, slots: list[int], tokens: list[int]) -> list[ARRow]:
        """AR rows feeding back one sampled token per slot."""
        embeds = self.embedding(torch.tensor(tokens, dtype=torch.long, device=self.device))
        return [ARRow(slot=s, embeds=embeds[i : i + 1], bidirectional=0) for i, s in enumerate(slots)]

    @torch.inference_mode()
    def forward_ar(self, rows: list[ARRow], cache: SlotKVCache, prefix_lengths: list[int]) -> torch.Tensor:
        """One AR step over mixed rows; returns logits (B, vocab) of each row's last position.

        `prefix_lengths[i]` is the prefix length of row i's segment: AR rotary positions count
        from the end of the prefix.
        """
        slots = [row.slot for row in rows]
        num_new = [row.embeds.shape[0] for row in rows]
        for slot, n in zip(slots, num_new, strict=True):
            cache.check_room(slot, n)
        past = [cache.lengths[s] for s in slots]
        layout = self._layout(
            num_new,
            self.rotary_emb,
            slots=slots,
            past_lengths=past,
            rope_starts=[p - prefix for p, prefix in zip(past, prefix_lengths, strict=True)],
            bidirectional=[row.bidirectional for row in rows],
        )
        x = layout.pad([row.embeds.to(self.dtype) for row in rows])
        for index, layer in enumerate(self.layers):
            x = layer(x, layout, cache.layer(index))
        cache.advance(slots, num_new)
        return self.out_fnn(self.norm(layout.last_positions(x))).float()

    def mask_non_codes(self, logits: torch.Tensor) -> torch.Tensor:
        """Keep codec codes and EOS; BOS, SOS and PAD are never valid outputs."""
        c = self.config
        masked = logits.clone()
        masked[..., [c.bos, c.sos, c.pad]] = float("-inf")
        return masked
