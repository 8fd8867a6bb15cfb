"""Where the embedded default model lives: the trained one shipped in the repo, else a tiny random one."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.model.fixtures.tiny import TinyPaths, make_tiny

log = logging.getLogger(__name__)

TRAINED_MODEL_ROOT = Path(__file__).resolve().parents[3] / "models" / "trained"
"""The model trained on synthetic speech by training/ and committed (checkpoints/ + Qwen2-tiny/)."""


def default_model_root() -> Path:
    """$FREEZE_OMNI_HOME, else ~/.cache/freeze-omni-serve/tiny (XDG_CACHE_HOME respected)."""
    if home := os.environ.get("FREEZE_OMNI_HOME"):
        return Path(home)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "freeze-omni-serve" / "tiny"


def ensure_default_model(root: Path | None = None) -> TinyPaths:
    """The committed trained model when it is there (and no `root` is asked for); otherwise the tiny
    random model under `root` or `default_model_root()`, written first if missing (seconds, no download)."""
    if root is None and TinyPaths(TRAINED_MODEL_ROOT).exists():
        return TinyPaths(TRAINED_MODEL_ROOT)
    paths = TinyPaths(root or default_model_root())
    if not paths.exists():
        log.info("no model at %s yet: making the tiny default model (random weights, seed 0)", paths.root)
        make_tiny(paths.root)
    return paths
