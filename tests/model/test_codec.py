"""Codec generator, checkpoint loading and the published streaming chunking, on a tiny codec."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from app.model.checkpoint_io.weights import CheckpointError
from app.model.speech_out.codec import (
    CodecCheckpointError,
    CodecConfig,
    CodecDecoder,
    codec_state_dict,
    fold_weight_norm,
    fold_weight_norm_state_dict,
    init_unit_gain,
    load_codec,
    load_codec_state_dict,
    save_codec,
)
from app.model.speech_out.codec_stream import (
    CodecChunker,
    DecodeWindow,
    ServerConfig,
    decode_stream,
    decode_windows,
    find_seam,
    strip_leading_silence,
)

SPT = 600


def _lively(model: CodecDecoder, seed: int = 0) -> CodecDecoder:
    """Unit-gain weights: default init gives a near-constant waveform, which would make every
    comparison below trivially pass."""
    return init_unit_gain(model, seed)


@pytest.fixture(scope="module")
def codec() -> CodecDecoder:
    torch.manual_seed(0)
    return _lively(CodecDecoder(CodecConfig.tiny(channels=32), latent_dim=32)).eval()


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    return torch.randint(0, 1024, (137,), generator=torch.Generator().manual_seed(1)).tolist()


def _decode(codec: CodecDecoder, ids: list[int]) -> np.ndarray:
    with torch.inference_mode():
        return codec(torch.tensor([ids])).numpy()[0]


# --- config and generator ---------------------------------------------------------------------


def test_config_reads_published_json_and_ignores_training_keys() -> None:
    published = CodecConfig().to_json()
    published.update(
        {"num_mels": 80, "n_fft": 2048, "hop_size": 600, "learning_rate": 2e-4, "segment_size": 12000}
    )
    config = CodecConfig.from_json(published)
    assert config.samples_per_token == SPT
    assert config.global_dim == 128 and config.global_stage == 1
    assert config.extra["hop_size"] == 600
    assert CodecConfig.from_json(config.to_json()) == config
    tiny = CodecConfig.tiny(channels=32)
    assert tiny.samples_per_token == SPT and tiny.sampling_rate == 24000
    assert {"num_mels", "n_fft", "residul_layer", "global_tokens"} <= set(tiny.to_json())


@pytest.mark.parametrize("config", [CodecConfig.tiny(channels=32), CodecConfig()], ids=["tiny", "published"])
def test_output_is_600_samples_per_token(config: CodecConfig) -> None:
    model = CodecDecoder(config).eval()
    with torch.inference_mode():
        for length in (1, 2, 7):
            assert model(torch.zeros(2, length, dtype=torch.long)).shape == (2, length * SPT)


def test_global_vector_is_added_after_the_stage_as_wide_as_it(codec: CodecDecoder) -> None:
    stage = codec.config.global_stage
    assert codec.config.stage_channels(stage) == codec.config.global_dim
    seen: dict[str, torch.Tensor] = {}
    blocks = codec.generator.resblocks[stage * 3 : stage * 3 + 3]
    hooks = [
        b.register_forward_hook(lambda m, i, o, j=j: seen.__setitem__(f"block{j}", o))
        for j, b in enumerate(blocks)
    ]
    hooks.append(
        codec.generator.ups[stage + 1].register_forward_hook(lambda m, i, o: seen.__setitem__("next", i[0]))
    )
    with torch.inference_mode():
        codec(torch.tensor([[5, 6, 7]]))
    for hook in hooks:
        hook.remove()
    stage_out = (seen["block0"] + seen["block1"] + seen["block2"]) / 3
    expected = torch.nn.functional.leaky_relu(stage_out + codec.style_vector()[None, :, None], 0.1)
    torch.testing.assert_close(seen["next"], expected)


def test_changing_global_tokens_changes_the_voice(codec: CodecDecoder) -> None:
    other = copy.deepcopy(codec)
    other.global_tokens = tuple((t + 1) % 1024 for t in codec.global_tokens)
    ids = list(range(10, 30))
    assert np.abs(_decode(codec, ids) - _decode(other, ids)).max() > 1e-3


def test_codec_stays_fp32_under_bf16_autocast(codec: CodecDecoder) -> None:
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = codec(ids)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy()[0], _decode(codec, [1, 2, 3, 4]), atol=1e-6)


def test_batched_windows_equal_single_decodes(codec: CodecDecoder) -> None:
    rng = np.random.default_rng(3)
    windows = [
        DecodeWindow(i, tuple(rng.integers(0, 1024, 30).tolist()), 0, None, True, 0.1) for i in range(3)
    ]
    batched = decode_windows(codec, windows)
    for window, audio in zip(windows, batched, strict=True):
        np.testing.assert_allclose(audio, _decode(codec, list(window.token_ids)), atol=1e-5)


# --- weight norm and checkpoints ---------------------------------------------------------------


@pytest.mark.parametrize(
    "make", [lambda: nn.Conv1d(6, 4, 5, padding=2), lambda: nn.ConvTranspose1d(6, 3, 11, 5, padding=3)]
)
def test_folding_matches_torch_weight_norm(make) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 9)
    for parametrized in (False, True):
        normed = make()
        if parametrized:
            normed = torch.nn.utils.parametrizations.weight_norm(normed)
        else:
            with warnings.catch_warnings():  # the old API is deprecated but is what wrote final.pt
                warnings.simplefilter("ignore", FutureWarning)
                normed = torch.nn.utils.weight_norm(normed)
        with torch.no_grad():  # make g differ from ||v|| so the fold is really tested
            for name, p in normed.named_parameters():
                if name.endswith(("weight_g", "original0")):
                    p.mul_(torch.rand_like(p) + 0.5)
        plain = make()
        plain.load_state_dict(fold_weight_norm_state_dict(normed.state_dict()))
        torch.testing.assert_close(plain(x), normed(x))


def test_fold_weight_norm_of_a_scalar_g_uses_the_whole_tensor() -> None:
    v = torch.randn(3, 4, 5)
    torch.testing.assert_close(fold_weight_norm(torch.tensor(2.0), v), 2.0 * v / v.norm())


def test_published_layout_with_split_weight_norm_loads_and_decodes_the_same(
    codec: CodecDecoder, tmp_path
) -> None:
    checkpoint = codec_state_dict(codec, weight_norm=True)
    assert set(checkpoint) == {"generator", "quantizer", "encoder"}
    assert "conv_pre.weight_g" in checkpoint["generator"] and "ups.3.weight_v" in checkpoint["generator"]
    assert checkpoint["quantizer"]["quantizer_modules.0.embedding.weight"].shape == (1024, 32)
    assert checkpoint["quantizer"]["quantizer_modules_globaltokens.7.embedding.weight"].shape == (1024, 1)
    save_codec(codec, tmp_path)
    loaded = load_codec(tmp_path)
    ids = list(range(40))
    np.testing.assert_allclose(_decode(loaded, ids), _decode(codec, ids), atol=1e-5)
    folded = CodecDecoder(codec.config, codec.latent_dim)
    load_codec_state_dict(folded, codec_state_dict(codec))
    np.testing.assert_allclose(_decode(folded.eval(), ids), _decode(codec, ids), atol=1e-6)


def test_strict_loading_names_the_key_and_both_shapes(codec: CodecDecoder) -> None:
    target = CodecDecoder(codec.config, codec.latent_dim)
    bad = codec_state_dict(codec)
    bad["generator"]["conv_post.weight"] = torch.zeros(1, 8, 7)
    with pytest.raises(CheckpointError, match=r"generator\.conv_post\.weight.*\(1, 8, 7\).*\(1, 2, 7\)"):
        load_codec_state_dict(target, bad)
    missing = codec_state_dict(codec)
    del missing["generator"]["ups.1.bias"]
    with pytest.raises(CheckpointError, match=r"missing key 'generator\.ups\.1\.bias'.*\(8,\)"):
        load_codec_state_dict(target, missing)
    extra = codec_state_dict(codec)
    extra["quantizer"]["quantizer_modules2.0.embedding.weight"] = torch.zeros(4, 2)
    with pytest.raises(CheckpointError, match=r"unexpected key 'quantizer\.quantizer_modules2.*\(4, 2\)"):
        load_codec_state_dict(target, extra)
    with pytest.raises(CodecCheckpointError, match="no 'quantizer' section"):
        load_codec_state_dict(target, {"generator": {}})


# --- streaming -----------------------------------------------------------------------------------


def _token_cone(config: CodecConfig, sample: int) -> tuple[int, int]:
    """The token interval output `sample` depends on, by walking the generator backwards."""
    lo = hi = sample
    lo, hi = lo - 3, hi + 3  # conv_post
    radius = max(
        sum((k - 1) * d // 2 + (k - 1) // 2 for d in dils)
        for k, dils in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
    )
    for u, k in reversed(list(zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True))):
        lo, hi = lo - radius, hi + radius
        p = (k - u) // 2
        lo, hi = -((-(lo + p - k + 1)) // u), (hi + p) // u
    return lo - 3, hi + 3  # conv_pre


def _run_chunker(codec: CodecDecoder, chunker: CodecChunker, tokens: list[int]) -> tuple[list, list]:
    """Drive a chunker by hand over one segment; returns the packets and, per window, the window,
    its first token's position in the stream and its trimmed piece of audio."""
    packets, placed = [], []

    def drain(consumed: int) -> None:
        for window in chunker.ready_windows():
            # A window always ends with the token just pushed (or the segment's last one).
            start = consumed - len(window.token_ids)
            assert tokens[start:consumed] == list(window.token_ids)
            audio = _decode(codec, list(window.token_ids))
            end = None if window.keep is None else window.trim_start + window.keep
            placed.append((window, start, audio[window.trim_start : end]))
            packets.extend(chunker.feed(window.index, audio))

    for count, token in enumerate(tokens, start=1):
        chunker.push(token)
        drain(count)
    chunker.end_segment()
    drain(len(tokens))
    assert chunker.idle
    return packets, placed


