"""The policy of a step: which sessions' work runs now.

Every listening session with a chunk waiting is heard this step (listening must keep real time).
Every answer generates text each step. Speech decoding is skipped for an answer whose audio runs
more than `max_audio_ahead_s` ahead of playback, so compute goes where it is needed and a barge-in
has little audio to throw away. The runner splits each stage into forwards of `max_batch` rows.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from app.engine.settings import EngineSettings
from app.engine.state import AnswerPhase, SessionState
from app.model import OUTPUT_RATE


@dataclass
class StepPlan:
    """The sessions taking part in each stage of one step."""

    listen: list[SessionState] = field(default_factory=list)
    answer: list[SessionState] = field(default_factory=list)
    speech: list[SessionState] = field(default_factory=list)
    codec: list[SessionState] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        codec_work = any(not s.answer.chunker.idle for s in self.codec if s.answer is not None)
        return not (self.listen or self.answer or self.speech or codec_work)


class Scheduler:
    """Builds a plan from the sessions' states."""

    def __init__(self, settings: EngineSettings) -> None:
        self.settings = settings

    def plan(self, sessions: Iterable[SessionState], now: float) -> StepPlan:
        plan = StepPlan()
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
            has_speech_work = answer.segment is not None or bool(answer.pending_segments)
            ahead = answer.audio_ahead_s(now, OUTPUT_RATE)
            if has_speech_work and ahead <= self.settings.max_audio_ahead_s:
                speaking.append((ahead, session))
            # Windows may become ready during this very step (stage 3 feeds stage 4).
            plan.codec.append(session)
        # The answers least ahead of their playback go first.
        plan.speech = [s for _, s in sorted(speaking, key=lambda pair: pair[0])]
        return plan
