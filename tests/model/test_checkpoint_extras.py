"""Weight files carrying more than the model needs: training state, EMA copies, a `module.` prefix.

Each kind of extra content is written into the published layout's three weight files (audio LLM,
speech decoder, codec). Lenient loading (the default) gives exactly the weights of the clean files
and logs one line per file naming what it skipped; `strict` refuses the same files, naming the
extra keys.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.model.checkpoint_io.layout import (
    FreezeOmni,
    load_audio_llm,
    load_freeze_omni,
    load_speech_decoder,
)
from app.model.checkpoint_io.weights import CheckpointError
from app.model.fixtures.tiny import TinyPaths
from app.model.pipeline import InferOptions, OfflinePipeline
from app.model.speech_out.codec import load_codec

AUDIO = "audiollm/final.pt"
DECODER = "decoder/final.pt"
CODEC = "codec/final.pt"
CPU = torch.device("cpu")


def _optimizer_state(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What `torch.optim.AdamW.state_dict()` looks like: per-parameter moments and the groups."""
    tensors = list(state.values())[:3]
    return {
        "state": {
            i: {"step": torch.tensor(7.0), "exp_avg": torch.zeros_like(t)} for i, t in enumerate(tensors)
        },
        "param_groups": [{"lr": 6e-4, "betas": (0.9, 0.999), "params": list(range(len(tensors)))}],
    }


def _flat_file(kind: str, state: dict[str, torch.Tensor]) -> tuple[Any, list[str]]:
    """A flat state dict (audio LLM, speech decoder) with `kind` of extra content, and the names
    a strict load must report."""
    first = sorted(state)[0]
    if kind == "optimizer":
        return {"model": state, "optimizer": _optimizer_state(state), "lr_scheduler": {"last_epoch": 9}}, [
            "'optimizer' (nested, 6 tensors)",
            "'lr_scheduler' (nested, 0 tensors)",
        ]
    if kind == "ema":
        ema = {f"ema.{k}": v.clone() for k, v in state.items()}
        return {**state, **ema, "ema_decay": 0.999}, [f"unexpected key 'ema.{first}'", "'ema_decay' (float)"]
    if kind == "counters":
        return {**state, "step": 1200, "epoch": 3}, ["'step' (int)", "'epoch' (int)"]
    if kind == "data_parallel":
        return {f"module.{k}": v for k, v in state.items()}, [f"unexpected key 'module.{first}'"]
    raise ValueError(kind)


def _codec_file(kind: str, checkpoint: dict[str, dict]) -> tuple[Any, list[str]]:
    """The codec's `{generator, quantizer, encoder}` file with `kind` of extra content."""
    generator = checkpoint["generator"]
    if kind == "optimizer":
        return {
            **checkpoint,
            "mpd": {"conv.weight": torch.zeros(2, 2)},
            "optim_g": _optimizer_state(generator),
            "optim_d": _optimizer_state(generator),
        }, ["'mpd' (nested, 1 tensor)", "'optim_g' (nested, 6 tensors)", "'optim_d'"]
    if kind == "ema":
        ema = {k: v.clone() for k, v in generator.items()}
        return {**checkpoint, "generator_ema": ema}, [f"'generator_ema' (nested, {len(ema)} tensors)"]
    if kind == "counters":
        return {**checkpoint, "steps": 1200, "epoch": 3}, ["'steps' (int)", "'epoch' (int)"]
    if kind == "data_parallel":
        parallel = {k: {f"module.{n}": t for n, t in v.items()} for k, v in checkpoint.items()}
        return parallel, ["unexpected key 'generator.module.conv_pre.weight'"]
    raise ValueError(kind)


KINDS = ["optimizer", "ema", "counters", "data_parallel"]
FILES = [AUDIO, DECODER, CODEC]


def _write_with_extras(source: TinyPaths, target: Path, kind: str, files: list[str]) -> dict[str, list[str]]:
    """Copy the tiny model to `target`, adding `kind` of content to `files`; the expected strict
    error fragments per file."""
    shutil.copytree(source.root, target)
    expected = {}
    for relative in files:
        path = target / "checkpoints" / relative
        content = torch.load(path, map_location="cpu", weights_only=True)
        polluted, names = (_codec_file if relative == CODEC else _flat_file)(kind, content)
        torch.save(polluted, path)
        expected[relative] = names
    return expected


def _loader(relative: str) -> Callable[[Path, bool], torch.nn.Module]:
    if relative == AUDIO:
        return lambda root, strict: load_audio_llm(root, 64, device=CPU, dtype=torch.float32, strict=strict)
    if relative == DECODER:
        return lambda root, strict: load_speech_decoder(root, device=CPU, dtype=torch.float32, strict=strict)
    return lambda root, strict: load_codec(root / "codec", strict=strict)


def _clean_piece(model: FreezeOmni, relative: str) -> torch.nn.Module:
    return {AUDIO: model.audio, DECODER: model.decoder, CODEC: model.codec}[relative]