@pytest.mark.parametrize(
    ("first_chunk", "sizes"),
    [
        # C = 20 for the whole first segment: 20 + 10, then 10 + 20 + 10 five times, then the
        # final 27 (20 context + 7 new, the left 10 trimmed).
        (20, [30, 40, 40, 40, 40, 40, 27]),
        # C = 40 throughout: 40 + 10, then 10 + 40 + 10 twice, then the final 27.
        (40, [50, 60, 60, 27]),
    ],
)
def test_streaming_is_continuous_and_matches_one_shot_where_the_receptive_field_fits(
    codec, tokens, first_chunk: int, sizes: list[int]
) -> None:
    config = ServerConfig(decoder_first_chunk_size=first_chunk)
    chunker = CodecChunker(config, SPT)
    packets, placed = _run_chunker(codec, chunker, tokens)
    assert [len(w.token_ids) for w, _, _ in placed] == sizes
    streamed = np.concatenate(packets)
    assert len(streamed) == len(tokens) * SPT
    np.testing.assert_allclose(streamed, np.concatenate(decode_stream(codec, tokens, config)), atol=1e-6)
    split = decode_stream(codec, tokens, config, segment_ends=[25])
    assert sum(map(len, split)) == len(tokens) * SPT

    # The generator is shift-equivariant by one token per 600 samples, so one period of cones
    # gives them all.
    period = np.array([_token_cone(codec.config, n) for n in range(SPT)])
    samples = np.arange(len(tokens) * SPT)
    cone_lo = period[samples % SPT, 0] + samples // SPT
    cone_hi = period[samples % SPT, 1] + samples // SPT
    one_shot = _decode(codec, tokens)
    kept_end = 0
    covered = 0
    for window, start, piece in placed:
        first = start * SPT + window.trim_start
        last = first + len(piece)
        assert first == kept_end  # kept regions tile the stream: nothing duplicated or dropped
        kept_end = last
        w0, w1 = start, start + len(window.token_ids)
        span = samples[first:last]
        inside = ((w0 == 0) | (cone_lo[span] >= w0)) & ((w1 == len(tokens)) | (cone_hi[span] < w1))
        clean = span[inside]
        # Pd = 10 tokens of context against a one-sided reach of about 12.5 tokens: all but the
        # outer ~2.5 tokens of each kept region must equal the one-shot decode.
        assert len(clean) >= (last - first) - 2 * 3 * SPT
        np.testing.assert_allclose(streamed[clean], one_shot[clean], atol=1e-5)
        covered += len(clean)
    assert kept_end == len(tokens) * SPT
    assert covered > 0.7 * len(tokens) * SPT


