"""Shared plumbing of the training stages: paths, threads, clip files, resumable checkpoints, logs."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

TRAINING_DIR = Path(__file__).resolve().parent
REPO_ROOT = TRAINING_DIR.parent
DATA_DIR = TRAINING_DIR / "data"
RUNS_DIR = TRAINING_DIR / "runs"
MODEL_DIR = REPO_ROOT / "models" / "trained"

log = logging.getLogger("training")


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S", stream=sys.stdout
    )


def setup_threads(threads: int = 1) -> None:
    """One thread by default: the machine is shared, and small models gain little from more."""
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)


def add_run_args(parser) -> None:
    """The options every stage shares: checkpoint cadence, resuming, torch threads."""
    parser.add_argument("--save-every", type=int, default=100, help="checkpoint every N steps")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")


def start_run(args) -> None:
    """Logging, thread count and the fixed seed every stage starts from."""
    setup_logging()
    setup_threads(args.threads)
    torch.manual_seed(0)


def save_clips(path: Path, clips: list[np.ndarray], rate: int, **columns: list[int]) -> None:
    """Many variable-length clips in one file: int16 samples, offsets and integer columns."""
    lengths = np.array([len(c) for c in clips], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    audio = np.concatenate(clips) if clips else np.zeros(0)
    pcm = (np.clip(audio, -1, 1) * 32767).astype(np.int16)
    np.savez(path, audio=pcm, offsets=offsets, rate=rate, **{k: np.asarray(v) for k, v in columns.items()})


class Clips:
    """Read side of `save_clips`: `clips[i]` is float32 audio; columns are arrays."""

    def __init__(self, path: Path) -> None:
        data = np.load(path)
        self.audio = data["audio"]
        self.offsets = data["offsets"]
        self.rate = int(data["rate"])
        self.columns = {k: data[k] for k in data.files if k not in ("audio", "offsets", "rate")}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.audio[self.offsets[index] : self.offsets[index + 1]].astype(np.float32) / 32767.0


class Checkpointer:
    """Resumable training state in RUNS_DIR/<stage>/: model and optimiser every N steps.

    `--resume` continues from the last save; wall time spent so far is carried along so the
    README can report each stage's total training time.
    """

    def __init__(self, stage: str, every: int) -> None:
        self.dir = RUNS_DIR / stage
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "state.pt"
        self.every = every
        self.started = time.perf_counter()
        self.previous_seconds = 0.0

    def load(self, resume: bool) -> dict[str, Any] | None:
        if not resume or not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=False)
        self.previous_seconds = float(state.get("seconds", 0.0))
        log.info(
            "resuming %s at step %d (%.0f s already spent)",
            self.dir.name,
            state["step"],
            self.previous_seconds,
        )
        return state

    @property
    def seconds(self) -> float:
        return self.previous_seconds + time.perf_counter() - self.started

    def maybe_save(self, step: int, state: dict[str, Any], force: bool = False) -> None:
        if force or (step % self.every == 0 and step > 0):
            tmp = self.path.with_suffix(".tmp")
            torch.save({**state, "step": step, "seconds": self.seconds}, tmp)
            tmp.replace(self.path)

    def record(self, figures: dict[str, Any]) -> None:
        """Write the stage's final figures (wall time, losses, metrics) next to its checkpoint."""
        (self.dir / "figures.json").write_text(
            json.dumps({"seconds": round(self.seconds, 1), **figures}, indent=2)
        )


class Progress:
    """A log line every `every` steps with running means of the named losses and steps/s."""

    def __init__(self, name: str, total: int, every: int = 25) -> None:
        self.name, self.total, self.every = name, total, every
        self.sums: dict[str, float] = {}
        self.count = 0
        self.last = time.perf_counter()

    def update(self, step: int, **losses: float) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value)
        self.count += 1
        if step % self.every == 0 or step == self.total:
            now = time.perf_counter()
            means = " ".join(f"{k}={v / self.count:.4f}" for k, v in self.sums.items())
            rate = self.count / max(now - self.last, 1e-9)
            log.info("%s step %d/%d %s (%.2f step/s)", self.name, step, self.total, means, rate)
            self.sums, self.count, self.last = {}, 0, now
