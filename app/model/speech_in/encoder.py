"""Streaming speech encoder: global CMVN, Conv2d subsampling x4 and a chunked rel-pos transformer.

Module and parameter names mirror the published checkpoint (``encoder.`` prefix removed), so the
published ``final.pt`` loads into :class:`SpeechEncoder` key for key. Inference is batched across
sessions: each session owns an :class:`EncoderState`, and :meth:`SpeechEncoder.forward_chunks` runs
one 160 ms chunk for many sessions in one forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from app.model.speech_in.cmvn import GlobalCMVN

PE_TABLE_LEN = 5000
"""Length of the published sinusoid table; only its wrap period survives in the inference rule."""

_SUPPORTED = {
    "layer_config": "subsampling-transformer",
    "subsampling_rate": 4,
    "input_layer": "linear",
    "pos_enc_class": "rel-enc",
    "normalize_before": True,
    "concat_after": False,
    "positionwise_layer_type": "linear",
}


@dataclass
class EncoderConfig:
    """Encoder hyper-parameters, as in ``encoder_conf`` (and top-level ``input_dim``) of train.yaml."""

    input_dim: int
    subsampling_input_dim: int
    subsampling_output_dim: int
    transformer_input_dim: int
    attention_dim: int
    attention_heads: int
    linear_units: int
    num_blocks: int
    chunk_size: int
    left_chunks: int
    output_dim: int
    subsampling_rate: int = 4
    layer_config: str = "subsampling-transformer"
    input_layer: str = "linear"
    pos_enc_class: str = "rel-enc"
    normalize_before: bool = True
    concat_after: bool = False
    positionwise_layer_type: str = "linear"
    dynamic_chunks: bool = False
    subsampling_dropout_rate: float = 0.1
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.0
    positional_dropout_rate: float = 0.1

    def __post_init__(self) -> None:
        for name, expected in _SUPPORTED.items():
            if getattr(self, name) != expected:
                raise NotImplementedError(
                    f"encoder {name}={getattr(self, name)!r} unsupported (only {expected!r})"
                )
        if self.subsampling_input_dim != self.input_dim:
            raise ValueError("subsampling-input-dim must equal input_dim")
        if self.subsampling_output_dim != self.transformer_input_dim:
            raise ValueError("subsampling-output-dim must equal transformer-input-dim")
        if self.attention_dim % self.attention_heads or self.attention_dim % 2:
            raise ValueError("attention dim must be even and divisible by the number of heads")
        if self.chunk_size <= 0 or self.left_chunks <= 0:
            raise ValueError("streaming needs transformer-chunk_size > 0 and transformer-left_chunks > 0")

    @classmethod
    def from_train_yaml(cls, cfg: dict[str, Any]) -> EncoderConfig:
        """Read the parsed published train.yaml (hyphenated keys under ``encoder_conf``)."""
        enc = cfg["encoder_conf"]
        overview = enc.get("overview_conf", {})
        sub = enc["para_conf"]["subsampling"]
        tr = enc["para_conf"]["transformer"]
        return cls(
            input_dim=int(cfg["input_dim"]),
            subsampling_input_dim=int(sub["subsampling-input-dim"]),
            subsampling_output_dim=int(sub["subsampling-output-dim"]),
            transformer_input_dim=int(tr["transformer-input-dim"]),
            attention_dim=int(tr["transformer-attention-dim"]),
            attention_heads=int(tr["transformer-attention-heads"]),
            linear_units=int(tr["transformer-linear-units"]),
            num_blocks=int(tr["transformer-num-blocks"]),
            chunk_size=int(tr["transformer-chunk_size"]),
            left_chunks=int(tr["transformer-left_chunks"]),
            output_dim=int(overview.get("encoder-output-dim", tr.get("transformer-output-dim", 0))),
            subsampling_rate=int(sub["subsampling-rate"]),
            layer_config=str(overview.get("encoder-layer-config", "subsampling-transformer")),
            input_layer=str(tr.get("transformer-input-layer", "linear")),
            pos_enc_class=str(tr.get("transformer-pos-enc-class", "rel-enc")),
            normalize_before=bool(tr.get("transformer-normalize-before", True)),
            concat_after=bool(tr.get("transformer-concat-after", False)),
            positionwise_layer_type=str(tr.get("transformer-positionwise-layer-type", "linear")),
            dynamic_chunks=bool(tr.get("transformer-dynamic-chunks", False)),
            subsampling_dropout_rate=float(sub.get("subsampling-dropout-rate", 0.1)),
            dropout_rate=float(tr.get("transformer-dropout-rate", 0.1)),
            attention_dropout_rate=float(tr.get("transformer-attention-dropout-rate", 0.0)),
            positional_dropout_rate=float(tr.get("transformer-positional-dropout-rate", 0.1)),
        )

    def to_train_yaml_fragment(self) -> dict[str, Any]:
        """The ``input_dim`` and ``encoder_conf`` entries of a train.yaml, in the published layout."""
        return {
            "input_dim": self.input_dim,
            "encoder_conf": {
                "overview_conf": {
                    "encoder-input-dim": self.input_dim,
                    "encoder-layer-config": self.layer_config,
                    "encoder-output-dim": self.output_dim,
                },
                "para_conf": {
                    "subsampling": {
                        "subsampling-dropout-rate": self.subsampling_dropout_rate,
                        "subsampling-input-dim": self.subsampling_input_dim,
                        "subsampling-output-dim": self.subsampling_output_dim,
                        "subsampling-rate": self.subsampling_rate,
                    },
                    "transformer": {
                        "transformer-attention-dim": self.attention_dim,
                        "transformer-attention-dropout-rate": self.attention_dropout_rate,
                        "transformer-attention-heads": self.attention_heads,
                        "transformer-chunk_size": self.chunk_size,
                        "transformer-concat-after": self.concat_after,
                        "transformer-dropout-rate": self.dropout_rate,
                        "transformer-dynamic-chunks": self.dynamic_chunks,
                        "transformer-input-dim": self.transformer_input_dim,
                        "transformer-input-layer": self.input_layer,
                        "transformer-left_chunks": self.left_chunks,
                        "transformer-linear-units": self.linear_units,
                        "transformer-normalize-before": self.normalize_before,
                        "transformer-num-blocks": self.num_blocks,
                        "transformer-output-dim": self.output_dim,
                        "transformer-pos-enc-class": self.pos_enc_class,
                        "transformer-positional-dropout-rate": self.positional_dropout_rate,
                        "transformer-positionwise-layer-type": self.positionwise_layer_type,
                    },
                },
            },
        }

    @property
    def head_dim(self) -> int:
        """Per-head key/value width d_k."""
        return self.attention_dim // self.attention_heads

    @property
    def cache_frames(self) -> int:
        """Frames of K/V kept per layer between chunks (left_chunks * chunk_size = 64)."""
        return self.left_chunks * self.chunk_size

    @property
    def full_chunk_frames(self) -> int:
        """(left_chunks + 1) * chunk_size = 68: the offset in the key-position rule."""
        return (self.left_chunks + 1) * self.chunk_size

    @property
    def pe_max_len(self) -> int:
        """Wrap period of ``pe_index``: chunk_size * (5000 // chunk_size) - full_chunk_frames = 4932."""
        return self.chunk_size * (PE_TABLE_LEN // self.chunk_size) - self.full_chunk_frames

    @property
    def feat_frames_per_chunk(self) -> int:
        """Fbank rows per chunk (19): chunk_size * 4 new frames + the subsampler's 3-frame context."""
        return self.chunk_size * self.subsampling_rate + 3

    @property
    def subsampled_freq(self) -> int:
        """Frequency bins left after two k3/s2 convolutions (19 for 80 bins)."""
        return ((self.input_dim - 1) // 2 - 1) // 2


@dataclass
class EncoderState:
    """One session's streaming encoder state.

    ``keys[i]`` / ``values[i]`` hold layer i's cached K and V, each (heads, L, d_k) with
    L <= left_chunks * chunk_size; both lists are empty before the first chunk. ``pe_index`` is the
    published position counter: wrapped modulo ``pe_max_len`` and then advanced by chunk_size per chunk.
    """

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)
    pe_index: int = 0

    @property
    def cache_len(self) -> int:
        """Cached frames per layer (0 at stream start)."""
        return self.keys[0].shape[1] if self.keys else 0


def sinusoid_positions(positions: Tensor, dim: int) -> Tensor:
    """Float32 sinusoids (..., dim) for float32 positions (...): sin on even dims, cos on odd dims."""
    div_term = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) * -(math.log(10000.0) / dim)
    )
    angles = positions.to(torch.float32).unsqueeze(-1) * div_term
    pe = torch.empty(*positions.shape, dim, dtype=torch.float32, device=positions.device)
    pe[..., 0::2] = torch.sin(angles)
    pe[..., 1::2] = torch.cos(angles)
    return pe


