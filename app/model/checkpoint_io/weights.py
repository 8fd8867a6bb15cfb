"""Reading weight files and loading them into our modules, strictly or leniently.

Both modes fail, with one message naming every offending key, the file it came from and both
shapes, on what would make the model wrong: a tensor the model needs that the file lacks, or a
shape that differs from what the configs build.

They differ on content the model does not use. Training checkpoints often carry it: optimizer
state, EMA copies, step counters, a data-parallel `module.` prefix on every name, the weights
wrapped under a `model` key (the published speech decoder loader accepts that wrapper and copies
only the tensors that match). The lenient default skips such content and logs one line per file
that counts and names it by group; strict loading (`--strict-load`) refuses it, naming each entry.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

log = logging.getLogger(__name__)

MODEL_WRAPPER_KEY = "model"
DATA_PARALLEL_PREFIX = "module."


class CheckpointError(RuntimeError):
    """A checkpoint does not match the model its configs describe."""


@dataclass(frozen=True)
class SkippedEntry:
    """A top-level entry of a weight file that holds no model tensor (training state)."""

    name: str
    source: str
    description: str  # e.g. "nested, 12 tensors" or "int"


def _describe(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        count = _count_tensors(value)
        return f"nested, {count} tensor{'s' * (count != 1)}"
    return type(value).__name__


def _count_tensors(value: Any) -> int:
    if isinstance(value, torch.Tensor):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_tensors(v) for v in value.values())
    if isinstance(value, list | tuple):
        return sum(_count_tensors(v) for v in value)
    return 0


@dataclass
class WeightSet:
    """Tensors by name, the file each one came from, and what the files held besides tensors."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    origin: dict[str, str] = field(default_factory=dict)
    skipped: list[SkippedEntry] = field(default_factory=list)
    prefix_stripped: Counter[str] = field(default_factory=Counter)  # source -> names unprefixed

    def add(self, tensors: Mapping[str, torch.Tensor], source: str, prefix: str = "") -> None:
        for key, value in tensors.items():
            self.tensors[prefix + key] = value
            self.origin[prefix + key] = source

    def add_checkpoint(
        self, content: Mapping[str, Any], source: str, *, strict: bool, prefix: str = ""
    ) -> None:
        """Add a state dict read from `source`, separating its tensors from training state.

        Non-tensor entries (nested dicts, counters) are recorded as skipped. Unless `strict`, a
        data-parallel `module.` prefix is removed from every name that carries it.
        """
        if not isinstance(content, Mapping):
            raise CheckpointError(f"{source} holds a {type(content).__name__}, not a dict of tensors")
        for key, value in content.items():
            if not isinstance(value, torch.Tensor):
                self.skipped.append(SkippedEntry(prefix + str(key), source, _describe(value)))
                continue
            name = key
            if not strict and name.startswith(DATA_PARALLEL_PREFIX):
                name = name[len(DATA_PARALLEL_PREFIX) :]
                self.prefix_stripped[source] += 1
            self.tensors[prefix + name] = value
            self.origin[prefix + name] = source

    def skip(self, name: str, value: Any, source: str) -> None:
        """Record a top-level entry the loader does not read."""
        self.skipped.append(SkippedEntry(name, source, _describe(value)))

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


