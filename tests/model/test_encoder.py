"""Encoder and adapter tests on a small config, checked against a literal port of the published rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

from app.model.speech_in.adapter import AdapterConfig, ConvAdapter
from app.model.speech_in.cmvn import GlobalCMVN
from app.model.speech_in.encoder import EncoderConfig, EncoderState, SpeechEncoder

PUBLISHED_TRAIN_YAML = {
    "input_dim": 80,
    "encoder_conf": {
        "overview_conf": {
            "encoder-input-dim": 80,
            "encoder-layer-config": "subsampling-transformer",
            "encoder-output-dim": 1024,
        },
        "para_conf": {
            "subsampling": {
                "subsampling-dropout-rate": 0.1,
                "subsampling-input-dim": 80,
                "subsampling-output-dim": 1024,
                "subsampling-rate": 4,
            },
            "transformer": {
                "transformer-attention-dim": 1024,
                "transformer-attention-dropout-rate": 0.0,
                "transformer-attention-heads": 16,
                "transformer-chunk_size": 4,
                "transformer-concat-after": False,
                "transformer-dropout-rate": 0.1,
                "transformer-dynamic-chunks": False,
                "transformer-input-dim": 1024,
                "transformer-input-layer": "linear",
                "transformer-left_chunks": 16,
                "transformer-linear-units": 4096,
                "transformer-normalize-before": True,
                "transformer-num-blocks": 24,
                "transformer-output-dim": 1024,
                "transformer-pos-enc-class": "rel-enc",
                "transformer-positional-dropout-rate": 0.1,
                "transformer-positionwise-layer-type": "linear",
            },
        },
    },
    "model_conf": {
        "activation_func": "gelu",
        "adpter_type": "subsampling",
        "enc_out_dim": 1024,
        "kernel_size": 5,
        "llm_embed_dim": 3584,
        "norm": "layer",
    },
}

SMALL = EncoderConfig(
    input_dim=80,
    subsampling_input_dim=80,
    subsampling_output_dim=32,
    transformer_input_dim=32,
    attention_dim=32,
    attention_heads=2,
    linear_units=64,
    num_blocks=2,
    chunk_size=4,
    left_chunks=16,
    output_dim=32,
)


@pytest.fixture(scope="module")
def encoder() -> SpeechEncoder:
    torch.manual_seed(0)
    cmvn = GlobalCMVN(80, torch.randn(80) + 10.0, torch.rand(80) + 0.2)
    model = SpeechEncoder(SMALL, cmvn).eval()
    with torch.no_grad():  # non-zero biases so the u/v terms and LayerNorm biases matter
        for name, param in model.named_parameters():
            if name.endswith("bias") or "pos_bias" in name:
                param.normal_(0.0, 0.1)
    return model


def _feats(num: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(num, 19, 80, generator=gen) * 3.0 + 10.0


def _reference_chunk(model: SpeechEncoder, feats: Tensor, state: EncoderState) -> Tensor:
    """One session, one chunk, written as the published infer path: literal formulas, no batching."""
    cfg = model.config
    core, tr = model.enc[0].core, model.enc[1]
    x = (feats[None] - model.global_cmvn.mean) * model.global_cmvn.istd
    x = torch.relu(core.conv[2](torch.relu(core.conv[0](x[:, None]))))
    x = core.out[0](x.transpose(1, 2).flatten(2))
    x = torch.relu(tr.embed[1](tr.embed[0](x))) * math.sqrt(cfg.attention_dim)

    pe_index = state.pe_index % (4 * (5000 // 4) - 68)
    pe_length = state.cache_len + x.shape[1]
    start = max(0, pe_index - 68)
    position = torch.arange(start, start + pe_length, dtype=torch.float32)[:, None]
    div_term = torch.exp(
        torch.arange(0, cfg.attention_dim, 2, dtype=torch.float32) * -(math.log(10000.0) / cfg.attention_dim)
    )
    pos_emb = torch.zeros(pe_length, cfg.attention_dim)
    pos_emb[:, 0::2] = torch.sin(position * div_term)
    pos_emb[:, 1::2] = torch.cos(position * div_term)
    state.pe_index = pe_index + 4

    h, dk = cfg.attention_heads, cfg.head_dim
    new_keys, new_values = [], []
    for i, layer in enumerate(tr.encoders):
        att = layer.self_attn
        xn = layer.norm1(x)
        q = att.linear_q(xn).view(1, -1, h, dk).transpose(1, 2)
        k = att.linear_k(xn).view(1, -1, h, dk).transpose(1, 2)
        v = att.linear_v(xn).view(1, -1, h, dk).transpose(1, 2)
        if state.keys:
            k = torch.cat([state.keys[i][None], k], dim=2)
            v = torch.cat([state.values[i][None], v], dim=2)
        new_keys.append(k[0, :, -64:])
        new_values.append(v[0, :, -64:])
        p = att.linear_pos(pos_emb).view(1, -1, h, dk).transpose(1, 2)
        ac = torch.matmul(q + att.pos_bias_u[:, None], k.transpose(-2, -1))
        bd = torch.matmul(q + att.pos_bias_v[:, None], p.transpose(-2, -1))
        attn = torch.softmax((ac + bd) / math.sqrt(dk), dim=-1)
        out = att.linear_out(torch.matmul(attn, v).transpose(1, 2).reshape(1, -1, cfg.attention_dim))
        x = x + out
        x = x + layer.feed_forward.w_2(torch.relu(layer.feed_forward.w_1(layer.norm2(x))))
    state.keys, state.values = new_keys, new_values
    return tr.after_norm(x)[0]


def _run_alone(model: SpeechEncoder, feats: Tensor, state: EncoderState) -> Tensor:
    return torch.cat([model.forward_chunks(f[None], [state])[0] for f in feats])


def test_config_from_published_train_yaml() -> None:
    cfg = EncoderConfig.from_train_yaml(PUBLISHED_TRAIN_YAML)
    assert (cfg.attention_dim, cfg.attention_heads, cfg.num_blocks, cfg.linear_units) == (1024, 16, 24, 4096)
    assert (cfg.head_dim, cfg.cache_frames, cfg.full_chunk_frames, cfg.pe_max_len) == (64, 64, 68, 4932)
    assert (cfg.feat_frames_per_chunk, cfg.subsampled_freq) == (19, 19)
    fragment = cfg.to_train_yaml_fragment()
    assert fragment["encoder_conf"] == PUBLISHED_TRAIN_YAML["encoder_conf"]
    assert EncoderConfig.from_train_yaml(fragment) == cfg

    adapter = AdapterConfig.from_train_yaml(PUBLISHED_TRAIN_YAML)
    assert (adapter.enc_out_dim, adapter.llm_embed_dim, adapter.kernel_size) == (1024, 3584, 5)
    assert AdapterConfig.from_train_yaml(adapter.to_train_yaml_fragment()) == adapter


def test_unsupported_encoder_options_are_rejected() -> None:
    tr = copy.deepcopy(PUBLISHED_TRAIN_YAML)
    tr["encoder_conf"]["para_conf"]["transformer"]["transformer-pos-enc-class"] = "abs-enc"
    with pytest.raises(NotImplementedError, match="pos_enc_class"):
        EncoderConfig.from_train_yaml(tr)


def test_state_dict_keys_match_published_layout(encoder: SpeechEncoder) -> None:
    expected = {"global_cmvn.mean", "global_cmvn.istd"}
    for name in ("conv.0", "conv.2", "out.0"):
        expected |= {f"enc.0.core.{name}.weight", f"enc.0.core.{name}.bias"}
    for name in ("embed.0", "embed.1", "after_norm"):
        expected |= {f"enc.1.{name}.weight", f"enc.1.{name}.bias"}
    for i in range(SMALL.num_blocks):
        prefix = f"enc.1.encoders.{i}"
        for name in ("linear_q", "linear_k", "linear_v", "linear_out"):
            expected |= {f"{prefix}.self_attn.{name}.weight", f"{prefix}.self_attn.{name}.bias"}
        expected |= {f"{prefix}.self_attn.linear_pos.weight", f"{prefix}.self_attn.pos_bias_u"}
        expected |= {f"{prefix}.self_attn.pos_bias_v"}
        for name in ("feed_forward.w_1", "feed_forward.w_2", "norm1", "norm2"):
            expected |= {f"{prefix}.{name}.weight", f"{prefix}.{name}.bias"}
    state = encoder.state_dict()
    assert set(state) == expected
    assert state["enc.0.core.out.0.weight"].shape == (32, 32 * 19)
    assert state["enc.1.encoders.0.self_attn.pos_bias_u"].shape == (2, 16)
    assert state["enc.0.core.conv.0.weight"].shape == (32, 1, 3, 3)


def test_streaming_matches_published_rule_past_window_slide(encoder: SpeechEncoder) -> None:
    feats = _feats(22, seed=1)  # > 17 chunks: the cache slides and the key-position offset kicks in
    state, ref_state = encoder.new_state(), EncoderState()
    for n, chunk in enumerate(feats):
        out = encoder.forward_chunks(chunk[None], [state])
        with torch.no_grad():
            expected = _reference_chunk(encoder, chunk, ref_state)
        assert out.shape == (1, 4, 32)
        torch.testing.assert_close(out[0], expected, atol=1e-5, rtol=1e-5)
        assert state.cache_len == min(4 * (n + 1), 64)
        assert state.pe_index == 4 * (n + 1)
        assert len(state.keys) == len(state.values) == SMALL.num_blocks
        assert state.keys[0].shape == (2, state.cache_len, 16)


def test_batched_equals_alone_at_different_cache_lengths(encoder: SpeechEncoder) -> None:
    histories = {"fresh": 0, "young": 5, "slid": 19}
    states = {}
    for seed, (name, length) in enumerate(histories.items()):
        states[name] = encoder.new_state()
        if length:
            _run_alone(encoder, _feats(length, seed=10 + seed), states[name])
    alone_states = copy.deepcopy(states)
    steps = {name: _feats(3, seed=20 + i) for i, name in enumerate(histories)}

    alone = {name: _run_alone(encoder, steps[name], alone_states[name]) for name in histories}
    order = list(histories)
    for step in range(3):
        batch = torch.stack([steps[name][step] for name in order])
        out = encoder.forward_chunks(batch, [states[name] for name in order])
        for row, name in enumerate(order):
            torch.testing.assert_close(out[row], alone[name][4 * step : 4 * step + 4], atol=1e-5, rtol=1e-5)
    for name in order:
        assert states[name].pe_index == alone_states[name].pe_index
        for a, b in zip(states[name].keys, alone_states[name].keys, strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_pe_index_wraps_modulo_max_len(encoder: SpeechEncoder) -> None:
    max_len = SMALL.pe_max_len
    warm = encoder.new_state()
    _run_alone(encoder, _feats(18, seed=30), warm)
    chunks = _feats(3, seed=31)

    near_wrap = copy.deepcopy(warm)
    near_wrap.pe_index = max_len - 4
    reference = copy.deepcopy(near_wrap)
    expected_index = [max_len, 4, 8]  # stored before the next modulo: wrapped + chunk_size
    for chunk, index in zip(chunks, expected_index, strict=True):
        out = encoder.forward_chunks(chunk[None], [near_wrap])
        with torch.no_grad():
            torch.testing.assert_close(
                out[0], _reference_chunk(encoder, chunk, reference), atol=1e-5, rtol=1e-5
            )
        assert near_wrap.pe_index == index

    a, b = copy.deepcopy(warm), copy.deepcopy(warm)
    a.pe_index, b.pe_index = 100, 100 + 3 * max_len
    torch.testing.assert_close(
        encoder.forward_chunks(chunks[:1], [a]), encoder.forward_chunks(chunks[:1], [b])
    )
    assert a.pe_index == b.pe_index == 104


def test_first_chunk_has_no_cache_and_zero_context_rows(encoder: SpeechEncoder) -> None:
    chunk = _feats(1, seed=40)
    chunk[:, :3] = 0.0  # the front-end's zero context rows still pass through CMVN
    state = encoder.new_state()
    assert state.cache_len == 0 and state.pe_index == 0
    out = encoder.forward_chunks(chunk, [state])
    with torch.no_grad():
        torch.testing.assert_close(
            out[0], _reference_chunk(encoder, chunk[0], EncoderState()), atol=1e-5, rtol=1e-5
        )
    assert state.cache_len == 4 and state.pe_index == 4


def test_bf16_runs_and_tracks_fp32(encoder: SpeechEncoder) -> None:
    low = copy.deepcopy(encoder).to(torch.bfloat16)
    feats = _feats(2, seed=50)
    s32, s16 = encoder.new_state(), low.new_state()
    for chunk in feats:
        ref = encoder.forward_chunks(chunk[None], [s32])
        out = low.forward_chunks(chunk[None], [s16])
    assert out.dtype == torch.bfloat16 and s16.keys[0].dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.flatten(), dim=0)
    assert cos > 0.99


def _adapter(llm_dim: int = 48) -> ConvAdapter:
    torch.manual_seed(1)
    return ConvAdapter(AdapterConfig(enc_out_dim=16, llm_embed_dim=llm_dim)).eval()


def test_adapter_keys_and_two_outputs_per_chunk() -> None:
    adapter = _adapter()
    assert set(adapter.state_dict()) == {
        "conv1d2.weight",
        "conv1d2.bias",
        "bn2.weight",
        "bn2.bias",
        "project.weight",
        "project.bias",
    }
    assert adapter.conv1d2.weight.shape == (32, 16, 5) and adapter.conv1d2.stride == (2,)
    assert isinstance(adapter.bn2, torch.nn.LayerNorm) and adapter.bn2.eps == 1e-3
    out, caches = adapter.forward_chunks(torch.randn(2, 4, 16), [None, None])
    assert out.shape == (2, 2, 48)
    assert all(c.shape == (4, 16) for c in caches)


def test_adapter_streaming_equals_causal_conv_over_whole_sequence() -> None:
    adapter = _adapter()
    frames = torch.randn(1, 6 * 4, 16)
    cache: list[Tensor | None] = [None]
    outs = []
    for n in range(6):
        chunk = frames[:, 4 * n : 4 * n + 4]
        out, cache = adapter.forward_chunks(chunk, cache)
        outs.append(out)
        torch.testing.assert_close(cache[0], chunk[0, -4:])  # last 4 of (cache ++ new)
    # Zeros at stream start: one causal conv over [4 zero frames, all frames] gives the same vectors.
    with torch.no_grad():
        whole = adapter(torch.cat([torch.zeros(1, 4, 16), frames], dim=1))
    torch.testing.assert_close(torch.cat(outs, dim=1), whole, atol=1e-5, rtol=1e-5)


def test_adapter_forward_equals_its_conv1d_layers() -> None:
    """The forward runs the convolution as a matmul over unfolded windows: the same as nn.Conv1d."""
    adapter = _adapter()
    for frames in (8, 9, 40):
        x = torch.randn(2, frames, 16)
        with torch.no_grad():
            conv = adapter.conv1d2(x.transpose(1, 2)).transpose(1, 2)
            want = adapter.project(adapter.relu2(adapter.bn2(conv)))
            torch.testing.assert_close(adapter(x), want, atol=1e-5, rtol=1e-5)


def test_adapter_batched_equals_alone() -> None:
    adapter = _adapter()
    chunks = torch.randn(3, 4, 16)
    caches: list[Tensor | None] = [None, torch.randn(4, 16), torch.randn(4, 16)]
    batched, batched_caches = adapter.forward_chunks(chunks, caches)
    for row in range(3):
        alone, alone_cache = adapter.forward_chunks(chunks[row : row + 1], [caches[row]])
        torch.testing.assert_close(batched[row], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched_caches[row], alone_cache[0])


def test_adapter_rejects_two_conv_branch() -> None:
    with pytest.raises(NotImplementedError, match="two-conv"):
        AdapterConfig(enc_out_dim=16, llm_embed_dim=65)
