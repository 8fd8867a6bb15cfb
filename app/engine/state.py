"""Per-session state, kept apart from the models and never copied per step.

A session owns two LLM cache slots for its life: `main` holds the conversation; `spare` receives
a fork when the user starts speaking while the bot answers (barge-in). Owning both from the
start means a session that was admitted can always barge in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import torch

from app.engine.events import AnswerEvent, AnswerOptions
from app.model import (
    CodecChunker,
    EncoderState,
    IncrementalDetokenizer,
    LLMSampling,
    Segment,
    Segmenter,
    StreamingFbank,
)


@dataclass
class HistoryEntry:
    """One piece of the conversation as fed to the LLM, kept to rebuild the cache after trimming.

    `parts` live on the CPU; `exchange` groups a user turn and its answer, which are dropped together.
    """

    exchange: int
    parts: list[torch.Tensor] = field(default_factory=list)
    # An answer's entry: its id, and the text tokens fed after its opening part (parts[1 + i] is token i).
    answer_id: str | None = None
    token_ids: list[int] = field(default_factory=list)

    @property
    def length(self) -> int:
        return sum(int(p.shape[0]) for p in self.parts)

    def snapshot(self) -> HistoryEntry:
        """A copy that later appends to this entry do not change."""
        return HistoryEntry(self.exchange, list(self.parts), self.answer_id, list(self.token_ids))

    def cut_to_tokens(self, count: int) -> None:
        """Keep the answer's opening and its first `count` tokens (what the user heard)."""
        count = max(0, min(count, len(self.parts) - 1))
        del self.parts[1 + count :]
        del self.token_ids[count:]


@dataclass
class PendingChunk:
    """A 160 ms chunk waiting for the encoder, and who waits for its decision."""

    samples: np.ndarray
    act: bool
    future: asyncio.Future


@dataclass
class ListenTurn:
    """A user turn being heard: its own front-end and encoder state, and where its rows go."""

    slot: int
    forked: bool  # True: a branch in the spare slot (the bot was speaking); False: main itself
    start_length: int  # main's length when the turn began (to drop it when not forked)
    history: list[HistoryEntry]  # the conversation this turn continues
    exchange: int  # the history exchange its entries (and its answer's) belong to
    prefill: torch.Tensor | None = None  # a branch's copy of main's not-yet-fed prefill
    fbank: StreamingFbank = field(default_factory=StreamingFbank)
    encoder_state: EncoderState = field(default_factory=EncoderState)
    adapter_cache: torch.Tensor | None = None
    chunks_fed: int = 0
    embeds: list[torch.Tensor] = field(default_factory=list)  # what this turn fed, for history
    pending: deque[PendingChunk] = field(default_factory=deque)
    commit_waiters: list[asyncio.Future] = field(default_factory=list)  # commit once heard
    commit_options: AnswerOptions | None = None  # how to answer a commit asked for by the client


class AnswerPhase(StrEnum):
    START = "start"  # the assistant header is still to be fed
    TEXT = "text"  # generating text tokens
    SPEECH_ONLY = "speech_only"  # text finished; speech still being made


@dataclass
class SpeechSegment:
    """The segment the speech decoder is working on for this answer."""

    slot: int
    prefix_length: int
    tokens: list[int] = field(default_factory=list)
    last_token: int | None = None  # sampled, not yet fed


@dataclass
class AnswerState:
    """One answer in progress: text generation, segmentation, speech decoding and the codec."""

    answer_id: str
    queue: asyncio.Queue[AnswerEvent]
    start_embeds: torch.Tensor  # what opens the answer (assistant header, or a text turn + header)
    detokenizer: IncrementalDetokenizer
    segmenter: Segmenter
    chunker: CodecChunker
    max_tokens: int
    started_at: float
    phase: AnswerPhase = AnswerPhase.START
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    last_token: int | None = None  # sampled, not yet fed
    pending_segments: deque[Segment] = field(default_factory=deque)
    segment: SpeechSegment | None = None
    codec_ids: list[list[int]] = field(default_factory=list)
    audio_samples: int = 0
    first_audio_at: float | None = None
    history_entry: HistoryEntry | None = None  # grows as tokens are fed
    heard_text: str | None = None  # what the user has heard of it, should it be cut now (None: all)
    stream: Any = None  # the AnswerStream handed to the caller
    speak: bool = True  # False: text only (segments are reported, never spoken)
    out_of_band_length: int | None = None  # main's length to go back to when an out-of-band answer ends
    input_text_tokens: int = 0  # what the turn it answers fed (for usage)
    input_audio_chunks: int = 0

    def audio_ahead_s(self, now: float, rate: int) -> float:
        """How far produced audio runs ahead of real-time playback since the first packet."""
        if self.first_audio_at is None:
            return 0.0
        return self.audio_samples / rate - (now - self.first_audio_at)

    @property
    def speech_done(self) -> bool:
        return (
            self.phase == AnswerPhase.SPEECH_ONLY
            and self.segment is None
            and not self.pending_segments
            and self.chunker.idle
        )


@dataclass
class SessionState:
    """Everything one conversation keeps between steps."""

    session_id: str
    main_slot: int
    spare_slot: int
    role: str | None
    sampling: LLMSampling
    llm_rng: torch.Generator
    decoder_rng: torch.Generator
    history: list[HistoryEntry] = field(default_factory=list)
    # Numbers the exchanges (a user turn and its answer) in `history`, so the oldest are dropped together.
    # Bookkeeping of the conversation only: when turns open and end is the session's turn taking.
    exchanges: int = 0
    prefill: torch.Tensor | None = None  # embeds still to be fed to main before anything else
    listen: ListenTurn | None = None
    answer: AnswerState | None = None
    role_changed: bool = False
    history_cut: bool = False  # the history no longer matches the cache: re-read it at the next turn
    closed: bool = False
    error: str | None = None
    answer_defaults: AnswerOptions = field(default_factory=AnswerOptions)  # for answers the state head starts

    def next_exchange(self) -> int:
        self.exchanges += 1
        return self.exchanges
