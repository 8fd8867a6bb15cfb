"""Where the embedded default model lives, and making it on first use."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from app.model.tiny import TinyPaths, make_tiny

log = logging.getLogger(__name__)


def default_model_root() -> Path:
    """$FREEZE_OMNI_HOME, else ~/.cache/freeze-omni-serve/tiny (XDG_CACHE_HOME respected)."""
    if home := os.environ.get("FREEZE_OMNI_HOME"):
        return Path(home)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "freeze-omni-serve" / "tiny"


def ensure_default_model(root: Path | None = None) -> TinyPaths:
    """The tiny default model, written first if it is not there yet (a few seconds, no download)."""
    paths = TinyPaths(root or default_model_root())
    if not paths.exists():
        log.info("no model at %s yet: making the tiny default model (random weights, seed 0)", paths.root)
        make_tiny(paths.root)
    return paths