def read_torch_checkpoint(path: str | Path) -> Any:
    """torch.load on CPU without executing pickled code."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} not found")
    return torch.load(path, map_location="cpu", weights_only=True)


def unwrap_model_key(content: Any, source: str, weights: WeightSet) -> Any:
    """The state dict inside a `{"model": state_dict, ...}` wrapper, or `content` itself.

    The wrapper's siblings (optimizer state, step counters, EMA copies) are recorded in
    `weights` as skipped: strict loading refuses them, lenient loading logs them.
    """
    if isinstance(content, Mapping) and isinstance(content.get(MODEL_WRAPPER_KEY), Mapping):
        for key, value in content.items():
            if key != MODEL_WRAPPER_KEY:
                weights.skip(str(key), value, source)
        return content[MODEL_WRAPPER_KEY]
    return content


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


def _group(name: str) -> str:
    """The group an unused tensor is counted under in the log: its first name component."""
    return name.split(".", 1)[0]


def _listed(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _skip_summary(weights: WeightSet, unused: list[str]) -> str:
    """'optimizer (nested, 48 tensors), step (int), ema (245 unused tensors), ...' in one line."""
    parts = [f"{entry.name} ({entry.description})" for entry in weights.skipped]
    groups = Counter(_group(name) for name in unused)
    parts += [f"{group} ({count} unused tensor{'s' * (count != 1)})" for group, count in groups.items()]
    if stripped := sum(weights.prefix_stripped.values()):
        parts.append(f"data-parallel '{DATA_PARALLEL_PREFIX}' prefix removed from {stripped} names")
    return "; ".join(parts)


def load_state_dict_checked(
    model: nn.Module,
    weights: WeightSet,
    *,
    strict: bool,
    device: str | torch.device,
    dtype: torch.dtype,
    optional: set[str] | None = None,
) -> None:
    """Load `weights` into `model` (which may live on the meta device), checking every key and shape.

    A missing tensor or a shape that differs from the model's fails in both modes. With `strict`,
    tensors the model does not use and non-tensor entries fail too; without it they are skipped
    and named, by group, in one log line. Floating-point tensors are cast to `dtype`; everything
    lands on `device`. Keys in `optional` may be absent from the file (the caller fills them).
    """
    optional = optional or set()
    expected = model.state_dict()
    unused = sorted(set(weights.tensors) - set(expected))
    sources = sorted(set(weights.origin.values()) | {e.source for e in weights.skipped}) or ["(no files)"]
    problems = []
    for key in sorted(set(expected) - set(weights.tensors) - optional):
        problems.append(
            f"missing key '{key}' (model expects shape {_shape(expected[key])}), not in {', '.join(sources)}"
        )
    for key in sorted(set(weights.tensors) & set(expected)):
        got, want = _shape(weights.tensors[key]), _shape(expected[key])
        if got != want:
            problems.append(
                f"key '{key}' in {weights.origin[key]} has shape {got}, but the model built from "
                f"its config expects {want}"
            )
    if strict:
        for key in unused:
            problems.append(
                f"unexpected key '{key}' with shape {_shape(weights.tensors[key])} in {weights.origin[key]}"
            )
        for entry in weights.skipped:
            problems.append(f"unexpected entry '{entry.name}' ({entry.description}) in {entry.source}")
    if problems:
        if not strict and unused:
            problems.append(f"the file also holds tensors the model does not use: {_listed(unused)}")
        mode = "strict loading, --strict-load" if strict else "lenient loading"
        raise CheckpointError(
            f"checkpoint does not match the model ({', '.join(sources)}; {mode}):\n  " + "\n  ".join(problems)
        )
    if unused or weights.skipped or weights.prefix_stripped:
        log.info(
            "%s: loaded %d tensors, skipped what the model does not use (--strict-load refuses it): %s",
            ", ".join(sources),
            len(weights.tensors) - len(unused),
            _skip_summary(weights, unused),
        )
    state = {}
    for key, value in weights.tensors.items():
        if key not in expected:
            continue
        value = value.to(device)
        state[key] = value.to(dtype) if value.is_floating_point() else value
    model.load_state_dict(state, strict=False, assign=True)


def load_state_dict_strict(
    model: nn.Module,
    weights: WeightSet,
    *,
    device: str | torch.device,
    dtype: torch.dtype,
    optional: set[str] | None = None,
) -> None:
    """`load_state_dict_checked` with `strict`: every key in the files must be one the model has."""
    load_state_dict_checked(model, weights, strict=True, device=device, dtype=dtype, optional=optional)


def assert_materialized(module: nn.Module, what: str) -> None:
    """Fail loudly if loading left any tensor without storage."""
    left = [name for name, t in [*module.named_parameters(), *module.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: no values were loaded for {', '.join(left[:5])}")
