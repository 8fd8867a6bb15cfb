"""The mechanism of a step: turns a plan into batched forwards, stage by stage, on one replica.

Runs in the replica's worker thread. It mutates only the session states named in the plan (the
engine loop does not touch them while a step runs) and returns what happened as data.

Stages, each one batched across sessions and split into forwards of at most `max_batch` rows:
1. encoder + adapter over every planned 160 ms chunk;
2. the LLM over mixed rows: listen rows, answer-opening rows and decode rows; then more rounds of decode
   rows for the answers the plan gives several text tokens (those owing their first speech segment);
3. the speech decoder over new segments' conditioning rows and decode rows;
4. the codec over every ready token window, through the codec lane (`codec_lane.py`): inside the step
   by default, or (`codec_thread`) on its own thread while the next steps run, its audio fed to the
   chunkers at the start and end of a step (a step with nothing else to do waits briefly for it).
If a batched forward raises, its rows are retried one by one so that only the guilty session fails.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

from app.engine.codec_lane import CodecBatch, CodecLane
from app.engine.events import AnswerEvent, AudioDelta, ChunkDecision, SegmentText, TextDelta
from app.engine.scheduler import StepPlan
from app.engine.settings import EngineSettings
from app.engine.slots import SlotOwner
from app.engine.state import AnswerPhase, AnswerState, PendingChunk, SessionState, SpeechSegment
from app.model import (
    OUTPUT_RATE,
    FreezeOmni,
    LLMRow,
    Segment,
    SegmentInput,
    decide_state,
    sample_llm_token,
    sample_top_k,
    segment_condition,
    turn_opening_embeds,
)

log = logging.getLogger(__name__)
Item = TypeVar("Item")
# A step with no other work waits this long for a running codec decode rather than spin.
CODEC_IDLE_WAIT_S = 0.01


@dataclass
class StepOutcome:
    """What one step produced, for the engine loop to deliver."""

    decisions: list[tuple[SessionState, PendingChunk, ChunkDecision]] = field(default_factory=list)
    events: list[tuple[SessionState, AnswerState, AnswerEvent]] = field(default_factory=list)
    failures: list[tuple[SessionState, str]] = field(default_factory=list)
    batch_sizes: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    codec_seconds: float = 0.0  # wall time of the codec decodes delivered in this step (on their lane)
    codec_audio_seconds: float = 0.0  # answer audio those decodes give (overlaps not counted)
    llm_forward_seconds: float = 0.0  # wall time of the step's first LLM round (0: no LLM work)
    speaking_sessions: int = 0  # answers that made codec tokens in this step


def batches(items: Sequence[Item], size: int) -> list[Sequence[Item]]:
    """Split into runs of at most `size` items."""
    return [items[i : i + size] for i in range(0, len(items), max(size, 1))]


class StepRunner:
    """Executes plans on one model replica and its caches."""

    def __init__(self, model: FreezeOmni, slots: SlotOwner, settings: EngineSettings) -> None:
        self.model = model
        self.slots = slots
        self.llm_cache = slots.llm_cache
        self.decoder_cache = slots.decoder_cache
        self.settings = settings
        self._opening = turn_opening_embeds(model)
        self._top_k = settings.decoder_top_k or model.server.decoder_top_k
        self.codec_lane = CodecLane(
            model.codec,
            settings.max_batch,
            threaded=settings.codec_thread,
            max_windows=settings.codec_max_windows if settings.codec_thread else 0,
        )

    @torch.inference_mode()
    def execute(self, plan: StepPlan) -> StepOutcome:
        started = time.perf_counter()
        outcome = StepOutcome()
        failed: set[str] = set()
        outcome.batch_sizes["codec"] = 0
        self._deliver_audio(self.codec_lane.collect(), outcome, failed)
        vectors = self._encode(plan.listen, outcome, failed)
        self._llm(plan, vectors, outcome, failed)
        self._speech_rounds(plan, outcome, failed)
        self._codec(plan.codec, outcome, failed)
        worked = any(outcome.batch_sizes.get(stage) for stage in ("encoder", "llm", "decoder", "codec"))
        if not worked and self.codec_lane.busy:
            self._deliver_audio(self.codec_lane.collect(wait_s=CODEC_IDLE_WAIT_S), outcome, failed)
        outcome.seconds = time.perf_counter() - started
        return outcome

    def close(self) -> None:
        """Stop the codec lane's thread."""
        self.codec_lane.close()

    def _isolated(
        self,
        items: Sequence[Item],
        session_of: Callable[[Item], SessionState],
        prepare: Callable[[Item], object],
        forward: Callable[[list[object]], list[object]],
        finish: Callable[[Item, object], None],
        outcome: StepOutcome,
        failed: set[str],
    ) -> int:
        """Prepare each item once, run forwards in batches, then finish each item.

        A failing batch is retried item by item, so only the guilty session fails; `forward` must
        therefore be safe to retry (it may not consume per-session state). Returns the items run.
        """
        prepared: list[tuple[Item, object]] = []
        for item in items:
            if session_of(item).session_id in failed:
                continue
            try:
                prepared.append((item, prepare(item)))
            except Exception:  # noqa: BLE001 - one session's bad state fails that session
                self._fail(session_of(item), outcome, failed)
        for batch in batches(prepared, self.settings.max_batch):
            try:
                results = list(zip(batch, forward([inputs for _, inputs in batch]), strict=True))
            except Exception:  # noqa: BLE001
                results = []
                for pair in batch:
                    try:
                        results.append((pair, forward([pair[1]])[0]))
                    except Exception:  # noqa: BLE001
                        self._fail(session_of(pair[0]), outcome, failed)
            for (item, _), result in results:
                try:
                    finish(item, result)
                except Exception:  # noqa: BLE001
                    self._fail(session_of(item), outcome, failed)
        return len(prepared)

    def _fail(self, session: SessionState, outcome: StepOutcome, failed: set[str]) -> None:
        log.exception("session %s failed during a step", session.session_id)
        failed.add(session.session_id)
        outcome.failures.append((session, "internal error while processing this session"))

    # -- stage 1: encoder + adapter ------------------------------------------------------------
    def _encode(
        self, sessions: list[SessionState], outcome: StepOutcome, failed: set[str]
    ) -> dict[str, torch.Tensor]:
        vectors: dict[str, torch.Tensor] = {}
        audio = self.model.audio

        def prepare(session: SessionState) -> tuple:
            turn = session.listen
            feats = torch.from_numpy(turn.fbank.accept_chunk(turn.pending[0].samples))
            return feats, turn

        def forward(inputs: list) -> list:
            feats = torch.stack([f for f, _ in inputs]).to(self.model.device)
            turns = [t for _, t in inputs]
            out, caches = audio.encode_chunks(
                feats, [t.encoder_state for t in turns], [t.adapter_cache for t in turns]
            )
            return list(zip(out, caches, strict=True))

        def finish(session: SessionState, result: tuple) -> None:
            session.listen.adapter_cache = result[1]
            vectors[session.session_id] = result[0]

        outcome.batch_sizes["encoder"] = self._isolated(
            sessions, lambda s: s, prepare, forward, finish, outcome, failed
        )
        return vectors

    # -- stage 2: the LLM ---------------------------------------------------------------------
    def _llm(
        self, plan: StepPlan, vectors: dict[str, torch.Tensor], outcome: StepOutcome, failed: set[str]
    ) -> None:
        model = self.model
        work: list[tuple[SessionState, str]] = [(s, "listen") for s in plan.listen if s.session_id in vectors]
        work += [(s, "answer") for s in plan.answer]

        def take_prefill(session: SessionState) -> list[torch.Tensor]:
            parts = [session.prefill] if session.prefill is not None else []
            session.prefill = None
            return parts

        def prepare(item: tuple[SessionState, str]) -> LLMRow:
            session, kind = item
            if kind == "listen":
                turn = session.listen
                audio_vectors = vectors[session.session_id].to(model.dtype)
                fed = torch.cat([self._opening, audio_vectors]) if turn.chunks_fed == 0 else audio_vectors
                turn.embeds.append(fed.cpu())
                if turn.forked:
                    parts = [turn.prefill] if turn.prefill is not None else []
                    turn.prefill = None
                else:
                    parts = take_prefill(session)
                return LLMRow(turn.slot, torch.cat([*parts, fed]))
            answer = session.answer
            parts = take_prefill(session)
            fed = (
                answer.start_embeds
                if answer.phase == AnswerPhase.START
                else model.llm.embed([answer.last_token])
            )
            answer.history_entry.parts.append(fed.cpu())
            if answer.phase != AnswerPhase.START:
                answer.history_entry.token_ids.append(answer.last_token)
            return LLMRow(session.main_slot, torch.cat([*parts, fed]), want_logits=True)

        def forward(rows: list) -> list:
            out = model.llm.forward_rows(rows, self.llm_cache)
            logits = iter(out.logits) if out.logits is not None else iter(())
            return [(out.hidden[i], next(logits) if row.want_logits else None) for i, row in enumerate(rows)]

        def finish(item: tuple[SessionState, str], result: tuple) -> None:
            session, kind = item
            hidden, logits = result
            if kind == "listen":
                self._after_listen(session, hidden, outcome)
            else:
                self._after_answer_step(session, hidden, logits, outcome)

        began = time.perf_counter()
        rows = self._isolated(work, lambda item: item[0], prepare, forward, finish, outcome, failed)
        if rows:
            outcome.llm_forward_seconds = time.perf_counter() - began
        # More rounds for the answers given several text tokens (those owing their first speech segment),
        # while they still do: a segment ready in this step goes to this step's speech decoder.
        for round_index in range(1, max(plan.text_tokens.values(), default=1)):
            more = [
                (s, "answer")
                for s in plan.answer
                if plan.text_tokens.get(s.session_id, 1) > round_index
                and s.session_id not in failed
                and s.answer is not None
                and s.answer.phase == AnswerPhase.TEXT
                and s.answer.last_token is not None
                and s.answer.segment is None
                and not s.answer.pending_segments
            ]
            if not more:
                break
            rows += self._isolated(more, lambda item: item[0], prepare, forward, finish, outcome, failed)
        outcome.batch_sizes["llm"] = rows

    def _after_listen(self, session: SessionState, hidden: torch.Tensor, outcome: StepOutcome) -> None:
        turn = session.listen
        decision = decide_state(self.model.audio.state_logits(hidden), self.settings.state_threshold)
        chunk = turn.pending.popleft()
        outcome.decisions.append(
            (session, chunk, ChunkDecision(decision.state, decision.probs, chunk_index=turn.chunks_fed))
        )
        turn.chunks_fed += 1

    def _after_answer_step(
        self, session: SessionState, hidden: torch.Tensor, logits: torch.Tensor, outcome: StepOutcome
    ) -> None:
        answer = session.answer
        answer.phase = AnswerPhase.TEXT
        token = sample_llm_token(logits, session.sampling, session.llm_rng)
        if token == self.model.eod_id or len(answer.token_ids) >= answer.max_tokens:
            # The published model never feeds the <|im_end|> it samples: the next turn opens with it.
            answer.last_token = None
            answer.phase = AnswerPhase.SPEECH_ONLY
            if last := answer.segmenter.flush():
                self._segment_ready(session, answer, last, outcome)
            return
        answer.token_ids.append(token)
        answer.last_token = token
        piece = answer.detokenizer.push(token)
        answer.text += piece
        if segment := answer.segmenter.push(token, hidden, piece):
            self._segment_ready(session, answer, segment, outcome)
        outcome.events.append((session, answer, TextDelta(piece, (token,))))

    def _segment_ready(
        self, session: SessionState, answer: AnswerState, segment: Segment, outcome: StepOutcome
    ) -> None:
        """Queue a finished text segment for the speech decoder, or report it at once (text only)."""
        if answer.speak:
            answer.pending_segments.append(segment)
        else:
            outcome.events.append((session, answer, SegmentText(segment.text)))

    # -- stage 3: the speech decoder -------------------------------------------------------------
    def _speech_rounds(self, plan: StepPlan, outcome: StepOutcome, failed: set[str]) -> None:
        """Up to `plan.speech_tokens[session]` codec tokens per answer: one batched forward per round."""
        rows = 0
        for round_index in range(max(plan.speech_tokens.values(), default=1)):
            sessions = [
                s
                for s in plan.speech
                if plan.speech_tokens.get(s.session_id, 1) > round_index
                and s.session_id not in failed
                and s.answer is not None
                and (s.answer.segment is not None or s.answer.pending_segments)
            ]
            if not sessions:
                break
            if round_index == 0:  # every answer that gets tokens this step takes part in the first round
                outcome.speaking_sessions = len(sessions)
            rows += self._speech(sessions, outcome, failed)
        outcome.batch_sizes["decoder"] = rows

    def _speech(self, sessions: list[SessionState], outcome: StepOutcome, failed: set[str]) -> int:
        decoder = self.model.decoder
        cache = self.decoder_cache

        def prepare(session: SessionState) -> tuple:
            answer = session.answer
            if answer.segment is None:
                segment = answer.pending_segments.popleft()
                outcome.events.append((session, answer, SegmentText(segment.text)))
                prefix, text = segment_condition(self.model, segment)
                answer.segment = SpeechSegment(
                    slot=self.slots.allocate_decoder(), prefix_length=prefix.shape[0]
                )
                return answer.segment, SegmentInput(answer.segment.slot, prefix, text), None
            return answer.segment, None, answer.segment.last_token

        def forward(inputs: list) -> list:
            lengths = {segment.slot: cache.lengths[segment.slot] for segment, _, _ in inputs}
            try:
                starts = [seg_input for _, seg_input, _ in inputs if seg_input is not None]
                opening = iter(decoder.prepare_segments(starts, cache))
                feeding = [(segment.slot, token) for segment, seg_input, token in inputs if seg_input is None]
                fed = iter(
                    decoder.token_rows([s for s, _ in feeding], [t for _, t in feeding]) if feeding else []
                )
                rows = [next(opening) if seg_input is not None else next(fed) for _, seg_input, _ in inputs]
                return list(
                    decoder.forward_ar(rows, cache, [segment.prefix_length for segment, _, _ in inputs])
                )
            except Exception:
                for slot, length in lengths.items():  # undo partial writes so a retry starts clean
                    cache.truncate(slot, length)
                raise

        def finish(session: SessionState, logits: torch.Tensor) -> None:
            self._after_speech_step(session, logits)

        return self._isolated(sessions, lambda s: s, prepare, forward, finish, outcome, failed)

    def _after_speech_step(self, session: SessionState, logits: torch.Tensor) -> None:
        decoder = self.model.decoder
        answer = session.answer
        segment = answer.segment
        token = sample_top_k(
            decoder.mask_non_codes(logits), self._top_k, session.decoder_rng, self.settings.decoder_greedy
        )
        if token != decoder.config.eos:
            segment.tokens.append(token)
            answer.chunker.push(token)
            segment.last_token = token
        if token == decoder.config.eos or len(segment.tokens) >= self.settings.max_speech_tokens:
            self.end_segment(answer)

    def end_segment(self, answer: AnswerState) -> None:
        """Close the answer's current speech segment and give its decoder slot back."""
        segment = answer.segment
        if segment is None:
            return
        self.slots.free_decoder(segment.slot)
        answer.codec_ids.append(segment.tokens)
        answer.chunker.end_segment()
        answer.segment = None

    # -- stage 4: the codec -----------------------------------------------------------------------
    def _codec(self, sessions: list[SessionState], outcome: StepOutcome, failed: set[str]) -> None:
        """Hand every ready window to the codec lane, and deliver what it has finished."""
        owners: list[tuple[SessionState, AnswerState]] = []
        windows = []
        priorities: list[float] = []
        now = time.perf_counter()
        for session in sessions:
            if session.session_id in failed or session.answer is None:
                continue
            answer = session.answer
            # First audio first (-1), then the answers least ahead of their playback.
            urgency = -1.0 if answer.first_audio_at is None else answer.audio_ahead_s(now, OUTPUT_RATE)
            for window in answer.chunker.ready_windows():
                owners.append((session, answer))
                windows.append(window)
                priorities.append(urgency)
        # A chunker puts its windows' audio back in order, whatever order they are decoded in.
        self.codec_lane.submit(owners, windows, priorities)
        self._deliver_audio(self.codec_lane.collect(), outcome, failed)

    def _deliver_audio(self, finished: list[CodecBatch], outcome: StepOutcome, failed: set[str]) -> None:
        """Feed decoded windows to their answers' chunkers; audio of an answer that ended is dropped."""
        rate = OUTPUT_RATE
        for batch in finished:
            outcome.codec_seconds += batch.wall_seconds
            for result in batch.results:
                session, answer = result.owner
                if session.answer is not answer or session.closed or session.session_id in failed:
                    continue
                outcome.batch_sizes["codec"] += 1
                window = result.window
                if result.error is not None:
                    log.error(
                        "session %s failed in the codec",
                        session.session_id,
                        exc_info=(type(result.error), result.error, result.error.__traceback__),
                    )
                    failed.add(session.session_id)
                    outcome.failures.append((session, "internal error while processing this session"))
                    continue
                kept = (
                    window.keep
                    if window.keep is not None
                    else len(window.token_ids) * self.model.codec.samples_per_token - window.trim_start
                )
                outcome.codec_audio_seconds += kept / rate
                try:
                    packets = answer.chunker.feed(window.index, result.audio)
                except Exception:  # noqa: BLE001 - one session's bad state fails that session
                    self._fail(session, outcome, failed)
                    continue
                for packet in packets:
                    if answer.first_audio_at is None:
                        answer.first_audio_at = time.perf_counter()
                    answer.audio_samples += len(packet)
                    outcome.events.append((session, answer, AudioDelta(packet)))
