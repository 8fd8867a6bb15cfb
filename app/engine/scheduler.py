"""The scheduler: the one owner of every session's engine state (cache slots, listen branch, answer), and
the policy of each step.

Which turn is open, and when the state head may end it, is the session's turn taking
(`app.sessions.turn_taking`): it feeds chunks with `act` set only where the head may decide. On those the
scheduler carries the verdict out at once, between steps (no round trip through the session), and
reports what it did in the `ChunkDecision` (`turn_ended`, and the answer `stream` it started).

Engine state transitions live here and nowhere else: a session opens and closes, a listen turn begins (on the
session's main slot, or as a branch forked from it while the bot speaks), is dropped ("ignore") or
committed ("answer", which cancels a running answer: the user took the turn), an answer starts,
finishes or is cancelled with a typed `CancelCause`, and the conversation is cut to what the user
heard. Callers (the engine's API, as commands between steps) ask for transitions; the state head's
verdicts come back from the runner as data and are acted on in `apply`.

Each step's plan: every listening session with a chunk waiting is heard (listening must keep real
time). Every answer generates text each step. Speech decoding is skipped for an answer whose audio
runs more than `max_audio_ahead_s` ahead of playback, so compute goes where it is needed and a
barge-in has little audio to throw away. Below that, an answer gets as many codec tokens in a step as
keep it at the pace of playback (recent step cadence / 25 ms, up to `speech_tokens_per_step`), one
more if it is behind or still owes its first audio (those go first), and one if it is comfortably ahead.
An answer also gets enough tokens to finish its next codec window (audio comes a window at a time)
before its audio runs out. When even the most tokens cannot keep that pace (an overloaded step), the
tokens go to the answers owing first audio or about to run dry, and answers that can wait a few steps wait. A spoken answer
owing its first speech segment gets `first_text_tokens_per_step` text tokens (LLM rounds) a step.
Several tokens in one step change when tokens are made, never which: each comes from the session's own
decoder state and generator, in order. The runner splits each stage into forwards of `max_batch` rows.

Turn taking, as in the published server but without its copies:
- a listen turn on a quiet session writes into the session's main cache slot; if the state head
  says "ignore" it is dropped by truncating back (no copy at all);
- a listen turn while the bot speaks forks main into the session's spare slot once; "answer"
  cancels the running answer and the branch becomes main, "ignore" drops the branch.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import torch

from app.engine.errors import CapacityError, SessionClosedError, TurnTooLongError
from app.engine.events import (
    AnswerDone,
    AnswerEvent,
    AnswerOptions,
    AnswerStatus,
    AnswerStream,
    CancelCause,
    ChunkDecision,
)
from app.engine.futures import reject, resolve
from app.engine.settings import EngineSettings
from app.engine.slots import SlotOwner
from app.engine.state import (
    AnswerPhase,
    AnswerState,
    HistoryEntry,
    ListenTurn,
    PendingChunk,
    SessionState,
)
from app.model import (
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
# Longer gaps between speech steps are idle time (answers held back), not the pace of a busy engine.
MAX_CADENCE_S = 0.2
# In an overloaded step, an answer that could wait this many steps and still finish its next codec window
# in time gets no codec tokens.
OVERLOAD_HOLD_STEPS = 2.0
# Audio an answer should still have when its next codec window is ready: the decode, the delivery.
DRY_MARGIN_S = 0.1


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
    recent_step_s: float = 0.0  # moving mean of the time from one speech step's start to the next's
    paced_steps: int = 0
    recent_llm_share: float = 0.0  # moving mean of one LLM forward's share of a step that ran the LLM
    llm_steps: int = 0

    def record_step(
        self,
        seconds: float,
        cadence_s: float | None = None,
        weight: float = 0.1,
        llm_forward_s: float = 0.0,
    ) -> None:
        """A step took `seconds`; `cadence_s`: time since the previous step began, when both made speech;
        `llm_forward_s`: its first LLM round's time (0: it ran no LLM)."""
        self.steps += 1
        self.step_seconds += seconds
        if llm_forward_s > 0 and seconds > 0:
            self.llm_steps += 1
            step = max(weight, 1.0 / self.llm_steps)
            self.recent_llm_share += step * (min(llm_forward_s / seconds, 1.0) - self.recent_llm_share)
        if cadence_s is not None:
            self.paced_steps += 1
            step = max(weight, 1.0 / self.paced_steps)
            self.recent_step_s += step * (min(cadence_s, MAX_CADENCE_S) - self.recent_step_s)


