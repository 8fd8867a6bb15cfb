"""The codec stage on its own lane: ready token windows decoded on a thread of their own.

A codec window (up to 60 tokens, 1.5 s of audio) costs tens of milliseconds on a CPU, which is more
than one step of the other stages for many sessions together: run inside the step, every window held
every answer's speech decoder (25 ms of audio per token) and every listener for that long. On its own
thread the codec overlaps the next steps (torch releases the GIL inside its convolutions), and windows
that become ready while a decode runs are batched into the next one.

Only the step thread touches sessions and chunkers: it hands windows in (`submit`) and takes decoded
audio back (`collect`), feeding each chunker in order. The lane's thread sees immutable windows only.
Inline (no thread, the default: measured better on a 2-core machine shared with other work, where the
two threads only competed for the same share of a core), `submit` decodes at once, inside the step.

A decode takes at most `max_windows` windows, the most urgent first (an answer's first audio before
audio of answers already playing, those least ahead of their playback before those far ahead): a
running decode cannot be interrupted, so small decodes let first audio overtake sooner. On a CPU,
decoding windows together saves nothing (the convolutions' arithmetic dominates); on a GPU it does.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from app.model import CodecDecoder, DecodeWindow, decode_windows

log = logging.getLogger(__name__)


@dataclass
class CodecJob:
    """Windows of several sessions, decoded together; `owners` say whose each window is."""

    owners: list[Any]
    windows: list[DecodeWindow]
    priorities: list[float] = field(default_factory=list)


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

    def __init__(
        self, codec: CodecDecoder, max_batch: int, threaded: bool, name: str = "codec", max_windows: int = 0
    ) -> None:
        self.codec = codec
        self.max_batch = max_batch
        self.max_windows = max_windows  # per decode; 0: every waiting window
        self.threaded = threaded
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name) if threaded else None
        # The lane's thread starts the next decode itself when one ends, so it never waits for a step.
        self._lock = threading.RLock()  # a decode that ends at once calls back under it
        self._waiting = CodecJob([], [], [])
        self._running: Future[CodecBatch] | None = None
        self._done: list[CodecBatch] = []
        self._finished = threading.Event()
        self._closing = False

    @property
    def busy(self) -> bool:
        """A decode is running, or windows wait for one, or decoded windows wait to be collected."""
        with self._lock:
            return self._running is not None or bool(self._waiting.windows) or bool(self._done)

    def submit(
        self,
        owners: Sequence[Any],
        windows: Sequence[DecodeWindow],
        priorities: Sequence[float] | None = None,
    ) -> None:
        """Queue windows for decoding, each with its owner and priority (lower: sooner; default 0, in the
        order given); they start at once if the lane is free."""
        if not windows:
            return
        with self._lock:
            self._waiting.owners.extend(owners)
            self._waiting.windows.extend(windows)
            self._waiting.priorities.extend(priorities if priorities is not None else [0.0] * len(windows))
            self._start()

    def collect(self, wait_s: float = 0.0) -> list[CodecBatch]:
        """Finished batches, oldest first; with `wait_s`, wait up to that long for one if none is ready."""
        with self._lock:
            waiting = not self._done and self._running is not None
            self._finished.clear()
        if waiting and wait_s > 0:
            self._finished.wait(wait_s)
        with self._lock:
            done, self._done = self._done, []
        return done

    def _start(self) -> None:
        """Start the next decode (inline: decode everything waiting, a job at a time). Holds the lock."""
        while self._running is None and self._waiting.windows:
            job = self._next_job()
            if self._executor is None:
                self._done.append(decode_isolated(self.codec, job, self.max_batch))
            else:
                self._running = self._executor.submit(decode_isolated, self.codec, job, self.max_batch)
                self._running.add_done_callback(self._ended)

    def _ended(self, future: Future[CodecBatch]) -> None:
        """On the lane's thread: keep the result, start the next decode."""
        with self._lock:
            if future.cancelled():
                batch = CodecBatch()
            elif (error := future.exception()) is not None:  # decode_isolated catches per window: a bug
                batch = CodecBatch()
                log.error("codec lane decode failed", exc_info=error)
            else:
                batch = future.result()
            self._done.append(batch)
            self._running = None
            self._finished.set()
            if self._executor is not None and not self._closing:
                self._start()

    def _next_job(self) -> CodecJob:
        """The most urgent waiting windows, at most `max_windows`; the rest keep waiting, in order."""
        waiting = self._waiting
        order = sorted(range(len(waiting.windows)), key=lambda i: waiting.priorities[i])  # stable
        take = len(order) if self.max_windows <= 0 else self.max_windows
        now, later = order[:take], order[take:]
        self._waiting = CodecJob(
            [waiting.owners[i] for i in later],
            [waiting.windows[i] for i in later],
            [waiting.priorities[i] for i in later],
        )
        return CodecJob([waiting.owners[i] for i in now], [waiting.windows[i] for i in now])

    def close(self) -> None:
        """Stop the lane's thread (after a running decode ends); waiting windows are dropped."""
        with self._lock:
            self._closing = True
            self._waiting = CodecJob([], [], [])
        if self._executor is not None:
            self._executor.shutdown(wait=True)
