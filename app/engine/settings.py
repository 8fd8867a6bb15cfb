"""The engine's knobs, as one dataclass (the app's pydantic Settings fill it in)."""

from __future__ import annotations

from dataclasses import dataclass, field

from app.model import LLMSampling


@dataclass(frozen=True)
class EngineSettings:
    """Capacity, limits and policy of one engine (one model replica)."""

    max_sessions: int = 16  # per replica; each session owns two LLM cache slots
    llm_max_len: int = 4096  # tokens of conversation one session may hold
    max_answer_tokens: int = 500  # text tokens per answer (the published server's cap)
    max_speech_tokens: int = 1000  # codec tokens per text segment (published)
    max_segment_tokens: int = 80  # cut a segment that finds no punctuation by then
    max_turn_chunks: int = 375  # 60 s of speech in one user turn; then the turn is answered
    max_batch: int = 64  # rows per forward and stage; 1 gives batch-1 serving
    max_audio_ahead_s: float = 2.0  # stop speech decoding for an answer this far ahead of playback
    speech_tokens_per_step: int = 4  # most codec tokens an answer gets in a step (at the pace of steps)
    first_text_tokens_per_step: int = 3  # text tokens a step for answers owing their first segment
    first_text_max_llm_share: float = 0.25  # ... while one LLM forward is at most this share of a step
    window_deadline: bool = True  # an answer gets the tokens to finish its next codec window in time
    overload_priority: bool = True  # overloaded steps: codec tokens to first audio / nearly dry answers
    codec_thread: bool = False  # True: the codec decodes on its own thread, overlapping the next steps
    codec_max_windows: int = 4  # windows per decode on that thread, the most urgent first; 0: all waiting
    admission_max_load: float = 0.9  # refuse a session whose admission predicts more load; 0: off
    admission_window_steps: int = 50  # steps the load measure remembers
    admission_unmeasured_sessions: int = 2  # sessions admitted beyond the most measured speaking together
    state_threshold: float = 0.5
    sampling: LLMSampling = field(default_factory=LLMSampling)
    decoder_top_k: int | None = None  # None: server.json
    decoder_greedy: bool = False
    trim_leading_silence: bool = True  # as the published server does on a reply's first packet
    seed: int | None = None  # per-session seeds derive from it; None: random

    @property
    def turn_reserve(self) -> int:
        """Cache room a turn may need: a maximal user turn, its framing, and a maximal answer."""
        return 2 * self.max_turn_chunks + 64 + self.max_answer_tokens
