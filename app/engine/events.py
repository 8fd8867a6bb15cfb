"""What the engine hands back to its callers: chunk decisions and the events of an answer."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from app.model import ListenState


class AnswerStatus(StrEnum):
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class CancelCause(StrEnum):
    """Why an answer was cancelled: callers act on this, never on the wording of a reason."""

    CLIENT = "client_cancelled"  # the caller asked (response.cancel, truncate, shutdown)
    TURN_DETECTED = "turn_detected"  # the user took the turn (the state head, or a commit)
    REPLACED = "replaced"  # a new typed turn replaced it
    CLOSED = "closed"  # the session or the server went away


@dataclass(frozen=True)
class ChunkDecision:
    """The state head's verdict on one 160 ms chunk, and what the engine did about it."""

    state: ListenState
    probs: tuple[float, float, float]
    chunk_index: int
    answer_id: str | None = None  # set when this chunk started an answer
    skipped: bool = False  # the turn ended before this chunk was heard
    turn_ended: bool = False  # the engine ended the listen turn on this verdict (answer or ignore)
    stream: AnswerStream | None = field(default=None, compare=False)  # the answer this chunk started


@dataclass(frozen=True)
class AnswerOptions:
    """How one answer is made; a session's defaults apply to answers the state head starts."""

    speak: bool = True  # False: text only; the speech decoder and codec do no work for it
    max_tokens: int | None = None  # text tokens; None (or more than the engine allows): the engine's cap
    instructions: str | None = None  # for this answer only: a system message just before it
    out_of_band: bool = False  # answer, then leave the conversation as it was (nothing is kept)


@dataclass(frozen=True)
class TextDelta:
    """New answer text (and the LLM token ids it came from)."""

    text: str
    token_ids: tuple[int, ...]


@dataclass(frozen=True)
class SegmentText:
    """The text of the segment whose audio follows: lets a client show text as it is spoken."""

    text: str


@dataclass(frozen=True)
class AudioDelta:
    """New answer audio: float32 mono at 24 kHz."""

    samples: np.ndarray


@dataclass(frozen=True)
class AnswerDone:
    """The answer ended; `text` is all of it, `stats` holds timings."""

    status: AnswerStatus
    text: str
    token_ids: tuple[int, ...]
    codec_ids: tuple[tuple[int, ...], ...]
    reason: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    cause: CancelCause | None = None  # set when `status` is CANCELLED


AnswerEvent = TextDelta | SegmentText | AudioDelta | AnswerDone


class AnswerStream:
    """The events of one answer, in order, ending with `AnswerDone` (filled by the engine's loop)."""

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