def test_packets_end_at_the_quietest_point_when_the_threshold_is_met(codec, tokens) -> None:
    n = 2401
    config = ServerConfig(decoder_seg_threshold_first_pack=1.0, decoder_seg_threshold=1.0, decoder_N=n)
    packets, placed = _run_chunker(codec, CodecChunker(config, SPT), tokens)
    assert len(packets) == len(placed) == 7  # threshold always met: one packet per decode
    emitted = 0
    for k, (window, _, piece) in enumerate(placed):
        emitted += len(packets[k])
        if window.final:
            assert emitted == len(tokens) * SPT
            continue
        seam = find_seam(piece, n)
        assert seam is not None and seam.mean_abs < 1.0
        # Each packet ends right before this piece's quietest sample.
        before = sum(len(p) for _, _, p in placed[:k])
        assert emitted == before + seam.cut
        assert abs(piece[seam.cut]) <= np.abs(piece[seam.window_start : seam.window_start + n]).min()
        sums = np.convolve(np.abs(piece.astype(np.float64)), np.ones(n), "valid")
        assert seam.window_start >= len(piece) // 2 - n // 2
        assert sums[seam.window_start] == pytest.approx(sums[len(piece) // 2 - n // 2 :].min())


def test_seam_cut_on_synthetic_audio() -> None:
    rng = np.random.default_rng(0)
    loud = (rng.uniform(0.3, 0.9, 12000) * rng.choice([-1, 1], 12000)).astype(np.float32)
    piece = loud.copy()
    piece[7000:9500] = 0.001 * rng.standard_normal(2500)
    piece[8123] = 0.0
    seam = find_seam(piece, 2401)
    assert seam is not None and seam.cut == 8123 and seam.mean_abs < 0.01
    assert find_seam(piece[:2000], 2401) is None

    chunker = CodecChunker(ServerConfig(decoder_first_chunk_size=20, decoder_chunk_overlap_size=10), SPT)
    chunker.extend(range(30))
    (first,) = chunker.ready_windows()
    audio = np.concatenate([piece, loud[: 10 * SPT]])  # window of 30 tokens; the first 20 are kept
    assert [len(p) for p in chunker.feed(first.index, audio)] == [8123]
    chunker.extend(range(20))
    (second,) = chunker.ready_windows()
    assert chunker.feed(second.index, np.tile(loud, 2)[: 40 * SPT]) == []  # never quiet: held back
    chunker.end_segment()
    (last,) = chunker.ready_windows()
    (flushed,) = chunker.feed(last.index, np.zeros(len(last.token_ids) * SPT, np.float32))
    assert len(flushed) == (12000 - 8123) + 20 * SPT + 10 * SPT


def test_segments_switch_chunk_size_and_threshold() -> None:
    config = ServerConfig()
    chunker = CodecChunker(config, SPT)
    chunker.extend(range(25))
    chunker.end_segment()
    chunker.extend(range(112))
    chunker.end_segment()
    windows = chunker.ready_windows()
    assert [(len(w.token_ids), w.trim_start // SPT, w.final) for w in windows] == [
        (25, 0, True),  # first segment, shorter than 20 + 10: one final window, nothing trimmed
        (50, 0, False),  # later segments start over with C = 40: 40 + 10
        (60, 10, False),
        (42, 10, True),  # 112 = 40 + 40 + 32; the final window holds 20 context + 22 new tokens
    ]
    assert [w.seam_threshold for w in windows] == [0.1, 0.015, 0.015, 0.015]
    assert [w.keep for w in windows] == [None, 40 * SPT, 40 * SPT, None]


def test_tokens_to_next_window_count_down_to_each_window() -> None:
    chunker = CodecChunker(ServerConfig(), SPT)
    counts = []
    for token in range(150):
        counts.append(chunker.tokens_to_next_window())
        chunker.push(token)
        if chunker.ready_windows():
            counts.append("window")
    # The first window: 20 + 10 tokens; then, in the reply's first segment, each 20 new tokens
    # (10 + 20 + 10, 20 kept as context): a window every half second of audio.
    assert counts[0] == 30 and counts[29] == 1 and counts[30] == "window"
    assert counts[31] == 20 and counts[31 + 19] == 1 and counts[31 + 20] == "window"
    assert counts.count("window") == 1 + (150 - 30) // 20
    chunker.end_segment()
    chunker.ready_windows()
    assert chunker.tokens_to_next_window() == 50  # a later segment: C = 40 + 10, nothing decoded before


def test_feed_out_of_order_and_reset_drop_stale_audio() -> None:
    chunker = CodecChunker(ServerConfig(), SPT)
    chunker.extend(range(50))
    chunker.end_segment()
    w0, w1, w2 = chunker.ready_windows()
    assert [len(w.token_ids) for w in (w0, w1, w2)] == [30, 40, 20]
    assert chunker.feed(w2.index, np.full(20 * SPT, 0.5, np.float32)) == []
    assert chunker.feed(w1.index, np.full(40 * SPT, 0.5, np.float32)) == []  # waits for window 0
    packets = chunker.feed(w0.index, np.full(30 * SPT, 0.5, np.float32))
    assert sum(map(len, packets)) == 50 * SPT and chunker.idle
    chunker.extend(range(50))  # a later segment: C = 40, so 50 tokens make a window
    (stale,) = chunker.ready_windows()
    chunker.reset()
    assert chunker.feed(stale.index, np.zeros(len(stale.token_ids) * SPT, np.float32)) == []
    chunker.extend(range(30))
    (fresh,) = chunker.ready_windows()
    assert len(fresh.token_ids) == 30 and fresh.seam_threshold == 0.1  # first-segment rules again
    with pytest.raises(ValueError, match="decodes to"):
        chunker.feed(fresh.index, np.zeros(5, np.float32))


def test_leading_silence_trim_of_the_first_packet_only() -> None:
    assert len(strip_leading_silence(np.array([0.0, -0.03, 0.02, 0.5, 0.0], np.float32))) == 2
    quiet = np.full(4, 0.01, np.float32)
    assert len(strip_leading_silence(quiet)) == 4  # published quirk: nothing loud, kept whole
    chunker = CodecChunker(ServerConfig(), SPT, trim_leading_silence=True)
    chunker.extend(range(45))
    chunker.end_segment()
    chunker.extend(range(5))
    chunker.end_segment()
    windows = chunker.ready_windows()
    assert [len(w.token_ids) for w in windows] == [30, 35, 5]

    def late_start(n_tokens: int) -> np.ndarray:
        audio = np.full(n_tokens * SPT, 0.5, np.float32)
        audio[:1000] = 0.0
        return audio

    packets = [p for w in windows for p in chunker.feed(w.index, late_start(len(w.token_ids)))]
    # Segment one never gets quiet, so it comes as one packet at its end, minus 1000 leading zeros;
    # segment two's packet keeps its leading zeros.
    assert [len(p) for p in packets] == [45 * SPT - 1000, 5 * SPT]
    assert packets[0][0] == 0.5 and packets[1][0] == 0.0


def test_chunker_rejects_configs_that_would_lose_audio() -> None:
    with pytest.raises(ValueError):
        CodecChunker(ServerConfig(decoder_first_chunk_size=5), SPT)
    with pytest.raises(ValueError):
        CodecChunker(ServerConfig(decoder_chunk_overlap_size=0), SPT)


def test_server_config_round_trip() -> None:
    config = ServerConfig.from_json({**ServerConfig().to_json(), "something_new": 1})
    assert (config.decoder_first_chunk_size, config.decoder_chunk_size, config.decoder_N) == (20, 40, 2401)
    assert config.to_json()["something_new"] == 1


# --- fidelity to the released generator: last activation, latent width --------------------------


def _hand_checkable_codec(slope: float | None) -> CodecDecoder:
    """Two upsampling stages of 4 and 2 channels whose last stage outputs known constants.

    Resblocks are zeroed (each returns its input), the last upsampling conv has zero weights and
    biases (-2.0, -0.5), so the signal entering the last activation is those two constants at every
    sample; conv_post keeps only its centre tap, weights (0.25, 1.0), no bias.
    """
    config = CodecConfig(
        upsample_rates=[2, 2],
        upsample_kernel_sizes=[2, 2],
        upsample_initial_channel=8,
        resblock_kernel_sizes=[1],
        resblock_dilation_sizes=[[1]],
        n_codes=4,
        global_code_num=2,
        global_feature_conv=[4, 2, 4, 3, 1],
        global_tokens=[0, 1],
        **({} if slope is None else {"final_leaky_relu_slope": slope}),
    )
    model = CodecDecoder(config, latent_dim=3).eval()
    with torch.no_grad():
        for block in model.generator.resblocks:
            for conv in [*block.convs1, *block.convs2]:
                conv.weight.zero_()
                conv.bias.zero_()
        last = model.generator.ups[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-2.0, -0.5]))
        post = model.generator.conv_post
        post.weight.zero_()
        post.weight[0, :, 3] = torch.tensor([0.25, 1.0])
        post.bias.zero_()
    return model


@pytest.mark.parametrize(
    ("slope", "expected"),
    [
        # The published slope: 0.25 * (0.1 * -2.0) + 1.0 * (0.1 * -0.5) = -0.1; tanh(-0.1).
        (None, -0.09966799462495582),
        # The slope the embedded model's model.json carries: 0.25 * -0.02 + 1.0 * -0.005 = -0.01.
        (0.01, -0.009999666686665238),
    ],
    ids=["published-default-0.1", "model-json-0.01"],
)
def test_last_activation_before_conv_post_uses_the_configured_slope(slope, expected) -> None:
    model = _hand_checkable_codec(slope)
    assert model.config.final_leaky_relu_slope == (0.1 if slope is None else slope)
    out = _decode(model, [0, 1, 2, 3, 1])
    assert out.shape == (5 * 4,)
    np.testing.assert_allclose(out, np.full(20, expected, dtype=np.float32), rtol=1e-6)


def test_the_slope_key_is_read_from_model_json_and_defaults_to_the_published_one(tmp_path) -> None:
    published = CodecConfig().to_json()
    del published["final_leaky_relu_slope"]
    assert CodecConfig.from_json(published).final_leaky_relu_slope == 0.1
    for slope in (0.01, 0.1):
        model = _hand_checkable_codec(slope)
        # Plain weights: weight norm cannot represent the zeroed convs (their norm is 0).
        save_codec(model, tmp_path / str(slope), weight_norm=False)
        loaded = load_codec(tmp_path / str(slope))
        assert loaded.generator.final_slope == slope
        np.testing.assert_array_equal(_decode(loaded, [1, 2]), _decode(model, [1, 2]))
    with pytest.raises(ValueError, match="final_leaky_relu_slope"):
        CodecConfig(final_leaky_relu_slope=-1.0)


def test_the_embedded_trained_codec_keeps_the_slope_it_was_trained_with() -> None:
    from app.model.checkpoint_io.defaults import TRAINED_MODEL_ROOT

    config = CodecConfig.from_file(TRAINED_MODEL_ROOT / "checkpoints" / "codec" / "model.json")
    assert config.final_leaky_relu_slope == 0.01


def test_a_codec_with_256_initial_channels_and_a_512_wide_codebook_loads_and_decodes(tmp_path) -> None:
    # Legal in the released code: the codebook and conv_pre's input stay 512 wide.
    config = CodecConfig(upsample_initial_channel=256, global_feature_conv=[64, 32, 64, 3, 1])
    assert config.global_stage == 1
    torch.manual_seed(0)
    model = _lively(CodecDecoder(config)).eval()
    assert model.quantizer.quantizer_modules[0].embedding.weight.shape == (1024, 512)
    assert model.generator.conv_pre.weight.shape == (256, 512, 7)
    save_codec(model, tmp_path)
    loaded = load_codec(tmp_path, strict=True)
    assert loaded.latent_dim == 512
    ids = [5, 900, 17, 333, 2, 64]
    decoded = _decode(loaded, ids)
    assert decoded.shape == (len(ids) * SPT,) and np.abs(decoded).max() > 1e-3
    np.testing.assert_allclose(decoded, _decode(model, ids), atol=1e-5)


def test_a_latent_width_that_differs_between_codebook_and_conv_pre_is_named(
    codec: CodecDecoder, tmp_path
) -> None:
    save_codec(codec, tmp_path)
    checkpoint = torch.load(tmp_path / "final.pt", weights_only=True)
    checkpoint["quantizer"]["quantizer_modules.0.embedding.weight"] = torch.zeros(1024, 48)
    torch.save(checkpoint, tmp_path / "final.pt")
    with pytest.raises(CheckpointError, match=r"generator\.conv_pre\.weight.*\(32, 32, 7\).*\(32, 48, 7\)"):
        load_codec(tmp_path)


# --- the codec's dtype --------------------------------------------------------------------------
def _snr_db(reference: np.ndarray, other: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(reference**2) / np.mean((reference - other) ** 2)))


