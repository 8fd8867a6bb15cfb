"""The published checkpoint layout: save-then-load round trip, strict loading, helpful errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.model.checkpoint_io.layout import FreezeOmni, load_freeze_omni, save_freeze_omni
from app.model.checkpoint_io.weights import CheckpointError
from app.model.fixtures.tiny import TinyPaths
from app.model.pipeline import InferOptions, OfflinePipeline
from app.model.speech_in.cmvn import CmvnStats
from app.model.speech_out.codec import CodecCheckpointError


def _copy(tiny_model_dir: TinyPaths, tmp_path: Path) -> TinyPaths:
    """A private copy of the tiny model that a test may break."""
    copy = TinyPaths(tmp_path / "tiny")
    shutil.copytree(tiny_model_dir.root, copy.root)
    return copy


def _edit_torch_file(
    path: Path, section: str | None, key: str, new_key: str, new_value: torch.Tensor
) -> None:
    data = torch.load(path, map_location="cpu", weights_only=True)
    table = data[section] if section else data
    del table[key]
    table[new_key] = new_value
    torch.save(data, path)


def _edit_safetensors(path: Path, key: str, new_key: str, new_value: torch.Tensor) -> None:
    tensors = load_file(str(path))
    del tensors[key]
    tensors[new_key] = new_value.contiguous()
    save_file(tensors, str(path), metadata={"format": "pt"})


def _original(path: Path, section: str | None, key: str) -> torch.Tensor:
    if path.suffix == ".safetensors":
        return load_file(str(path))[key]
    data = torch.load(path, map_location="cpu", weights_only=True)
    return (data[section] if section else data)[key]


# (file under the tiny root, nested section or None, key, reshaped shape)
STRICT_CASES = [
    ("checkpoints/audiollm/final.pt", None, "prompt_embeddings.weight", (5, 320)),
    ("checkpoints/audiollm/final.pt", None, "encoder.enc.1.encoders.1.feed_forward.w_1.weight", (64, 128)),
    ("checkpoints/decoder/final.pt", None, "out_fnn.weight", (2056, 8)),
    ("checkpoints/decoder/final.pt", None, "layers_prefix.2.self_attn.q_proj.weight", (8, 32)),
    ("Qwen2-tiny/model.safetensors", None, "model.layers.1.mlp.up_proj.weight", (64, 128)),
]
CASE_IDS = ["audiollm-prompts", "audiollm-encoder", "decoder-head", "decoder-prefix", "qwen2"]


def _load(paths: TinyPaths, strict: bool = False) -> FreezeOmni:
    return load_freeze_omni(paths.model_path, paths.llm_path, strict=strict)


BOTH_MODES = pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])


def _edit(file: Path, section: str | None, key: str, new_key: str, value: torch.Tensor) -> None:
    if file.suffix == ".safetensors":
        _edit_safetensors(file, key, new_key, value)
    else:
        _edit_torch_file(file, section, key, new_key, value)


# --- round trip -------------------------------------------------------------------------------


def test_save_then_load_gives_identical_weights_and_outputs(
    tiny_model: FreezeOmni, tiny_model_dir: TinyPaths, spoken_16k: np.ndarray, tmp_path: Path
) -> None:
    before = OfflinePipeline(tiny_model).run(spoken_16k, InferOptions.greedy())
    assert before.token_ids and sum(map(len, before.codec_ids)) > 0  # something to compare

    saved = save_freeze_omni(
        tmp_path / "resaved",
        audio=tiny_model.audio,
        cmvn=CmvnStats.from_json(tiny_model_dir.model_path / "audiollm" / "global_cmvn"),
        decoder=tiny_model.decoder,
        codec=tiny_model.codec,
        server=tiny_model.server,
    )
    reloaded = load_freeze_omni(saved, tiny_model_dir.llm_path)
    for ours, theirs in [
        (tiny_model.audio, reloaded.audio),
        (tiny_model.decoder, reloaded.decoder),
        (tiny_model.codec, reloaded.codec),
    ]:
        a, b = ours.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), type(ours).__name__
    assert reloaded.server == tiny_model.server
    assert reloaded.template == tiny_model.template

    after = OfflinePipeline(reloaded).run(spoken_16k, InferOptions.greedy())
    assert after.token_ids == before.token_ids
    assert after.state_probs == before.state_probs
    assert after.codec_ids == before.codec_ids
    assert after.audio.tobytes() == before.audio.tobytes()


def test_cmvn_file_is_optional_when_final_pt_holds_the_stats(
    tiny_model: FreezeOmni, tiny_model_dir: TinyPaths, tmp_path: Path
) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    (paths.model_path / "audiollm" / "global_cmvn").unlink()
    loaded = _load(paths)
    cmvn = tiny_model.audio.encoder.global_cmvn
    assert torch.equal(loaded.audio.encoder.global_cmvn.mean, cmvn.mean)
    assert torch.equal(loaded.audio.encoder.global_cmvn.istd, cmvn.istd)


# --- missing and mis-shaped tensors fail in both modes (extra content: test_checkpoint_extras) ----


@BOTH_MODES
@pytest.mark.parametrize(("relative", "section", "key", "_shape"), STRICT_CASES, ids=CASE_IDS)
def test_a_renamed_tensor_is_named_with_its_file(
    tiny_model_dir: TinyPaths,
    tmp_path: Path,
    relative: str,
    section: str | None,
    key: str,
    _shape: tuple,
    strict: bool,
) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    file = paths.root / relative
    _edit(file, section, key, key + "_renamed", _original(file, section, key))
    with pytest.raises(CheckpointError) as error:
        _load(paths, strict)
    message = str(error.value)
    assert f"missing key '{key}'" in message
    if strict or relative.startswith("Qwen2"):  # the Qwen2 folder is always loaded strictly
        assert f"unexpected key '{key}_renamed'" in message
    else:
        assert f"the file also holds tensors the model does not use: {key}_renamed" in message
    assert str(file) in message


@BOTH_MODES
@pytest.mark.parametrize(("relative", "section", "key", "shape"), STRICT_CASES, ids=CASE_IDS)
def test_a_reshaped_tensor_is_named_with_its_file_and_both_shapes(
    tiny_model_dir: TinyPaths,
    tmp_path: Path,
    relative: str,
    section: str | None,
    key: str,
    shape: tuple,
    strict: bool,
) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    file = paths.root / relative
    original = _original(file, section, key)
    _edit(file, section, key, key, original.reshape(shape))
    with pytest.raises(CheckpointError) as error:
        _load(paths, strict)
    message = str(error.value)
    assert f"key '{key}' in {file} has shape {shape}" in message
    assert f"expects {tuple(original.shape)}" in message
    assert message.count("key '") == 1  # only the broken tensor is reported


CODEC_KEY = "quantizer_modules.0.embedding.weight"


@BOTH_MODES
@pytest.mark.parametrize("change", ["rename", "reshape"])
def test_a_broken_codec_tensor_is_named_with_the_shapes(
    tiny_model_dir: TinyPaths, tmp_path: Path, change: str, strict: bool
) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    file = paths.model_path / "codec" / "final.pt"
    original = _original(file, "quantizer", CODEC_KEY)
    if change == "rename":
        _edit_torch_file(file, "quantizer", CODEC_KEY, CODEC_KEY + "_renamed", original)
    else:
        # Fewer codes than model.json's n_codes (the width, which sets the latent, stays right).
        _edit_torch_file(file, "quantizer", CODEC_KEY, CODEC_KEY, original[:1000].clone())
    with pytest.raises((CheckpointError, CodecCheckpointError)) as error:
        _load(paths, strict)
    message = str(error.value)
    assert CODEC_KEY in message
    if change == "rename":
        assert CODEC_KEY + "_renamed" in message
    else:
        assert "has shape (1000, 32)" in message and "expects (1024, 32)" in message


def test_a_broken_codec_tensor_fails_like_the_other_pieces(tiny_model_dir: TinyPaths, tmp_path: Path) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    file = paths.model_path / "codec" / "final.pt"
    original = _original(file, "quantizer", CODEC_KEY)
    _edit_torch_file(file, "quantizer", CODEC_KEY, CODEC_KEY, original.reshape(2048, 16))
    with pytest.raises(CheckpointError) as error:
        _load(paths)
    assert str(file) in str(error.value)


# --- missing files ----------------------------------------------------------------------------


def test_a_missing_model_folder_says_to_pass_model_path(tiny_model_dir: TinyPaths, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--model-path must hold the Freeze-Omni layout"):
        load_freeze_omni(tmp_path / "nowhere", tiny_model_dir.llm_path)


def test_a_missing_llm_folder_says_to_pass_llm_path(tiny_model_dir: TinyPaths, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--llm-path must be a Hugging Face Qwen2 folder"):
        load_freeze_omni(tiny_model_dir.model_path, tmp_path / "nowhere")


def test_an_llm_folder_without_weights_is_refused(tiny_model_dir: TinyPaths, tmp_path: Path) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    (paths.llm_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors or pytorch_model\*\.bin"):
        _load(paths)


@pytest.mark.parametrize(
    "relative",
    [
        "audiollm/train.yaml",
        "audiollm/final.pt",
        "decoder/model.json",
        "decoder/final.pt",
        "codec/model.json",
        "codec/final.pt",
        "server.json",
    ],
)
def test_a_missing_piece_is_named(tiny_model_dir: TinyPaths, tmp_path: Path, relative: str) -> None:
    paths = _copy(tiny_model_dir, tmp_path)
    missing = paths.model_path / relative
    missing.unlink()
    with pytest.raises(FileNotFoundError) as error:
        _load(paths)
    assert str(missing) in str(error.value)
    if relative == "audiollm/train.yaml":
        assert "--model-path" in str(error.value)
