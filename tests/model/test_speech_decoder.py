"""The speech decoder: special ids, prefix handling, batched segments, and the stop rule."""

from __future__ import annotations

import torch

from app.model.speech_out.speech_decoder import (
    ARRow,
    SegmentInput,
    SpeechDecoder,
    SpeechDecoderConfig,
    reshape_llm_vectors,
)

CONFIG = SpeechDecoderConfig(hidden_size=16, codec_vocab=64, num_heads=2, intermediate_size=32, num_blocks=4)


def _decoder() -> SpeechDecoder:
    torch.manual_seed(0)
    decoder = SpeechDecoder(CONFIG).eval()
    with torch.no_grad():
        for p in decoder.parameters():
            p.normal_(0, 0.5)
    return decoder


def _segment(seed: int, prefix_len: int, text_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(prefix_len, 16, generator=g), torch.randn(text_len, 16, generator=g)


def test_special_ids_follow_the_codebook() -> None:
    assert (CONFIG.bos, CONFIG.sos, CONFIG.eos, CONFIG.pad, CONFIG.vocab_size) == (64, 65, 66, 67, 68)
    published = SpeechDecoderConfig.from_model_json(
        [
            896,
            1024,
            {
                "transformer_attention_heads": 14,
                "transformer_linear_units": 4864,
                "transformer_num_blocks": 4,
            },
        ]
    )
    assert (published.bos, published.sos, published.eos, published.pad) == (1024, 1025, 1026, 1027)
    assert SpeechDecoderConfig.from_model_json(CONFIG.to_model_json()) == CONFIG


def test_reshape_turns_each_llm_vector_into_consecutive_rows() -> None:
    vectors = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 64)
    rows = reshape_llm_vectors(vectors, 16)
    assert rows.shape == (8, 16)
    torch.testing.assert_close(rows[5], vectors[1, 16:32])


def _greedy(
    decoder: SpeechDecoder, prefix: torch.Tensor, text: torch.Tensor, steps: int
) -> list[torch.Tensor]:
    cache = decoder.new_cache(1, 128)
    slot = cache.allocate()
    [row] = decoder.prepare_segments([SegmentInput(slot, prefix, text)], cache)
    logits = decoder.forward_ar([row], cache, [prefix.shape[0]])
    out = [logits[0]]
    for _ in range(steps):
        token = int(decoder.mask_non_codes(logits[0]).argmax())
        logits = decoder.forward_ar(decoder.token_rows([slot], [token]), cache, [prefix.shape[0]])
        out.append(logits[0])
    return out


def test_incremental_decoding_equals_one_block_forward() -> None:
    """The cached step-by-step logits equal a single pass with the block-causal mask."""
    decoder = _decoder()
    prefix, text = _segment(1, 8, 5)
    stepwise = _greedy(decoder, prefix, text, steps=6)
    tokens = [int(decoder.mask_non_codes(s).argmax()) for s in stepwise[:-1]]

    cache = decoder.new_cache(1, 128)
    slot = cache.allocate()
    [row] = decoder.prepare_segments([SegmentInput(slot, prefix, text)], cache)
    fed = decoder.embedding(torch.tensor(tokens))
    whole = ARRow(slot, torch.cat([row.embeds, fed]), bidirectional=row.bidirectional)
    # Run the whole stream in one forward and read every position's logits.
    with torch.inference_mode():
        from app.model.llm.transformer import build_layout

        past = cache.lengths[slot]
        layout = build_layout(
            [whole.embeds.shape[0]],
            decoder.rotary_emb,
            dtype=torch.float32,
            device=torch.device("cpu"),
            slots=[slot],
            past_lengths=[past],
            rope_starts=[0],
            bidirectional=[whole.bidirectional],
        )
        x = layout.pad([whole.embeds])
        for i, layer in enumerate(decoder.layers):
            x = layer(x, layout, cache.layer(i))
        logits = decoder.out_fnn(decoder.norm(x[0]))
    first = row.embeds.shape[0] - 1
    for step, expected in enumerate(stepwise):
        torch.testing.assert_close(logits[first + step], expected, atol=1e-4, rtol=0)


def test_prefix_changes_the_output_and_text_block_is_bidirectional() -> None:
    decoder = _decoder()
    prefix, text = _segment(2, 8, 5)
    base = _greedy(decoder, prefix, text, steps=0)[0]
    other_prefix = _greedy(decoder, prefix + 1.0, text, steps=0)[0]
    assert not torch.allclose(base, other_prefix)
    # Changing the LAST text row changes what BOS saw: only true if the block is bidirectional.
    cache = decoder.new_cache(2, 64)
    a, b = cache.allocate(), cache.allocate()
    text2 = text.clone()
    text2[-1] += 1.0
    rows = decoder.prepare_segments([SegmentInput(a, prefix, text), SegmentInput(b, prefix, text2)], cache)
    assert not torch.allclose(rows[0].embeds[1], rows[1].embeds[1])


def test_batched_segments_equal_each_alone() -> None:
    decoder = _decoder()
    inputs = [_segment(3, 8, 5), _segment(4, 12, 9), _segment(5, 4, 3)]
    alone = [_greedy(decoder, p, t, steps=4) for p, t in inputs]
    cache = decoder.new_cache(3, 128)
    slots = [cache.allocate() for _ in inputs]
    prefixes = [p.shape[0] for p, _ in inputs]
    rows = decoder.prepare_segments(
        [SegmentInput(s, p, t) for s, (p, t) in zip(slots, inputs, strict=True)], cache
    )
    logits = decoder.forward_ar(rows, cache, prefixes)
    got = [[logits[i]] for i in range(3)]
    for _ in range(4):
        tokens = [int(decoder.mask_non_codes(g[-1]).argmax()) for g in got]
        logits = decoder.forward_ar(decoder.token_rows(slots, tokens), cache, prefixes)
        for i in range(3):
            got[i].append(logits[i])
    for g, a in zip(got, alone, strict=True):
        for x, y in zip(g, a, strict=True):
            torch.testing.assert_close(x, y, atol=1e-5, rtol=0)


def test_masking_keeps_codes_and_eos_only() -> None:
    logits = torch.zeros(CONFIG.vocab_size)
    masked = _decoder().mask_non_codes(logits)
    assert torch.isinf(masked[[CONFIG.bos, CONFIG.sos, CONFIG.pad]]).all()
    assert torch.isfinite(masked[: CONFIG.codec_vocab]).all() and torch.isfinite(masked[CONFIG.eos])
