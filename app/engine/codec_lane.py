"""The codec stage on its own lane: ready token windows decoded on a thread of their own.

A codec window (up to 60 tokens, 1.5 s of audio) costs tens of milliseconds on a CPU, which is more
than one step of the other stages for many sessions together: run inside the step, every window held
every answer's speech decoder (25 ms of audio per token) and every listener for that long. On its own
thread the codec overlaps the next steps (torch releases the GIL inside its convolutions), and windows
that become ready while a decode runs are batched into the next one.

Only the step thread touches sessions and chunkers: it hands windows in (`submit`) and takes decoded
audio back (`collect`), feeding each chunker in order. The lane's thread sees immutable windows only.
Inline (no thread), `submit` decodes at once: the engine's earlier behaviour, kept for comparison.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.model import CodecDecoder, DecodeWindow, decode_windows


@dataclass
class CodecJob:
    """Windows of several sessions, decoded together; `owners` say whose each window is."""

    owners: list[Any]
    windows: list[DecodeWindow]


@dataclass
class CodecResult:
    """One decoded window, or the error that stopped it; `seconds` is the job's thread CPU time."""

    owner: Any
    window: DecodeWindow
    audio: np.ndarray | None
    error: BaseException | None = None


@dataclass
class CodecBatch:
    """What one finished job gave back."""

    results: list[CodecResult] = field(default_factory=list)
    cpu_seconds: float = 0.0
    wall_seconds: float = 0.0


def decode_isolated(codec: CodecDecoder, job: CodecJob, max_batch: int) -> CodecBatch:
    """Decode a job in batches of `max_batch` windows; a failing batch is retried window by window, so
    only the guilty window's owner fails."""
    began, began_cpu = time.perf_counter(), time.thread_time()
    batch = CodecBatch()
    size = max(max_batch, 1)
    with torch.inference_mode():
        for start in range(0, len(job.windows), size):
            owners, windows = job.owners[start : start + size], job.windows[start : start + size]
            try:
                audios: list = decode_windows(codec, windows)
            except Exception:  # noqa: BLE001 - retried one by one below
                audios = []
                for window in windows:
                    try:
                        audios.append(decode_windows(codec, [window])[0])
                    except Exception as error:  # noqa: BLE001 - handed back with its owner
                        audios.append(error)
            for owner, window, audio in zip(owners, windows, audios, strict=True):
                if isinstance(audio, BaseException):
                    batch.results.append(CodecResult(owner, window, None, audio))
                else:
                    batch.results.append(CodecResult(owner, window, audio))
    batch.cpu_seconds = time.thread_time() - began_cpu
    batch.wall_seconds = time.perf_counter() - began
    return batch


class CodecLane:
    """Decodes submitted windows on one thread (or inline) and hands the audio back in order."""

    def __init__(self, codec: CodecDecoder, max_batch: int, threaded: bool, name: str = "codec") -> None:
        self.codec = codec
        self.max_batch = max_batch
        self.threaded = threaded
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) if threaded else None
        self._waiting = CodecJob([], [])
        self._running: Future[CodecBatch] | None = None
        self._done: list[CodecBatch] = []

    @property
    def busy(self) -> bool:
        """A decode is running or windows wait for one."""
        return self._running is not None or bool(self._waiting.windows)

    def submit(self, owners: Sequence[Any], windows: Sequence[DecodeWindow]) -> None:
        """Queue windows for decoding (each with its owner); they start at once if the lane is free."""
        self._waiting.owners.extend(owners)
        self._waiting.windows.extend(windows)
        self._start()

    def collect(self, wait_s: float = 0.0) -> list[CodecBatch]:
        """Finished batches, oldest first; with `wait_s`, wait that long for a running decode first."""
        if self._running is not None and wait_s > 0:
            wait_futures([self._running], timeout=wait_s)
        if self._running is not None and self._running.done():
            self._done.append(self._running.result())
            self._running = None
            self._start()
        done, self._done = self._done, []
        return done

    def _start(self) -> None:
        if self._running is not None or not self._waiting.windows:
            return
        job, self._waiting = self._waiting, CodecJob([], [])
        if self._executor is None:
            self._done.append(decode_isolated(self.codec, job, self.max_batch))
        else:
            self._running = self._executor.submit(decode_isolated, self.codec, job, self.max_batch)

    def close(self) -> None:
        """Stop the lane's thread (after a running decode ends); waiting windows are dropped."""
        self._waiting = CodecJob([], [])
        if self._executor is not None:
            self._executor.shutdown(wait=True)