def test_the_trained_codec_in_bf16_decodes_a_streamed_answer_close_to_fp32(tokens) -> None:
    from app.model.checkpoint_io.defaults import TRAINED_MODEL_ROOT

    codec_dir = TRAINED_MODEL_ROOT / "checkpoints" / "codec"
    fp32 = load_codec(codec_dir)
    bf16 = load_codec(codec_dir, dtype="bfloat16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    server = ServerConfig()
    # The streamed path the engine takes (windows, seams), not only one generator call.
    wave32 = np.concatenate(decode_stream(fp32, tokens, server))
    wave16 = np.concatenate(decode_stream(bf16, tokens, server))
    assert wave16.dtype == np.float32
    assert len(wave16) == len(wave32) > 0
    assert np.sqrt(np.mean(wave32**2)) > 0.01  # the answer is audible, so the comparison means something
    assert _snr_db(wave32, wave16) > 30  # measured 41 dB on one window


def test_codec_dtype_auto_follows_native_bf16_in_cpuinfo(tmp_path) -> None:
    from app.model.speech_out.codec import cpu_has_native_bf16, resolve_codec_dtype

    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512bw\n")
    assert cpu_has_native_bf16(with_bf16)
    assert not cpu_has_native_bf16(without)
    assert not cpu_has_native_bf16(tmp_path / "missing")
    expected = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    assert resolve_codec_dtype("auto", "cpu") == expected
    assert resolve_codec_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_codec_dtype("float32", "cpu") == torch.float32
    with pytest.raises(ValueError, match="unknown codec dtype 'int8'"):
        resolve_codec_dtype("int8", "cpu")
