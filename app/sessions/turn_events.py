"""The typed vocabulary of turn taking: what happens to a conversation (inputs of `TurnTaking`) and what
the session must do about it (its commands). Plain dataclasses: the state machine matches on types, never
on the wording of a reason.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from app.engine.events import AnswerStream, CancelCause, ChunkDecision
from app.sessions.response_request import ResponseRequest


@dataclass(frozen=True)
class TurnSettings:
    """What turn taking needs of the session's configuration."""

    server_vad: bool = True  # False: push to talk (the client commits and asks for responses)
    create_response: bool = True  # the state head (or the VAD's end of speech) starts the answer
    interrupt_response: bool = True  # speech during an answer may pause and cancel it
    min_interruption_ms: int = 200  # speech into an answer for this long pauses it


# -- inputs ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VadSpeechStarted:
    """The VAD heard speech begin; `audio` is its pre-roll (fed without letting the head act)."""

    audio_start_ms: int
    speech_start_ms: int
    audio: np.ndarray


@dataclass(frozen=True)
class VadSpeech:
    """Audio the VAD passed through (speech or the silence after it)."""

    samples: np.ndarray


@dataclass(frozen=True)
class VadSpeechStopped:
    """The VAD heard speech end."""

    audio_end_ms: int


@dataclass(frozen=True)
class AudioHeard:
    """One append has gone through the VAD; `clock_ms` is the session's audio clock after it."""

    clock_ms: int


@dataclass(frozen=True)
class PushToTalkAudio:
    """Audio appended with turn detection off: all of it is the user's turn."""

    samples: np.ndarray


@dataclass(frozen=True)
class HeadVerdict:
    """The engine's verdict on a chunk of listen turn `turn` (and what it did about it)."""

    turn: int
    decision: ChunkDecision


@dataclass(frozen=True)
class ReleaseReached:
    """The engine has heard all of interrupting turn `turn` (closed by the VAD) without taking it."""

    turn: int


@dataclass(frozen=True)
class CommitReached:
    """A queued commit of turn `turn` comes up: everything before it has been heard."""

    turn: int
    request: ResponseRequest | None = None  # of the response.create that asked for it


@dataclass(frozen=True)
class TurnAnswered:
    """The engine committed the turn; `stream` is its answer (None: the turn held no audio)."""

    stream: AnswerStream | None
    request: ResponseRequest | None = None


@dataclass(frozen=True)
class ClientCommit:
    """input_audio_buffer.commit."""


@dataclass(frozen=True)
class ClientClear:
    """input_audio_buffer.clear (or a turn replaced by something else)."""


@dataclass(frozen=True)
class AudioItemAdded:
    """conversation.item.create with user audio: a whole turn, waiting for response.create."""

    item_id: str
    samples: np.ndarray


@dataclass(frozen=True)
class ResponseRequested:
    """response.create for the default conversation; `typed_text_waiting`: a typed turn is queued."""

    typed_text_waiting: bool
    request: ResponseRequest | None = None


@dataclass(frozen=True)
class ResponseStarted:
    """An answer began playing on the wire."""

    response_id: str


@dataclass(frozen=True)
class ResponseFinished:
    """An answer is over on the wire (completed, cancelled or failed)."""

    response_id: str


@dataclass(frozen=True)
class DetectionChanged:
    """session.update changed the formats or turn detection: an open listen turn is dropped."""

    settings: TurnSettings


TurnInput = (
    VadSpeechStarted
    | VadSpeech
    | VadSpeechStopped
    | AudioHeard
    | PushToTalkAudio
    | HeadVerdict
    | ReleaseReached
    | CommitReached
    | TurnAnswered
    | ClientCommit
    | ClientClear
    | AudioItemAdded
    | ResponseRequested
    | ResponseStarted
    | ResponseFinished
    | DetectionChanged
)


# -- commands -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnnounceSpeechStarted:
    """Send input_audio_buffer.speech_started (clients flush their playback on it)."""

    audio_start_ms: int
    item_id: str


@dataclass(frozen=True)
class AnnounceSpeechStopped:
    """Send input_audio_buffer.speech_stopped; `audio_end_ms` None: the audio clock now."""

    item_id: str
    audio_end_ms: int | None = None


@dataclass(frozen=True)
class AnnounceCleared:
    """Send input_audio_buffer.cleared: the announced turn was dropped."""


@dataclass(frozen=True)
class AnnounceCommitted:
    """Send input_audio_buffer.committed and the user item."""

    item_id: str


@dataclass(frozen=True)
class FeedChunk:
    """Queue a 160 ms chunk of turn `turn` for the engine; with `act`, its verdict may end the turn."""

    turn: int
    samples: np.ndarray
    act: bool


@dataclass(frozen=True)
class QueueCommit:
    """Queue an answer to turn `turn`, after the chunks already queued."""

    turn: int
    request: ResponseRequest | None = None


@dataclass(frozen=True)
class QueueRelease:
    """Queue a check, after the chunks already queued, of whether the head took interrupting turn `turn`."""

    turn: int


@dataclass(frozen=True)
class QueueDrop:
    """Queue the end of the engine's listen turn, unanswered."""


@dataclass(frozen=True)
class CommitNow:
    """Ask the engine to answer the turn now, then report `TurnAnswered`."""

    request: ResponseRequest | None = None


@dataclass(frozen=True)
class StartResponse:
    """Stream this answer to the client."""

    stream: AnswerStream
    request: ResponseRequest | None = None


@dataclass(frozen=True)
class PauseResponse:
    """Stop sending the answer at once (speech into it lasted `min_interruption_ms`)."""

    response_id: str


@dataclass(frozen=True)
class ResumeResponse:
    """Go on with the paused answer from a little before where playback stopped."""

    response_id: str


@dataclass(frozen=True)
class CancelResponse:
    """End the answer; the conversation keeps what was heard of it."""

    response_id: str
    cause: CancelCause


@dataclass(frozen=True)
class NoteHeard:
    """Tell the engine what has been heard of the answer, should the interruption end it (`whole`: it goes
    on, so all of it will be)."""

    response_id: str
    whole: bool


@dataclass(frozen=True)
class ResetVad:
    """The turn ended: forget every per-turn detector state."""


@dataclass(frozen=True)
class RefuseEmptyCommit:
    """input_audio_buffer.commit with nothing buffered: an error for the client."""


TurnCommand = (
    AnnounceSpeechStarted
    | AnnounceSpeechStopped
    | AnnounceCleared
    | AnnounceCommitted
    | FeedChunk
    | QueueCommit
    | QueueRelease
    | QueueDrop
    | CommitNow
    | StartResponse
    | PauseResponse
    | ResumeResponse
    | CancelResponse
    | NoteHeard
    | ResetVad
    | RefuseEmptyCommit
)
