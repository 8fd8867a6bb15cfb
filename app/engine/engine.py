"""One replica's engine: many conversations on one model, every stage batched across them.

The loop owns all session state. API calls become commands applied between steps, on the event
loop; each step runs in the replica's worker thread (`StepRunner`), so sockets never stall on a
forward. A step's outcome (decisions, text, audio) is delivered back on the event loop.

Turn taking, as in the published server but without its copies:
- a listen turn on a quiet session writes into the session's main cache slot; if the state head
  says "ignore" it is dropped by truncating back (no copy at all);
- a listen turn while the bot speaks forks main into the session's spare slot once; "answer"
  cancels the running answer and the branch becomes main, "ignore" drops the branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from app.engine import fault_injection
from app.engine.errors import CapacityError, EngineStoppedError, SessionClosedError
from app.engine.events import AnswerDone, AnswerEvent, AnswerOptions, AnswerStatus, ChunkDecision
from app.engine.runner import StepOutcome, StepRunner
from app.engine.scheduler import Scheduler
from app.engine.settings import EngineSettings
from app.engine.state import AnswerState, HistoryEntry, ListenTurn, PendingChunk, SessionState
from app.model import (
    CHUNK_SAMPLES,
    INPUT_RATE,
    OUTPUT_RATE,
    CodecChunker,
    FreezeOmni,
    IncrementalDetokenizer,
    ListenState,
    Segmenter,
    answer_start_embeds,
    instructions_embeds,
    system_prefill_embeds,
    text_turn_embeds,
)

log = logging.getLogger(__name__)


class AnswerStream:
    """The events of one answer, in order, ending with `AnswerDone`."""

    def __init__(self, answer_id: str, queue: asyncio.Queue[AnswerEvent]) -> None:
        self.answer_id = answer_id
        self._queue = queue
        self.done: AnswerDone | None = None

    async def next_event(self) -> AnswerEvent:
        event = await self._queue.get()
        if isinstance(event, AnswerDone):
            self.done = event
        return event

    async def __aiter__(self) -> AsyncIterator[AnswerEvent]:
        while self.done is None:
            yield await self.next_event()


@dataclass
class EngineStats:
    """Counters for /metrics and benchmarks."""

    steps: int = 0
    step_seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    forwards_with_rows: dict[str, int] = field(default_factory=dict)
    first_audio_latencies: deque[float] = field(default_factory=lambda: deque(maxlen=1000))
    answers_completed: int = 0
    answers_cancelled: int = 0
    sessions_failed: int = 0


class Engine:
    """Serves sessions on one model replica (one device)."""

    def __init__(self, model: FreezeOmni, settings: EngineSettings, name: str = "replica-0") -> None:
        self.model = model
        self.settings = settings
        self.name = name
        slots = 2 * settings.max_sessions
        self.llm_cache = model.llm.new_cache(num_slots=slots, max_len=settings.llm_max_len)
        ratio = model.llm.config.hidden_size // model.decoder.config.hidden_size
        # prefix and text rows of a maximal segment (text re-tokenises to about as many tokens,
        # plus the appended full stop), the BOS/SOS pair, and the speech tokens.
        decoder_len = ratio * (2 * settings.max_segment_tokens + 8) + 2 + settings.max_speech_tokens
        self.decoder_cache = model.decoder.new_cache(num_slots=settings.max_sessions, max_len=decoder_len)
        self.runner = StepRunner(model, self.llm_cache, self.decoder_cache, settings)
        self.scheduler = Scheduler(settings)
        self.sessions: dict[str, SessionState] = {}
        self.stats = EngineStats()
        self._closed_reasons: dict[str, str] = {}
        self._commands: deque[Callable[[], None]] = deque()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"engine-{name}")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._ids = itertools.count()
        self._answer_start = answer_start_embeds(model)
        fault_injection.fail_after_steps()  # TEST-ONLY hook, read once at start
        system_len = system_prefill_embeds(model, None).shape[0]
        if settings.llm_max_len < system_len + settings.turn_reserve:
            raise ValueError(
                f"llm_max_len {settings.llm_max_len} cannot hold the system prompt and one turn "
                f"({system_len} + {settings.turn_reserve} tokens): raise it or lower max_answer_tokens"
            )
        log.info(
            "%s: %d sessions, LLM cache %d slots x %d tokens (%.1f MiB), decoder cache %d x %d",
            name,
            settings.max_sessions,
            slots,
            settings.llm_max_len,
            self.llm_cache.keys.nbytes * 2 / 2**20,
            settings.max_sessions,
            decoder_len,
        )

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
            return
        await self._submit(self._close_all)
        self._stopping = True
        self._wake.set()
        await self._task
        self._task = None
        self._executor.shutdown(wait=True)

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

    def pending_chunks(self) -> int:
        return sum(len(s.listen.pending) for s in self.sessions.values() if s.listen is not None)

    # -- API (coroutines; each becomes a command applied between steps) -------------------------
    async def open_session(self, role: str | None = None, seed: int | None = None) -> str:
        """Admit a session or raise `CapacityError`; returns its id."""
        return await self._submit(lambda: self._open(role, seed))

    async def close_session(self, session_id: str) -> None:
        await self._submit(lambda: self._close(session_id, "session closed"), missing_ok=True)

    async def set_instructions(self, session_id: str, role: str | None) -> None:
        """New system prompt; the conversation so far is kept and re-read under it at the next turn."""
        await self._submit(lambda: self._set_role(self._session(session_id), role))

    async def set_answer_defaults(self, session_id: str, options: AnswerOptions) -> None:
        """How answers the state head starts are made (text only, token cap); see `AnswerOptions`."""
        await self._submit(lambda: setattr(self._session(session_id), "answer_defaults", options))

    async def begin_listen(self, session_id: str) -> None:
        """The user started speaking: open a listen turn (a branch if the bot is speaking)."""
        await self._submit(lambda: self._begin_listen(self._session(session_id)))

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
            session = self._session(session_id)
            if session.listen is None:
                self._begin_listen(session)
            session.listen.pending.append(PendingChunk(samples, act, future))

        await self._submit(enqueue)
        return await future

    async def commit_listen(
        self, session_id: str, options: AnswerOptions | None = None
    ) -> AnswerStream | None:
        """End the listen turn and answer it (push-to-talk commit, silence timeout)."""
        return await self._submit(lambda: self._commit_when_drained(self._session(session_id), options))

    async def drop_listen(self, session_id: str) -> None:
        """End the listen turn without answering; the conversation is as if it never happened."""
        await self._submit(lambda: self._drop(self._session(session_id)))

    async def cancel_answer(self, session_id: str, reason: str = "cancelled by the client") -> None:
        await self._submit(lambda: self._cancel_answer(self._session(session_id), reason))

    async def text_turn(
        self, session_id: str, text: str, options: AnswerOptions | None = None
    ) -> AnswerStream:
        """A typed user turn: cancels any answer and listen turn, then answers the text."""
        return await self._submit(lambda: self._text_turn(self._session(session_id), text, options))

    async def respond(self, session_id: str, options: AnswerOptions | None = None) -> AnswerStream:
        """An answer with no new user input (the bot speaks first, or again), from the instructions."""
        return await self._submit(lambda: self._text_turn(self._session(session_id), None, options))

    def answer_stream(self, session_id: str) -> AnswerStream | None:
        session = self.sessions.get(session_id)
        return session.answer.stream if session is not None and session.answer is not None else None

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
                    _resolve(future, None)
                else:
                    _reject(future, error)
            except Exception as error:  # noqa: BLE001 - handed to the caller
                _reject(future, error)
            else:
                if isinstance(result, asyncio.Future):
                    result.add_done_callback(lambda f: _copy_future(f, future))
                else:
                    _resolve(future, result)

        self._commands.append(run)
        self._wake.set()
        return await future

    def _session(self, session_id: str) -> SessionState:
        session = self.sessions.get(session_id)
        if session is None:
            reason = self._closed_reasons.get(session_id, "no such session")
            raise SessionClosedError(f"session {session_id}: {reason}")
        return session

    def _open(self, role: str | None, seed: int | None) -> str:
        if len(self.sessions) >= self.settings.max_sessions:
            raise CapacityError(
                f"{self.name} is serving its maximum of {self.settings.max_sessions} sessions"
            )
        main, spare = self.llm_cache.allocate(), self.llm_cache.allocate()
        seed = (
            seed
            if seed is not None
            else (
                self.settings.seed + next(self._ids)
                if self.settings.seed is not None
                else secrets.randbits(62)
            )
        )
        session = SessionState(
            session_id=f"sess_{secrets.token_hex(8)}",
            main_slot=main,
            spare_slot=spare,
            role=role,
            sampling=self.settings.sampling,
            llm_rng=torch.Generator().manual_seed(seed),
            decoder_rng=torch.Generator().manual_seed(seed + 1),
            prefill=system_prefill_embeds(self.model, role),
        )
        self.sessions[session.session_id] = session
        return session.session_id

    def _set_role(self, session: SessionState, role: str | None) -> None:
        session.role = role
        if session.prefill is not None and self.llm_cache.lengths[session.main_slot] == 0:
            session.prefill = system_prefill_embeds(self.model, role)  # nothing fed yet
        else:
            session.role_changed = True

    def _rebuild_if_needed(self, session: SessionState) -> None:
        """Re-read the conversation under a new role, or drop the oldest turns to make room."""
        cache, settings = self.llm_cache, self.settings
        used = cache.lengths[session.main_slot] + (
            session.prefill.shape[0] if session.prefill is not None else 0
        )
        if not session.role_changed and used + settings.turn_reserve <= settings.llm_max_len:
            return
        system = system_prefill_embeds(self.model, session.role)
        history = session.history
        dropped = 0
        # Keep at most half the room history may use, so that re-reads stay rare.
        budget = (settings.llm_max_len - settings.turn_reserve - system.shape[0]) // 2
        while history and sum(e.length for e in history) > budget:
            oldest = history[0].turn
            history = [e for e in history if e.turn != oldest]
            dropped += 1
        session.history = history
        parts = [system] + [p.to(system.device, system.dtype) for e in history for p in e.parts]
        session.prefill = torch.cat(parts)
        cache.truncate(session.main_slot, 0)
        session.role_changed = False
        log.info(
            "session %s: conversation re-read (%d turns dropped, %d tokens)",
            session.session_id,
            dropped,
            session.prefill.shape[0],
        )

    def _begin_listen(self, session: SessionState) -> None:
        if session.listen is not None:
            return
        turn = session.next_turn()
        if session.answer is not None:
            self.llm_cache.copy_slot(session.main_slot, session.spare_slot)
            if session.answer.out_of_band_length is not None:  # the branch continues the conversation
                self.llm_cache.truncate(session.spare_slot, session.answer.out_of_band_length)
            session.listen = ListenTurn(
                slot=session.spare_slot,
                forked=True,
                start_length=self.llm_cache.lengths[session.spare_slot],
                history=[e.snapshot() for e in session.history],
                turn=turn,
                prefill=session.prefill,
            )
            return
        self._rebuild_if_needed(session)
        pending = session.prefill.shape[0] if session.prefill is not None else 0
        session.listen = ListenTurn(
            slot=session.main_slot,
            forked=False,
            start_length=self.llm_cache.lengths[session.main_slot] + pending,
            history=session.history,
            turn=turn,
        )

    def _end_listen(self, session: SessionState) -> ListenTurn | None:
        listen, session.listen = session.listen, None
        if listen is not None:
            for chunk in listen.pending:
                _resolve(chunk.future, ChunkDecision(ListenState.LISTEN, (0.0, 0.0, 0.0), -1, skipped=True))
        return listen

    def _drop(self, session: SessionState) -> None:
        listen = self._end_listen(session)
        if listen is None:
            return
        if listen.forked:
            self.llm_cache.truncate(session.spare_slot, 0)
        elif self.llm_cache.lengths[session.main_slot] >= listen.start_length:
            self.llm_cache.truncate(session.main_slot, listen.start_length)
        else:  # the turn's first row (which carried a pending prefill) never ran
            pass

    def _commit_when_drained(
        self, session: SessionState, options: AnswerOptions | None = None
    ) -> AnswerStream | asyncio.Future | None:
        listen = session.listen
        if listen is None:
            return None
        listen.commit_options = options
        if listen.pending:  # answer after the chunks already fed have been heard
            future = asyncio.get_running_loop().create_future()
            listen.commit_waiters.append(future)
            return future
        return self._commit(session)

    def _commit(self, session: SessionState) -> AnswerStream | None:
        listen = self._end_listen(session)
        if listen is None:
            return None
        if listen.chunks_fed == 0:
            self._drop_never_fed(session, listen)
            return None
        if listen.forked:
            self._cancel_answer(session, "interrupted by the user (barge-in)")
            session.main_slot, session.spare_slot = listen.slot, session.main_slot
            self.llm_cache.truncate(session.spare_slot, 0)
            session.prefill = listen.prefill  # the branch's own pending prefill (normally none)
        session.history = listen.history
        session.history.append(HistoryEntry(listen.turn, listen.embeds))
        options = listen.commit_options or session.answer_defaults
        stream = self._start_answer(
            session, self._answer_start, listen.turn, options, input_audio_chunks=listen.chunks_fed
        )
        for waiter in listen.commit_waiters:
            _resolve(waiter, stream)
        return stream

    def _drop_never_fed(self, session: SessionState, listen: ListenTurn) -> None:
        if listen.forked:
            self.llm_cache.truncate(session.spare_slot, 0)
        for waiter in listen.commit_waiters:
            _resolve(waiter, None)

    def _start_answer(
        self,
        session: SessionState,
        start_embeds: torch.Tensor,
        turn: int,
        options: AnswerOptions,
        input_text_tokens: int = 0,
        input_audio_chunks: int = 0,
    ) -> AnswerStream:
        queue: asyncio.Queue[AnswerEvent] = asyncio.Queue()
        answer_id = f"resp_{secrets.token_hex(8)}"
        entry = HistoryEntry(turn)
        out_of_band_length = None
        if options.out_of_band:  # answered in main, then cut back to here: nothing is kept
            pending = session.prefill.shape[0] if session.prefill is not None else 0
            out_of_band_length = self.llm_cache.lengths[session.main_slot] + pending
        else:
            session.history.append(entry)
        if options.instructions:
            start_embeds = torch.cat([instructions_embeds(self.model, options.instructions), start_embeds])
        max_tokens = self.settings.max_answer_tokens
        if options.max_tokens is not None:
            max_tokens = min(max_tokens, options.max_tokens)
        session.answer = AnswerState(
            answer_id=answer_id,
            queue=queue,
            start_embeds=start_embeds,
            detokenizer=IncrementalDetokenizer(self.model.tokenizer),
            segmenter=Segmenter(max_tokens=self.settings.max_segment_tokens),
            chunker=CodecChunker(
                self.model.server,
                self.model.codec.samples_per_token,
                trim_leading_silence=self.settings.trim_leading_silence,
            ),
            max_tokens=max_tokens,
            started_at=time.perf_counter(),
            history_entry=entry,
            speak=options.speak,
            out_of_band_length=out_of_band_length,
            input_text_tokens=input_text_tokens,
            input_audio_chunks=input_audio_chunks,
        )
        session.answer.stream = AnswerStream(answer_id, queue)
        return session.answer.stream

    def _text_turn(
        self, session: SessionState, text: str | None, options: AnswerOptions | None
    ) -> AnswerStream:
        """Answer typed text, or (`text` None) answer with no new user input."""
        if text is not None and not text.strip():
            raise ValueError("a text turn needs some text")
        self._cancel_answer(session, "replaced by a new text turn")
        self._drop(session)
        turn = session.next_turn()
        self._rebuild_if_needed(session)
        options = options or session.answer_defaults
        if text is None:
            return self._start_answer(session, self._answer_start, turn, options)
        user = text_turn_embeds(self.model, text)
        user_tokens = user.shape[0] - len(self.model.prompt_tokens.turn_opening)
        start = torch.cat([user, self._answer_start])
        return self._start_answer(session, start, turn, options, input_text_tokens=user_tokens)

    def _finish_answer(self, session: SessionState, status: AnswerStatus, reason: str = "") -> None:
        answer, session.answer = session.answer, None
        if answer is None:
            return
        if answer.segment is not None:
            self.decoder_cache.free(answer.segment.slot)
            answer.codec_ids.append(answer.segment.tokens)
        if answer.out_of_band_length is not None:
            main = session.main_slot
            self.llm_cache.truncate(main, min(answer.out_of_band_length, self.llm_cache.lengths[main]))
        stats = {
            "answer_seconds": time.perf_counter() - answer.started_at,
            "audio_seconds": answer.audio_samples / OUTPUT_RATE,
            "text_tokens": float(len(answer.token_ids)),
            "audio_tokens": float(sum(len(ids) for ids in answer.codec_ids)),
            "input_text_tokens": float(answer.input_text_tokens),
            "input_audio_chunks": float(answer.input_audio_chunks),
        }
        if answer.first_audio_at is not None:
            stats["first_audio_latency_s"] = answer.first_audio_at - answer.started_at
            self.stats.first_audio_latencies.append(stats["first_audio_latency_s"])
        if status == AnswerStatus.COMPLETED:
            self.stats.answers_completed += 1
        elif status == AnswerStatus.CANCELLED:
            self.stats.answers_cancelled += 1
        answer.queue.put_nowait(
            AnswerDone(
                status=status,
                text=answer.text,
                token_ids=tuple(answer.token_ids),
                codec_ids=tuple(tuple(ids) for ids in answer.codec_ids),
                reason=reason,
                stats=stats,
            )
        )

    def _cancel_answer(self, session: SessionState, reason: str) -> None:
        self._finish_answer(session, AnswerStatus.CANCELLED, reason)

    def _close(self, session_id: str, reason: str, status: AnswerStatus = AnswerStatus.CANCELLED) -> None:
        session = self._session(session_id)
        self._finish_answer(session, status, reason)
        listen = self._end_listen(session)
        for waiter in listen.commit_waiters if listen else []:
            _reject(waiter, SessionClosedError(f"session {session_id}: {reason}"))
        self.llm_cache.free(session.main_slot)
        self.llm_cache.free(session.spare_slot)
        session.closed = True
        del self.sessions[session_id]
        self._closed_reasons[session_id] = reason
        if len(self._closed_reasons) > 10000:
            self._closed_reasons.pop(next(iter(self._closed_reasons)))

    def _close_all(self) -> None:
        for session_id in list(self.sessions):
            self._close(session_id, "the server is shutting down")

    # -- the loop ------------------------------------------------------------------------------
    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            while self._commands:
                try:
                    self._commands.popleft()()
                except Exception:  # noqa: BLE001 - a broken command must not stop every session
                    log.exception("%s: command failed", self.name)
            if self._stopping:
                return
            plan = self.scheduler.plan(self.sessions.values(), time.perf_counter())
            if plan.empty:
                # Answers held back for being ahead of playback need a timed look.
                timeout = 0.02 if any(s.answer is not None for s in self.sessions.values()) else None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout)
                continue
            try:
                outcome = await loop.run_in_executor(self._executor, self.runner.execute, plan)
            except Exception:  # noqa: BLE001 - a bug in the step itself: fail its sessions, go on
                log.exception("%s: step failed", self.name)
                involved = {s.session_id: s for s in plan.listen + plan.answer + plan.speech + plan.codec}
                outcome = StepOutcome(failures=[(s, "internal error") for s in involved.values()])
            try:
                self._apply(outcome)
            except Exception:  # noqa: BLE001
                log.exception("%s: delivering a step's outcome failed", self.name)
            fault_injection.raise_if_due(self.stats.steps)  # TEST-ONLY hook; a no-op unless set

    def _apply(self, outcome: StepOutcome) -> None:
        self.stats.steps += 1
        self.stats.step_seconds += outcome.seconds
        for stage, rows in outcome.batch_sizes.items():
            if rows:
                self.stats.rows[stage] = self.stats.rows.get(stage, 0) + rows
                self.stats.forwards_with_rows[stage] = self.stats.forwards_with_rows.get(stage, 0) + 1
        failed = {s.session_id for s, _ in outcome.failures}
        for session, message in outcome.failures:
            if session.session_id in self.sessions:
                self.stats.sessions_failed += 1
                self._close(session.session_id, f"failed: {message}", AnswerStatus.FAILED)
        for session, answer, event in outcome.events:
            if session.session_id not in failed and session.answer is answer:
                answer.queue.put_nowait(event)
        for session, chunk, decision in outcome.decisions:
            if session.session_id in failed:
                continue
            # The verdict is acted on even if its caller has stopped waiting (a client that left).
            _resolve(chunk.future, self._act(session, chunk, decision))
        for session in list(self.sessions.values()):
            if session.answer is not None and session.answer.speech_done:
                self._finish_answer(session, AnswerStatus.COMPLETED)
            listen = session.listen
            if listen is not None and not listen.pending and listen.commit_waiters:
                self._commit(session)

    def _act(self, session: SessionState, chunk: PendingChunk, decision: ChunkDecision) -> ChunkDecision:
        listen = session.listen
        too_long = listen is not None and listen.chunks_fed >= self.settings.max_turn_chunks
        if not chunk.act and not too_long:
            return decision
        if decision.state == ListenState.ANSWER or too_long:
            stream = self._commit(session)
            return replace(decision, answer_id=stream.answer_id if stream else None, turn_ended=True)
        if decision.state == ListenState.IGNORE:
            self._drop(session)
            return replace(decision, turn_ended=True)
        return decision


def _resolve(future: asyncio.Future, result: Any) -> None:
    """Set a result unless the waiter has gone (cancelled) or it was already set."""
    if not future.done():
        future.set_result(result)


def _reject(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def _copy_future(source: asyncio.Future, target: asyncio.Future) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
