"""Reading weight files and loading them strictly into our modules.

Strict means: a missing or unexpected key, or a shape that differs from what the configs build,
fails with one message naming every offending key, the file it came from and both shapes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint does not match the model its configs describe."""


@dataclass
class WeightSet:
    """Tensors by name, and the file each one came from (for error messages)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)

    def add(self, tensors: dict[str, torch.Tensor], source: str, prefix: str = "") -> None:
        for key, value in tensors.items():
            self.tensors[prefix + key] = value
            self.origin[prefix + key] = source

    def drop_suffix(self, suffix: str) -> None:
        """Forget keys ending in `suffix` (computed buffers some exports carry)."""
        for key in [k for k in self.tensors if k.endswith(suffix)]:
            del self.tensors[key]
            del self.origin[key]

    def select(self, prefix: str) -> WeightSet:
        """The keys under `prefix`, with the prefix removed."""
        picked = WeightSet()
        for key, value in self.tensors.items():
            if key.startswith(prefix):
                picked.tensors[key[len(prefix) :]] = value
                picked.origin[key[len(prefix) :]] = self.origin[key]
        return picked

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()


def read_torch_checkpoint(path: str | Path, *, unwrap: str | None = None) -> dict:
    """torch.load on CPU without executing pickled code; optionally take the `unwrap` entry."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if unwrap is not None and isinstance(data, dict) and unwrap in data and isinstance(data[unwrap], dict):
        data = data[unwrap]
    return data


def read_weight_files(folder: str | Path) -> WeightSet:
    """All weights of a Hugging Face model folder: safetensors shards, else pytorch_model*.bin."""
    folder = Path(folder)
    weights = WeightSet()
    shards = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        shards = [folder / name for name in names]
    if shards:
        for shard in shards:
            weights.add(load_file(str(shard)), str(shard))
        return weights
    bins = sorted(folder.glob("pytorch_model*.bin"))
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin weights in {folder}")
    for shard in bins:
        weights.add(read_torch_checkpoint(shard), str(shard))
    return weights


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def load_state_dict_strict(
    model: nn.Module,
    weights: WeightSet,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    optional: set[str] | None = None,
) -> None:
    """Load `weights` into `model` (which may live on the meta device), checking every key and shape.

    Floating-point tensors are cast to `dtype`; everything lands on `device`. Keys in `optional`
    may be absent from the file (the caller fills them).
    """
    optional = optional or set()
    expected = model.state_dict()
    problems = []
    for key in sorted(set(expected) - set(weights.tensors) - optional):
        problems.append(f"missing key '{key}' (model expects shape {_shape(expected[key])})")
    for key in sorted(set(weights.tensors) - set(expected)):
        problems.append(
            f"unexpected key '{key}' with shape {_shape(weights.tensors[key])} in {weights.origin[key]}"
        )
    for key in sorted(set(weights.tensors) & set(expected)):
        got, want = _shape(weights.tensors[key]), _shape(expected[key])
        if got != want:
            problems.append(
                f"key '{key}' in {weights.origin[key]} has shape {got}, but the model built from "
                f"its config expects {want}"
            )
    if problems:
        sources = sorted(set(weights.origin.values())) or ["(no files)"]
        raise CheckpointError(
            f"checkpoint does not match the model ({', '.join(sources)}):\n  " + "\n  ".join(problems)
        )
    state = {}
    for key, value in weights.tensors.items():
        value = value.to(device)
        state[key] = value.to(dtype) if value.is_floating_point() else value
    model.load_state_dict(state, strict=False, assign=True)


def assert_materialized(module: nn.Module, what: str) -> None:
    """Fail loudly if loading left any tensor without storage."""
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: no values were loaded for {', '.join(left[:5])}")