def _skip_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "app.model.checkpoint_io.weights"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("relative", FILES, ids=["audiollm", "decoder", "codec"])
def test_extra_content_is_skipped_and_named_or_refused_under_strict(
    tiny_model: FreezeOmni,
    tiny_model_dir: TinyPaths,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    relative: str,
    kind: str,
) -> None:
    expected = _write_with_extras(tiny_model_dir, tmp_path / "tiny", kind, [relative])[relative]
    root = tmp_path / "tiny" / "checkpoints"
    load = _loader(relative)

    with caplog.at_level(logging.INFO, logger="app.model.checkpoint_io.weights"):
        piece = load(root, False)
    clean = _clean_piece(tiny_model, relative).state_dict()
    loaded = piece.state_dict()
    assert loaded.keys() == clean.keys()
    assert all(torch.equal(loaded[k], clean[k]) for k in clean)
    [line] = _skip_lines(caplog)  # one line for the file
    assert str(root / relative) in line
    if kind == "data_parallel":
        assert "data-parallel 'module.' prefix removed from" in line
    else:
        for fragment in expected:
            name, _, description = fragment.removeprefix("unexpected key ").partition(" ")
            group = name.strip("'").split(".")[0]
            assert group in line, (group, line)
        assert "unused tensors" in line or "nested" in line or "(int)" in line

    with pytest.raises(CheckpointError) as error:
        load(root, True)
    message = str(error.value)
    assert str(root / relative) in message
    assert "--strict-load" in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_a_model_wrapper_alone_loads_in_both_modes_without_a_log_line(
    tiny_model: FreezeOmni, tiny_model_dir: TinyPaths, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shutil.copytree(tiny_model_dir.root, tmp_path / "tiny")
    root = tmp_path / "tiny" / "checkpoints"
    for relative in (AUDIO, DECODER):
        path = root / relative
        torch.save({"model": torch.load(path, weights_only=True)}, path)
    with caplog.at_level(logging.INFO, logger="app.model.checkpoint_io.weights"):
        for strict in (False, True):
            audio = _loader(AUDIO)(root, strict)
            decoder = _loader(DECODER)(root, strict)
            assert all(
                torch.equal(v, tiny_model.audio.state_dict()[k]) for k, v in audio.state_dict().items()
            )
            assert all(
                torch.equal(v, tiny_model.decoder.state_dict()[k]) for k, v in decoder.state_dict().items()
            )
    assert _skip_lines(caplog) == []


def test_every_kind_in_every_file_at_once_answers_like_the_clean_model(
    tiny_model: FreezeOmni,
    tiny_model_dir: TinyPaths,
    spoken_16k: np.ndarray,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    paths = TinyPaths(tmp_path / "tiny")
    shutil.copytree(tiny_model_dir.root, paths.root)
    for relative in FILES:
        path = paths.model_path / relative
        content = torch.load(path, map_location="cpu", weights_only=True)
        build = _codec_file if relative == CODEC else _flat_file
        for kind in ("data_parallel", "ema", "counters", "optimizer"):  # optimizer wraps it all
            content, _ = build(kind, content)
        torch.save(content, path)

    with caplog.at_level(logging.INFO, logger="app.model.checkpoint_io.weights"):
        loaded = load_freeze_omni(paths.model_path, paths.llm_path)
    lines = _skip_lines(caplog)
    assert len(lines) == 3  # one per weight file
    for relative in FILES:
        assert sum(str(paths.model_path / relative) in line for line in lines) == 1
    before = OfflinePipeline(tiny_model).run(spoken_16k, InferOptions.greedy())
    after = OfflinePipeline(loaded).run(spoken_16k, InferOptions.greedy())
    assert after.token_ids == before.token_ids and after.codec_ids == before.codec_ids
    assert after.audio.tobytes() == before.audio.tobytes()

    with pytest.raises(CheckpointError, match="unexpected entry 'optimizer'"):
        load_freeze_omni(paths.model_path, paths.llm_path, strict=True)


@pytest.mark.parametrize("strict", [False, True], ids=["lenient", "strict"])
def test_a_mis_shaped_tensor_under_training_state_still_fails_with_both_shapes(
    tiny_model_dir: TinyPaths, tmp_path: Path, strict: bool
) -> None:
    shutil.copytree(tiny_model_dir.root, tmp_path / "tiny")
    root = tmp_path / "tiny" / "checkpoints"
    path = root / DECODER
    state = torch.load(path, weights_only=True)
    state["norm.weight"] = torch.ones(7)
    torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "step": 5}, path)
    with pytest.raises(CheckpointError) as error:
        _loader(DECODER)(root, strict)
    message = str(error.value)
    assert str(path) in message
    if strict:
        assert "unexpected entry 'step' (int)" in message and "missing key 'norm.weight'" in message
    else:
        assert "key 'norm.weight'" in message and "has shape (7,)" in message and "expects (16,)" in message