@dataclass
class StepPlan:
    """The sessions taking part in each stage of one step."""

    listen: list[SessionState] = field(default_factory=list)
    answer: list[SessionState] = field(default_factory=list)
    speech: list[SessionState] = field(default_factory=list)
    codec: list[SessionState] = field(default_factory=list)
    speech_tokens: dict[str, int] = field(default_factory=dict)  # session id -> codec tokens this step
    text_tokens: dict[str, int] = field(default_factory=dict)  # session id -> text tokens (LLM rounds)

    @property
    def empty(self) -> bool:
        codec_work = any(not s.answer.chunker.idle for s in self.codec if s.answer is not None)
        return not (self.listen or self.answer or self.speech or codec_work)


class Scheduler:
    """Owns the sessions of one replica: their state, its transitions, and each step's plan."""

    def __init__(
        self, model: FreezeOmni, settings: EngineSettings, slots: SlotOwner, stats: EngineStats, name: str
    ) -> None:
        self.model = model
        self.settings = settings
        self.slots = slots
        self.stats = stats
        self.token_period_s = model.codec.samples_per_token / OUTPUT_RATE  # audio of one codec token
        self.name = name
        self.sessions: dict[str, SessionState] = {}
        self._closed_reasons: dict[str, str] = {}
        # Why a session closed, for a call that races its close (it comes moments later): a few times
        # the sessions that can be open at once is plenty. (It was 10 000: a table that filled over the
        # first thousands of sessions, its small entries scattered over the heap.)
        self._closed_reasons_kept = max(64, 4 * settings.max_sessions)
        self._ids = itertools.count()
        self._answer_start = answer_start_embeds(model)
        system_len = system_prefill_embeds(model, None).shape[0]
        if settings.llm_max_len < system_len + settings.turn_reserve:
            raise ValueError(
                f"llm_max_len {settings.llm_max_len} cannot hold the system prompt and one turn "
                f"({system_len} + {settings.turn_reserve} tokens): raise it or lower max_answer_tokens"
            )

    def session(self, session_id: str) -> SessionState:
        session = self.sessions.get(session_id)
        if session is None:
            reason = self._closed_reasons.get(session_id, "no such session")
            raise SessionClosedError(f"session {session_id}: {reason}")
        return session

    def open_session(self, role: str | None, seed: int | None) -> str:
        if len(self.sessions) >= self.settings.max_sessions:
            raise CapacityError(
                f"{self.name} is serving its maximum of {self.settings.max_sessions} sessions"
            )
        main, spare = self.slots.open_session()
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

    def set_role(self, session: SessionState, role: str | None) -> None:
        session.role = role
        if session.prefill is not None and self.slots.length(session.main_slot) == 0:
            session.prefill = system_prefill_embeds(self.model, role)  # nothing fed yet
        else:
            session.role_changed = True

    def _rebuild_if_needed(self, session: SessionState, turn_room: int = 0) -> None:
        """Re-read the conversation under a new role, or drop the oldest turns to make room (for a
        maximal turn and answer, or `turn_room` tokens if more)."""
        settings = self.settings
        used = self.slots.length(session.main_slot) + (
            session.prefill.shape[0] if session.prefill is not None else 0
        )
        room = max(settings.turn_reserve, turn_room)
        fits = used + room <= settings.llm_max_len
        if not session.role_changed and not session.history_cut and fits:
            return
        system = system_prefill_embeds(self.model, session.role)
        history = session.history
        dropped = 0
        # Keep at most half the room history may use, so that re-reads stay rare.
        budget = (settings.llm_max_len - room - system.shape[0]) // 2
        while history and sum(e.length for e in history) > budget:
            oldest = history[0].exchange
            history = [e for e in history if e.exchange != oldest]
            dropped += 1
        session.history = history
        parts = [system] + [p.to(system.device, system.dtype) for e in history for p in e.parts]
        session.prefill = torch.cat(parts)
        self.slots.truncate(session.main_slot, 0)
        session.role_changed = False
        session.history_cut = False
        log.info(
            "session %s: conversation re-read (%d turns dropped, %d tokens)",
            session.session_id,
            dropped,
            session.prefill.shape[0],
        )

    def begin_listen(self, session: SessionState) -> None:
        if session.listen is not None:
            return
        exchange = session.next_exchange()
        if session.answer is not None:
            self.slots.fork(session.main_slot, session.spare_slot)
            if session.answer.out_of_band_length is not None:  # the branch continues the conversation
                self.slots.truncate(session.spare_slot, session.answer.out_of_band_length)
            session.listen = ListenTurn(
                slot=session.spare_slot,
                forked=True,
                start_length=self.slots.length(session.spare_slot),
                history=[e.snapshot() for e in session.history],
                exchange=exchange,
                prefill=session.prefill,
            )
            return
        self._rebuild_if_needed(session)
        pending = session.prefill.shape[0] if session.prefill is not None else 0
        session.listen = ListenTurn(
            slot=session.main_slot,
            forked=False,
            start_length=self.slots.length(session.main_slot) + pending,
            history=session.history,
            exchange=exchange,
        )

    def _end_listen(self, session: SessionState) -> ListenTurn | None:
        listen, session.listen = session.listen, None
        if listen is not None:
            for chunk in listen.pending:
                resolve(chunk.future, ChunkDecision(ListenState.LISTEN, (0.0, 0.0, 0.0), -1, skipped=True))
        return listen

    def drop_listen(self, session: SessionState) -> None:
        listen = self._end_listen(session)
        if listen is None:
            return
        if listen.forked:
            self.slots.truncate(session.spare_slot, 0)
        elif self.slots.length(session.main_slot) >= listen.start_length:
            self.slots.truncate(session.main_slot, listen.start_length)
        else:  # the turn's first row (which carried a pending prefill) never ran
            pass

    def commit_when_drained(
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
        cut: tuple[str, str] | None = None
        if listen.forked:
            answer = session.answer
            if answer is not None and answer.heard_text is not None:
                cut = (answer.answer_id, answer.heard_text)
            self.cancel_answer(session, "the user took the turn", CancelCause.TURN_DETECTED)
            session.main_slot, session.spare_slot = listen.slot, session.main_slot
            self.slots.truncate(session.spare_slot, 0)
            session.prefill = listen.prefill  # the branch's own pending prefill (normally none)
        session.history = listen.history
        session.history.append(HistoryEntry(listen.exchange, listen.embeds))
        if cut is not None:
            self.cut_history(session, *cut)
        if session.history_cut:
            # The answer the user cut short is still whole in the cache: read the conversation again,
            # with only what was heard of it, before answering.
            self._rebuild_if_needed(session)
        options = listen.commit_options or session.answer_defaults
        stream = self._start_answer(
            session, self._answer_start, listen.exchange, options, input_audio_chunks=listen.chunks_fed
        )
        for waiter in listen.commit_waiters:
            resolve(waiter, stream)
        return stream

    def _drop_never_fed(self, session: SessionState, listen: ListenTurn) -> None:
        if listen.forked:
            self.slots.truncate(session.spare_slot, 0)
        for waiter in listen.commit_waiters:
            resolve(waiter, None)

    def _start_answer(
        self,
        session: SessionState,
        start_embeds: torch.Tensor,
        exchange: int,
        options: AnswerOptions,
        input_text_tokens: int = 0,
        input_audio_chunks: int = 0,
    ) -> AnswerStream:
        queue: asyncio.Queue[AnswerEvent] = asyncio.Queue()
        answer_id = f"resp_{secrets.token_hex(8)}"
        entry = HistoryEntry(exchange, answer_id=answer_id)
        out_of_band_length = None
        if options.out_of_band:  # answered in main, then cut back to here: nothing is kept
            pending = session.prefill.shape[0] if session.prefill is not None else 0
            out_of_band_length = self.slots.length(session.main_slot) + pending
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

    def text_turn(
        self, session: SessionState, text: str | None, options: AnswerOptions | None = None
    ) -> AnswerStream:
        """Answer typed text, or (`text` None) answer with no new user input."""
        if text is not None and not text.strip():
            raise ValueError("a text turn needs some text")
        user = text_turn_embeds(self.model, text) if text is not None else None
        turn_room = 0
        if user is not None:
            # Checked before anything changes, so a refused turn leaves the session as it was.
            turn_room = user.shape[0] + self._answer_start.shape[0] + self.settings.max_answer_tokens
            system_len = system_prefill_embeds(self.model, session.role).shape[0]
            if system_len + turn_room > self.settings.llm_max_len:
                fixed = turn_room - user.shape[0] + len(self.model.prompt_tokens.turn_opening)
                raise TurnTooLongError(
                    user.shape[0] - len(self.model.prompt_tokens.turn_opening),
                    self.settings.llm_max_len - system_len - fixed,
                )
        self.cancel_answer(session, "replaced by a new text turn", CancelCause.REPLACED)
        self.drop_listen(session)
        exchange = session.next_exchange()
        self._rebuild_if_needed(session, turn_room)
        options = options or session.answer_defaults
        if user is None:
            return self._start_answer(session, self._answer_start, exchange, options)
        user_tokens = user.shape[0] - len(self.model.prompt_tokens.turn_opening)
        start = torch.cat([user, self._answer_start])
        return self._start_answer(session, start, exchange, options, input_text_tokens=user_tokens)

    def _finish_answer(
        self,
        session: SessionState,
        status: AnswerStatus,
        reason: str = "",
        cause: CancelCause | None = None,
    ) -> None:
        answer, session.answer = session.answer, None
        if answer is None:
            return
        if answer.segment is not None:
            self.slots.free_decoder(answer.segment.slot)
            answer.codec_ids.append(answer.segment.tokens)
        if answer.out_of_band_length is not None:
            main = session.main_slot
            self.slots.truncate(main, min(answer.out_of_band_length, self.slots.length(main)))
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
                cause=cause if status == AnswerStatus.CANCELLED else None,
            )
        )

    def cancel_answer(
        self, session: SessionState, reason: str, cause: CancelCause = CancelCause.CLIENT
    ) -> None:
        self._finish_answer(session, AnswerStatus.CANCELLED, reason, cause)

    def cancel_heard(
        self, session: SessionState, reason: str, cause: CancelCause, heard_text: str | None
    ) -> None:
        """Cancel the running answer; with `heard_text`, the conversation keeps only that much of it."""
        answer_id = session.answer.answer_id if session.answer is not None else None
        self.cancel_answer(session, reason, cause)
        if answer_id is not None and heard_text is not None:
            self.cut_history(session, answer_id, heard_text)

    def note_heard(self, session_id: str, answer_id: str, heard_text: str | None) -> None:
        """What the user has heard of a running answer, should it be cut now (None: it goes on)."""
        session = self.sessions.get(session_id)
        if session is not None and session.answer is not None and session.answer.answer_id == answer_id:
            session.answer.heard_text = heard_text

    def cut_history(self, session: SessionState, answer_id: str, heard_text: str) -> None:
        """Keep, of answer `answer_id`, only the tokens whose text the user heard (`heard_text`, a prefix
        of it as it was sent), in the session's history and in an open branch's copy of it."""
        histories = [session.history]
        if session.listen is not None and session.listen.history is not session.history:
            histories.append(session.listen.history)
        for history in histories:
            for entry in history:
                if entry.answer_id != answer_id:
                    continue
                keep = self._tokens_heard(entry.token_ids, heard_text)
                if keep < len(entry.token_ids):
                    entry.cut_to_tokens(keep)
                    session.history_cut = True

    def _tokens_heard(self, token_ids: list[int], heard_text: str) -> int:
        """How many leading tokens spell no more than `heard_text` (compared without whitespace)."""
        heard = len("".join(heard_text.split()))
        decode = self.model.tokenizer.decode
        keep = 0
        for count in range(1, len(token_ids) + 1):
            if len("".join(decode(token_ids[:count]).split())) > heard:
                break
            keep = count
        return keep

    def close_session(
        self, session_id: str, reason: str, status: AnswerStatus = AnswerStatus.CANCELLED
    ) -> None:
        session = self.session(session_id)
        self._finish_answer(session, status, reason, CancelCause.CLOSED)
        listen = self._end_listen(session)
        for waiter in listen.commit_waiters if listen else []:
            reject(waiter, SessionClosedError(f"session {session_id}: {reason}"))
        self.slots.close_session(session.main_slot, session.spare_slot)
        session.closed = True
        del self.sessions[session_id]
        self._closed_reasons[session_id] = reason
        if len(self._closed_reasons) > self._closed_reasons_kept:
            self._closed_reasons.pop(next(iter(self._closed_reasons)))

    def close_all(self) -> None:
        for session_id in list(self.sessions):
            self.close_session(session_id, "the server is shutting down")

    def _act(self, session: SessionState, chunk: PendingChunk, decision: ChunkDecision) -> ChunkDecision:
        listen = session.listen
        too_long = listen is not None and listen.chunks_fed >= self.settings.max_turn_chunks
        if not chunk.act and not too_long:
            return decision
        if decision.state == ListenState.ANSWER or too_long:
            stream = self._commit(session)
            return replace(
                decision, answer_id=stream.answer_id if stream else None, stream=stream, turn_ended=True
            )
        if decision.state == ListenState.IGNORE:
            self.drop_listen(session)
            return replace(decision, turn_ended=True)
        return decision

    # -- a step's outcome ---------------------------------------------------------------------------------
    def apply(self, outcome) -> None:
        """Act on a step's results: failures, answer events, the state head's verdicts, finished answers."""
        failed = {s.session_id for s, _ in outcome.failures}
        for session, message in outcome.failures:
            if session.session_id in self.sessions:
                self.stats.sessions_failed += 1
                self.close_session(session.session_id, f"failed: {message}", AnswerStatus.FAILED)
        for session, answer, event in outcome.events:
            if session.session_id not in failed and session.answer is answer:
                answer.queue.put_nowait(event)
        for session, chunk, decision in outcome.decisions:
            if session.session_id in failed:
                continue
            # The verdict is acted on even if its caller has stopped waiting (a client that left).
            resolve(chunk.future, self._act(session, chunk, decision))
        for session in list(self.sessions.values()):
            if session.answer is not None and session.answer.speech_done:
                self._finish_answer(session, AnswerStatus.COMPLETED)
            listen = session.listen
            if listen is not None and not listen.pending and listen.commit_waiters:
                self._commit(session)

    # -- the plan of a step -----------------------------------------------------------------------------
    def plan(self, now: float, sessions: Iterable[SessionState] | None = None) -> StepPlan:
        """Which sessions take part in each stage of the next step."""
        plan = StepPlan()
        sessions = self.sessions.values() if sessions is None else sessions
        speaking: list[tuple[float, SessionState]] = []
        for session in sessions:
            if session.closed or session.error:
                continue
            if session.listen is not None and session.listen.pending:
                plan.listen.append(session)
            answer = session.answer
            if answer is None:
                continue
            if answer.phase == AnswerPhase.START or (
                answer.phase == AnswerPhase.TEXT and answer.last_token is not None
            ):
                plan.answer.append(session)
                plan.text_tokens[session.session_id] = self._text_tokens(answer)
            has_speech_work = answer.segment is not None or bool(answer.pending_segments)
            ahead = answer.audio_ahead_s(now, OUTPUT_RATE)
            if has_speech_work and ahead <= self.settings.max_audio_ahead_s:
                speaking.append((ahead, session))
            # Windows may become ready during this very step (stage 3 feeds stage 4).
            plan.codec.append(session)
        # Answers owing their first audio go first, then the least ahead of their playback.
        speaking.sort(key=lambda pair: (pair[1].answer.first_audio_at is not None, pair[0]))
        tokens = {s.session_id: self._speech_tokens(s.answer, ahead) for ahead, s in speaking}
        plan.speech = [s for _, s in speaking if tokens[s.session_id] > 0]
        plan.speech_tokens = {session_id: count for session_id, count in tokens.items() if count > 0}
        return plan

    def _text_tokens(self, answer: AnswerState) -> int:
        """Text tokens (LLM rounds) this answer gets in the next step: `first_text_tokens_per_step` while
        a spoken answer owes its first speech segment, else one.

        First audio waits for the first segment's text (a punctuation mark, several tokens) before the
        speech decoder can start; one text token a step made every step's length count several times
        in first audio, the more so the slower the steps. The extra rounds carry only these rows: the
        answers already speaking keep one text token a step, which keeps well ahead of their speech.
        Only while an LLM forward is at most `first_text_max_llm_share` of a step (measured): three
        rounds then cut the first segment's wait to about half for half a step more.
        """
        owes_first_segment = answer.speak and (
            answer.segment is None and not answer.pending_segments and not answer.codec_ids
        )
        # An LLM forward that is most of a step (a big LLM, a small rest) makes each extra round nearly
        # a step: the first segment comes little sooner and every other session waits for it.
        most_share = self.settings.first_text_max_llm_share
        affordable = most_share > 0 and self.stats.recent_llm_share <= most_share
        if owes_first_segment and affordable:
            return max(1, self.settings.first_text_tokens_per_step)
        return 1

    def _speech_tokens(self, answer: AnswerState, ahead: float) -> int:
        """Codec tokens this answer gets in the next step.

        One token is 25 ms of audio, so an answer keeps pace when it gets (recent step cadence / 25 ms)
        tokens a step. An answer still owing its first audio (its first codec window needs 30 tokens
        before anything plays) or already behind its playback gets one more than its pace; one near its
        playback gets its pace; one comfortably ahead (half the look-ahead) gets one. But audio comes
        out a codec window at a time (every 20 tokens in a reply's first segment, 40 later): an answer
        also gets enough to finish its next window before the audio it has runs out (`_tokens_due`);
        at the bare pace a 20-token window took exactly the half second of audio the previous one gave,
        and the player ran dry. Never more than `speech_tokens_per_step`: each token is a decoder round
        that lengthens the step while the LLM still writes one text token per step (giving every answer
        the most, the first version of this, made every answer's first audio later).
        """
        most = self.settings.speech_tokens_per_step
        recent = self.stats.recent_step_s
        cadence = max(recent, self.token_period_s)
        pace = math.ceil(recent / self.token_period_s - 1e-9)
        playing = answer.first_audio_at is not None
        if pace > most and self.settings.overload_priority:
            return self._overloaded_speech_tokens(answer, ahead, cadence)
        if playing and ahead >= self.settings.max_audio_ahead_s / 2:
            base = 1
        else:
            base = pace + (1 if not playing or ahead < 0 else 0)
        due = self._tokens_due(answer, ahead, cadence) if playing and self.settings.window_deadline else 0
        return max(1, min(most, max(base, due)))

    def _tokens_due(self, answer: AnswerState, ahead: float, cadence: float) -> int:
        """Tokens a step that finish the answer's next codec window before its audio runs out (less a
        margin for the decode and the delivery): all it needs if that is within a step."""
        need = answer.chunker.tokens_to_next_window()
        steps_left = (ahead - DRY_MARGIN_S) / cadence
        return need if steps_left < 1 else math.ceil(need / steps_left)

    def _overloaded_speech_tokens(self, answer: AnswerState, ahead: float, cadence: float) -> int:
        """Codec tokens in an overloaded step: one whose cadence even the most tokens a step cannot keep
        every answer at the pace of playback.

        Then the tokens are scarce, and spreading them (the most to every answer) made each step longer
        still and everyone's first audio later (N=16, no admission: p50 3.7 -> 6.7 s). Instead: answers
        owing their first audio, or which must start now to finish their next codec window at the most a
        step before their audio runs out, get the most; one that could still wait `OVERLOAD_HOLD_STEPS`
        steps gets none this step; the others one, so they keep moving.
        """
        most = self.settings.speech_tokens_per_step
        if answer.first_audio_at is None:
            return most
        steps_left = (ahead - DRY_MARGIN_S) / cadence
        spare_steps = steps_left - answer.chunker.tokens_to_next_window() / most
        if spare_steps < 1:
            return most
        if spare_steps >= OVERLOAD_HOLD_STEPS:
            return 0
        return 1