class Conv2dSubsampling4(nn.Module):
    """Conv2d(1->C, k3, s2) -> ReLU -> Conv2d(C->C, k3, s2) -> ReLU -> Linear(C * F' -> out), no padding."""

    def __init__(self, input_dim: int, output_dim: int, freq_out: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, output_dim, 3, 2), nn.ReLU(), nn.Conv2d(output_dim, output_dim, 3, 2), nn.ReLU()
        )
        self.out = nn.Sequential(nn.Linear(output_dim * freq_out, output_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, (T - 3) // 4, out), channels flattened outside frequency."""
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class Subsampling(nn.Module):
    """Wrapper holding the subsampler as ``core``, as the published layout does."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.core = Conv2dSubsampling4(
            config.input_dim, config.subsampling_output_dim, config.subsampled_freq
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, T, F) -> (B, T', C)."""
        return self.core(x)


class RelPositionAttention(nn.Module):
    """Multi-head attention with the published "rel-enc" position term (no rel_shift)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        self.pos_bias_u = nn.Parameter(torch.empty(heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def forward(
        self, x: Tensor, pos_emb: Tensor, k_cache: Tensor, v_cache: Tensor, key_valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Attend the new frames over cache + new frames.

        Args:
            x: (B, T, D) new frames (already normalised).
            pos_emb: (B, Lc + T, D) sinusoids of each key position.
            k_cache, v_cache: (B, H, Lc, d_k), left-padded where a row has less cache.
            key_valid: (B, Lc + T) bool, False on padding; None when no row is padded.

        Returns:
            output (B, T, D) and the concatenated K and V (B, H, Lc + T, d_k).
        """
        b, t, d = x.shape
        q = self.linear_q(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.linear_k(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.linear_v(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k_all = torch.cat([k_cache, k], dim=2)
        v_all = torch.cat([v_cache, v], dim=2)

        matrix_ac = torch.matmul(q + self.pos_bias_u.unsqueeze(1), k_all.transpose(-2, -1))
        # (q + v) . (W_pos s)^T computed as ((q + v) W_pos_h) . s^T: the same product reassociated, which
        # avoids projecting all Lc + T sinusoids through linear_pos in every layer (~8x fewer FLOPs).
        w_pos = self.linear_pos.weight.view(self.heads, self.head_dim, d)
        q_pos = torch.matmul(q + self.pos_bias_v.unsqueeze(1), w_pos)
        matrix_bd = torch.matmul(q_pos, pos_emb.unsqueeze(1).transpose(-2, -1))
        scores = (matrix_ac + matrix_bd) / math.sqrt(self.head_dim)
        if key_valid is not None:
            scores = scores.masked_fill(~key_valid[:, None, None, :], float("-inf"))
        attn = torch.softmax(scores.float(), dim=-1).to(v_all.dtype)
        out = torch.matmul(attn, v_all).transpose(1, 2).reshape(b, t, d)
        return self.linear_out(out), k_all, v_all


class FeedForward(nn.Module):
    """Linear -> ReLU -> Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) -> (..., D)."""
        return self.w_2(torch.relu(self.w_1(x)))


class EncoderLayer(nn.Module):
    """Pre-LN block: x += MHA(LN1 x); x += FFN(LN2 x)."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.self_attn = RelPositionAttention(config.attention_dim, config.attention_heads)
        self.feed_forward = FeedForward(config.attention_dim, config.linear_units)
        self.norm1 = nn.LayerNorm(config.attention_dim)
        self.norm2 = nn.LayerNorm(config.attention_dim)

    def forward(
        self, x: Tensor, pos_emb: Tensor, k_cache: Tensor, v_cache: Tensor, key_valid: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns the new hidden states and this layer's concatenated K and V."""
        att, k_all, v_all = self.self_attn(self.norm1(x), pos_emb, k_cache, v_cache, key_valid)
        x = x + att
        x = x + self.feed_forward(self.norm2(x))
        return x, k_all, v_all


class StreamingTransformer(nn.Module):
    """Input layer (Linear -> LayerNorm -> ReLU, then x * sqrt(D)), the blocks and ``after_norm``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.embed = nn.Sequential(
            nn.Linear(config.transformer_input_dim, config.attention_dim),
            nn.LayerNorm(config.attention_dim),
            nn.ReLU(),
        )
        self.xscale = math.sqrt(config.attention_dim)
        self.encoders = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_blocks))
        self.after_norm = nn.LayerNorm(config.attention_dim)


def _stack_left_padded(
    caches: list[Tensor | None], longest: int, like: Tensor, heads: int, head_dim: int
) -> Tensor:
    """Stack per-session (H, L_b, d_k) caches (None: empty) into (B, H, longest, d_k), left-padded."""
    if longest == 0:
        return like.new_zeros(len(caches), heads, 0, head_dim)
    if all(c is not None and c.shape[1] == longest for c in caches):
        return torch.stack(caches)  # type: ignore[arg-type]
    out = like.new_zeros(len(caches), heads, longest, head_dim)
    for row, cache in enumerate(caches):
        if cache is not None:
            out[row, :, longest - cache.shape[1] :] = cache
    return out


class SpeechEncoder(nn.Module):
    """CMVN + subsampling + streaming transformer, with the published module names.

    ``state_dict()`` keys equal the published ``encoder.*`` keys without the prefix:
    ``global_cmvn.{mean,istd}``, ``enc.0.core.{conv.0,conv.2,out.0}.*``, ``enc.1.embed.{0,1}.*``,
    ``enc.1.encoders.{i}.{self_attn,feed_forward,norm1,norm2}.*`` and ``enc.1.after_norm.*``.
    """

    def __init__(self, config: EncoderConfig, cmvn: GlobalCMVN | None = None) -> None:
        super().__init__()
        self.config = config
        self.global_cmvn = cmvn if cmvn is not None else GlobalCMVN(config.input_dim)
        self.enc = nn.ModuleList([Subsampling(config), StreamingTransformer(config)])

    def new_state(self) -> EncoderState:
        """A fresh per-session state: empty caches, pe_index 0."""
        return EncoderState()

    @torch.no_grad()
    def forward_chunks(self, feats: Tensor, states: list[EncoderState]) -> Tensor:
        """Encode one chunk for each of B sessions in one batched forward.

        Args:
            feats: (B, 19, F) raw fbank (CMVN is applied here), any float dtype.
            states: one state per row; updated in place (new K/V appended and trimmed to the last
                left_chunks * chunk_size frames, ``pe_index`` advanced).

        Returns:
            (B, chunk_size, D) encoder output in the parameters' dtype.

        Quirks kept on purpose: within a row, attention over cache + new frames is unmasked (only
        batch padding is masked); key j of a row has position ``max(0, p - 68) + j`` where
        ``p = pe_index % 4932`` (published inference rule, which drifts from training positions).
        """
        cfg = self.config
        batch = feats.shape[0]
        if len(states) != batch:
            raise ValueError(f"{batch} feature rows but {len(states)} states")
        if feats.shape[1] != cfg.feat_frames_per_chunk or feats.shape[2] != cfg.input_dim:
            raise ValueError(
                f"expected (B, {cfg.feat_frames_per_chunk}, {cfg.input_dim}) features, got {tuple(feats.shape)}"
            )
        subsampling, transformer = self.enc[0], self.enc[1]
        weight = subsampling.core.out[0].weight
        x = subsampling(self.global_cmvn(feats.to(weight.device)).to(weight.dtype))
        x = transformer.embed(x) * transformer.xscale
        new_len = x.shape[1]

        cache_lens = [s.cache_len for s in states]
        longest = max(cache_lens)
        pads = [longest - n for n in cache_lens]
        wrapped = [s.pe_index % cfg.pe_max_len for s in states]
        # Padded key i of row b has position base_b + i - pad_b; padded positions are masked anyway.
        starts = [max(0, p - cfg.full_chunk_frames) - pad for p, pad in zip(wrapped, pads, strict=True)]
        key_index = torch.arange(longest + new_len, device=x.device, dtype=torch.float32)
        positions = torch.tensor(starts, device=x.device, dtype=torch.float32)[:, None] + key_index
        pos_emb = sinusoid_positions(positions, cfg.attention_dim).to(x.dtype)
        key_valid = None
        if any(pads):
            key_valid = (
                key_index[None, :] >= torch.tensor(pads, device=x.device, dtype=torch.float32)[:, None]
            )

        keep_from = [max(pad, longest + new_len - cfg.cache_frames) for pad in pads]
        new_keys: list[list[Tensor]] = [[] for _ in states]
        new_values: list[list[Tensor]] = [[] for _ in states]
        heads, head_dim = cfg.attention_heads, cfg.head_dim
        for layer_index, layer in enumerate(transformer.encoders):
            k_cache = _stack_left_padded(
                [s.keys[layer_index] if s.keys else None for s in states], longest, x, heads, head_dim
            )
            v_cache = _stack_left_padded(
                [s.values[layer_index] if s.values else None for s in states], longest, x, heads, head_dim
            )
            x, k_all, v_all = layer(x, pos_emb, k_cache, v_cache, key_valid)
            for row in range(batch):
                # clone() so a session's cache owns its memory instead of pinning the whole batch tensor.
                new_keys[row].append(k_all[row, :, keep_from[row] :].clone())
                new_values[row].append(v_all[row, :, keep_from[row] :].clone())
        x = transformer.after_norm(x)

        for row, state in enumerate(states):
            state.keys = new_keys[row]
            state.values = new_values[row]
            state.pe_index = wrapped[row] + cfg.chunk_size
        return x
