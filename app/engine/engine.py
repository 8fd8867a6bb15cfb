"""One replica's engine core: many conversations on one model, every stage batched across them.

The loop is vLLM v1's `schedule -> execute -> update`, small: API calls become commands applied between
steps, on the event loop; the scheduler (`scheduler.py`) owns every session's state and its transitions
and plans each step; the runner (`runner.py`) turns the plan into tensors and runs it in the replica's
worker thread, so sockets never stall on a forward; the slot owner (`slots.py`) holds the caches. A
step's outcome (decisions, text, audio) comes back as data and is handed to the scheduler on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from app.engine import fault_injection
from app.engine.errors import CapacityError, EngineStoppedError, SessionClosedError
from app.engine.events import (  # noqa: F401 - AnswerStream is re-exported for callers
    AnswerOptions,
    AnswerStream,
    CancelCause,
    ChunkDecision,
)
from app.engine.futures import copy_future, reject, resolve
from app.engine.headroom import Headroom, RealtimeMeter
from app.engine.runner import StepOutcome, StepRunner
from app.engine.scheduler import EngineStats, Scheduler
from app.engine.settings import EngineSettings
from app.engine.slots import SlotOwner
from app.engine.state import PendingChunk, SessionState
from app.model import CHUNK_SAMPLES, CHUNK_SECONDS, INPUT_RATE, OUTPUT_RATE, FreezeOmni

log = logging.getLogger(__name__)
__all__ = ["AnswerStream", "Engine", "EngineStats"]


class Engine:
    """Serves sessions on one model replica (one device)."""

    def __init__(self, model: FreezeOmni, settings: EngineSettings, name: str = "replica-0") -> None:
        self.model = model
        self.settings = settings
        self.name = name
        self.stats = EngineStats()
        self.slots = SlotOwner(model, settings, name)
        self.scheduler = Scheduler(model, settings, self.slots, self.stats, name)
        self.runner = StepRunner(model, self.slots, settings)
        self.meter = RealtimeMeter(
            token_period_s=model.codec.samples_per_token / OUTPUT_RATE,
            chunk_period_s=CHUNK_SECONDS,
            max_load=settings.admission_max_load,
            window_steps=settings.admission_window_steps,
            tokens_per_step=settings.speech_tokens_per_step,
            unmeasured_sessions=settings.admission_unmeasured_sessions,
        )
        self._commands: deque[Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self._task: asyncio.Task | None = None
        self._stopping = False
        fault_injection.fail_after_steps()  # TEST-ONLY hook, read once at start

    @property
    def sessions(self) -> dict[str, SessionState]:
        """The live sessions (owned by the scheduler)."""
        return self.scheduler.sessions

    @property
    def llm_cache(self):
        return self.slots.llm_cache

    @property
    def decoder_cache(self):
        return self.slots.decoder_cache

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"engine-{self.name}")

    async def stop(self) -> None:
        """Cancel every answer, close every session, stop the loop."""
        if self._task is None:
            return
        if self._task.done():  # the loop died (see `loop_task`): nothing left to ask it
            self._task = None
            self._executor.shutdown(wait=True)
            self.runner.close()
            return
        await self._submit(self.scheduler.close_all)
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        self._executor.shutdown(wait=True)
        self.runner.close()

    @property
    def loop_task(self) -> asyncio.Task | None:
        """The running loop; it ends with an exception only when the engine can no longer serve."""
        return self._task

    @property
    def load(self) -> int:
        return len(self.sessions)

    @property
    def free_sessions(self) -> int:
        return self.settings.max_sessions - len(self.sessions)

    def headroom(self) -> Headroom:
        """The measured real-time load and how many more sessions fit (for /readyz, /metrics, the pool)."""
        return self.meter.headroom(self.load, self.free_sessions)

    def pending_chunks(self) -> int:
        return sum(len(s.listen.pending) for s in self.sessions.values() if s.listen is not None)

    # -- API (coroutines; each becomes a command applied between steps) -------------------------
    async def open_session(self, role: str | None = None, seed: int | None = None) -> str:
        """Admit a session or raise `CapacityError` (no place, or no real-time headroom); returns its id."""

        def admit() -> str:
            if len(self.sessions) < self.settings.max_sessions and not self.meter.admits(self.load):
                raise CapacityError(
                    f"{self.name} has no real-time headroom for another session: "
                    f"{self.meter.refusal(self.load)}"
                )
            return self.scheduler.open_session(role, seed)

        return await self._submit(admit)

    async def close_session(self, session_id: str) -> None:
        await self._submit(
            lambda: self.scheduler.close_session(session_id, "session closed"), missing_ok=True
        )

    async def set_instructions(self, session_id: str, role: str | None) -> None:
        """New system prompt; the conversation so far is kept and re-read under it at the next turn."""
        await self._submit(lambda: self.scheduler.set_role(self.scheduler.session(session_id), role))

    async def set_answer_defaults(self, session_id: str, options: AnswerOptions) -> None:
        """How answers the state head starts are made (text only, token cap); see `AnswerOptions`."""
        await self._submit(lambda: setattr(self.scheduler.session(session_id), "answer_defaults", options))

    async def begin_listen(self, session_id: str) -> None:
        """The user started speaking: open a listen turn (a branch if the bot is speaking)."""
        await self._submit(lambda: self.scheduler.begin_listen(self.scheduler.session(session_id)))

    async def feed_chunk(self, session_id: str, samples: np.ndarray, act: bool = True) -> ChunkDecision:
        """Feed one 160 ms chunk (2560 samples, 16 kHz float) to the open listen turn.

        With `act`, an "answer" verdict commits the turn and starts an answer (cancelling a
        running one: barge-in) and an "ignore" verdict drops the turn; without it the verdict is
        only reported (pre-roll, offline-equivalent runs).
        """
        samples = np.asarray(samples, dtype=np.float32)
        if samples.shape != (CHUNK_SAMPLES,):
            raise ValueError(
                f"a chunk is {CHUNK_SAMPLES} samples at {INPUT_RATE} Hz, got shape {samples.shape}"
            )
        future: asyncio.Future[ChunkDecision] = asyncio.get_running_loop().create_future()

        def enqueue() -> None:
            session = self.scheduler.session(session_id)
            if session.listen is None:
                self.scheduler.begin_listen(session)
            session.listen.pending.append(PendingChunk(samples, act, future))

        await self._submit(enqueue)
        return await future

    async def commit_listen(
        self, session_id: str, options: AnswerOptions | None = None
    ) -> AnswerStream | None:
        """End the listen turn and answer it (push-to-talk commit, silence timeout)."""
        return await self._submit(
            lambda: self.scheduler.commit_when_drained(self.scheduler.session(session_id), options)
        )

    async def drop_listen(self, session_id: str) -> None:
        """End the listen turn without answering; the conversation is as if it never happened."""
        await self._submit(lambda: self.scheduler.drop_listen(self.scheduler.session(session_id)))

    async def cancel_answer(
        self,
        session_id: str,
        reason: str = "cancelled by the client",
        heard_text: str | None = None,
        cause: CancelCause = CancelCause.CLIENT,
    ) -> None:
        """End the running answer; with `heard_text`, the conversation keeps only that much of it."""

        await self._submit(
            lambda: self.scheduler.cancel_heard(self.scheduler.session(session_id), reason, cause, heard_text)
        )

    def note_heard(self, session_id: str, answer_id: str, heard_text: str | None) -> None:
        """How much of the running answer the user has heard, should it end now (an interruption paused
        it); None: all of it (it goes on). Applied in order with other commands; nothing to wait for."""

        self._commands.append(lambda: self.scheduler.note_heard(session_id, answer_id, heard_text))
        self._wake.set()

    async def cut_answer(self, session_id: str, answer_id: str, heard_text: str) -> None:
        """The user heard only `heard_text` of a finished answer: the conversation keeps just that."""
        await self._submit(
            lambda: self.scheduler.cut_history(self.scheduler.session(session_id), answer_id, heard_text)
        )

    def describe_answer(self, session_id: str) -> dict[str, Any]:
        """Where the session's running answer stands, for a log line (read between steps; may be a step
        stale): its phase, text tokens, audio made and how far ahead of playback, speech work left."""
        session = self.sessions.get(session_id)
        if session is None:
            return {"session": "closed"}
        answer = session.answer
        listen_pending = len(session.listen.pending) if session.listen is not None else 0
        if answer is None:
            return {"answer": None, "listening": session.listen is not None, "listen_pending": listen_pending}
        now = time.perf_counter()
        return {
            "answer": answer.answer_id,
            "phase": answer.phase.name,
            "text_tokens": len(answer.token_ids),
            "last_token_waiting": answer.last_token is not None,
            "segment_tokens": None if answer.segment is None else len(answer.segment.tokens),
            "pending_segments": len(answer.pending_segments),
            "codec_tokens": sum(len(ids) for ids in answer.codec_ids),
            "chunker_idle": answer.chunker.idle,
            "held_audio_s": round(answer.chunker.held_samples / OUTPUT_RATE, 2),
            "audio_s": round(answer.audio_samples / OUTPUT_RATE, 2),
            "ahead_s": round(answer.audio_ahead_s(now, OUTPUT_RATE), 2),
            "age_s": round(now - answer.started_at, 1),
            "listening": session.listen is not None,
            "listen_pending": listen_pending,  # chunks of the user's speech waiting to be heard
            "has_work": not answer.speech_done,
        }

    def conversation_text(self, session_id: str) -> list[tuple[str, str]]:
        """The conversation as the model will read it next: (kind, text) per entry, kind "answer" with the
        text of its tokens, or "user" (audio or typed). For tests and debugging."""
        session = self.scheduler.session(session_id)
        return [
            ("answer", self.model.tokenizer.decode(e.token_ids)) if e.answer_id is not None else ("user", "")
            for e in session.history
        ]

    async def text_turn(
        self, session_id: str, text: str, options: AnswerOptions | None = None
    ) -> AnswerStream:
        """A typed user turn: cancels any answer and listen turn, then answers the text."""
        return await self._submit(
            lambda: self.scheduler.text_turn(self.scheduler.session(session_id), text, options)
        )

    async def respond(self, session_id: str, options: AnswerOptions | None = None) -> AnswerStream:
        """An answer with no new user input (the bot speaks first, or again), from the instructions."""
        return await self._submit(
            lambda: self.scheduler.text_turn(self.scheduler.session(session_id), None, options)
        )

    # -- commands (event loop thread, between steps) ----------------------------------------------
    async def _submit(self, command: Callable[[], Any], missing_ok: bool = False) -> Any:
        if self._task is None or self._stopping or self._task.done():
            raise EngineStoppedError("the engine is not running")
        future = asyncio.get_running_loop().create_future()

        def run() -> None:
            try:
                result = command()
            except SessionClosedError as error:
                if missing_ok:
                    resolve(future, None)
                else:
                    reject(future, error)
            except Exception as error:  # noqa: BLE001 - handed to the caller
                reject(future, error)
            else:
                if isinstance(result, asyncio.Future):
                    result.add_done_callback(lambda f: copy_future(f, future))
                else:
                    resolve(future, result)

        self._commands.append(run)
        self._wake.set()
        return await future

    # -- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_speech_step: float | None = None  # when the last step that made speech began
        while True:
            self._wake.clear()
            while self._commands:
                try:
                    self._commands.popleft()()
                except Exception:  # noqa: BLE001 - a broken command must not stop every session
                    log.exception("%s: command failed", self.name)
            if self._stopping:
                return
            plan = self.scheduler.plan(time.perf_counter())
            if plan.empty:
                # Answers held back for being ahead of playback need a timed look.
                timeout = 0.02 if any(s.answer is not None for s in self.sessions.values()) else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            began = time.perf_counter()
            try:
                outcome = await loop.run_in_executor(self._executor, self.runner.execute, plan)
            except Exception:  # noqa: BLE001 - a bug in the step itself: fail its sessions, go on
                log.exception("%s: step failed", self.name)
                involved = {s.session_id: s for s in plan.listen + plan.answer + plan.speech + plan.codec}
                outcome = StepOutcome(failures=[(s, "internal error") for s in involved.values()])
            if not outcome.failures:
                self.meter.record(
                    outcome.seconds,
                    codec_tokens=outcome.batch_sizes.get("decoder", 0),
                    listening=outcome.batch_sizes.get("encoder", 0),
                    speaking=outcome.speaking_sessions,
                )
                if self.settings.codec_thread:  # inline, the codec's time is in the step's
                    self.meter.record_codec(outcome.codec_seconds, outcome.codec_audio_seconds)
            speech = outcome.batch_sizes.get("decoder", 0) > 0
            cadence = began - last_speech_step if speech and last_speech_step is not None else None
            last_speech_step = began if speech else None
            try:
                self._apply(outcome, cadence)
            except Exception:  # noqa: BLE001
                log.exception("%s: delivering a step's outcome failed", self.name)
            fault_injection.raise_if_due(self.stats.steps)  # TEST-ONLY hook; a no-op unless set

    def _apply(self, outcome: StepOutcome, cadence_s: float | None = None) -> None:
        self.stats.record_step(outcome.seconds, cadence_s, llm_forward_s=outcome.llm_forward_seconds)
        for stage, rows in outcome.batch_sizes.items():
            if rows:
                self.stats.rows[stage] = self.stats.rows.get(stage, 0) + rows
                self.stats.forwards_with_rows[stage] = self.stats.forwards_with_rows.get(stage, 0) + 1
        self.scheduler.apply(outcome)
