"""A differentiable twin of the runtime's streaming encoder and adapter.

`SpeechEncoder.forward_chunks` runs under no_grad, so training cannot call it; `encode_stream`
calls the same submodules in the same order, chunk by chunk, with the same caches and the same
position rule (key j of chunk i has position max(0, pe_index - 68) + j, pe_index = 4 i modulo the
wrap), for B streams that start together. `adapt_stream` is the adapter's streaming rule (4 zero
frames of left context, then each chunk's last 4 frames), which for streams that start together
equals one causal conv over the whole sequence. `check_equivalence` asserts both against the
runtime code.
"""

from __future__ import annotations

import torch
from torch import Tensor

from app.model.speech_in.adapter import ConvAdapter
from app.model.speech_in.encoder import SpeechEncoder, sinusoid_positions


def encode_stream(encoder: SpeechEncoder, feats: Tensor) -> Tensor:
    """(B, N, 19, 80) raw fbank chunks -> (B, N * chunk_size, D) encoder output, with gradients."""
    cfg = encoder.config
    batch, chunks = feats.shape[:2]
    subsampling, transformer = encoder.enc[0], encoder.enc[1]
    # The subsampler sees each chunk on its own (19 rows -> 4 frames), so all chunks run at once.
    x = subsampling(encoder.global_cmvn(feats.reshape(batch * chunks, *feats.shape[2:])))
    x = (transformer.embed(x) * transformer.xscale).view(batch, chunks, cfg.chunk_size, -1)
    heads, head_dim = cfg.attention_heads, cfg.head_dim
    keys = [x.new_zeros(batch, heads, 0, head_dim) for _ in transformer.encoders]
    values = [x.new_zeros(batch, heads, 0, head_dim) for _ in transformer.encoders]
    pe_index = 0
    outputs = []
    for chunk in range(chunks):
        h = x[:, chunk]
        wrapped = pe_index % cfg.pe_max_len
        start = max(0, wrapped - cfg.full_chunk_frames)
        positions = start + torch.arange(keys[0].shape[2] + cfg.chunk_size, dtype=torch.float32)
        pos_emb = sinusoid_positions(positions[None].expand(batch, -1), cfg.attention_dim).to(h.dtype)
        for index, layer in enumerate(transformer.encoders):
            h, k_all, v_all = layer(h, pos_emb, keys[index], values[index], None)
            keys[index] = k_all[:, :, -cfg.cache_frames :]
            values[index] = v_all[:, :, -cfg.cache_frames :]
        outputs.append(transformer.after_norm(h))
        pe_index = wrapped + cfg.chunk_size
    return torch.cat(outputs, dim=1)


def adapt_stream(adapter: ConvAdapter, encoded: Tensor) -> Tensor:
    """(B, 4N, C) encoder output -> (B, 2N, llm_hidden), the streaming adapter's output."""
    left = encoded.new_zeros(encoded.shape[0], adapter.config.context_frames, encoded.shape[2])
    return adapter(torch.cat([left, encoded], dim=1))


@torch.no_grad()
def check_equivalence(
    encoder: SpeechEncoder, adapter: ConvAdapter, chunks: int = 20, atol: float = 1e-4
) -> float:
    """Run random features through both paths; raise if they differ. Returns the largest difference."""
    generator = torch.Generator().manual_seed(0)
    feats = 10 + 3 * torch.randn(
        2, chunks, encoder.config.feat_frames_per_chunk, encoder.config.input_dim, generator=generator
    )
    ours = adapt_stream(adapter, encode_stream(encoder, feats))
    states = [encoder.new_state(), encoder.new_state()]
    caches: list = [None, None]
    theirs = []
    for chunk in range(chunks):
        encoded = encoder.forward_chunks(feats[:, chunk], states)
        vectors, caches = adapter.forward_chunks(encoded, caches)
        theirs.append(vectors)
    difference = float((ours - torch.cat(theirs, dim=1)).abs().max())
    if difference > atol:
        raise AssertionError(f"training encoder path differs from forward_chunks by {difference}")
    return difference
