"""Turn taking for one conversation: the one place that decides when the user's turn opens, is heard,
answered, ignored or dropped, and when an answer in progress pauses, resumes or is cancelled.

A pure state machine: `handle` takes one typed input (`app.sessions.turn_events`: the VAD, the engine's
verdicts, client events, responses starting and ending) and returns the commands the session carries out,
in order. No asyncio, no sockets, no engine calls: the session translates protocol events into inputs
and commands into engine calls and server events.

With `server_vad`, speech opens a listen turn; its pre-roll is fed without letting the state head end the
turn (as the published server does), every later 160 ms chunk, silence included, may end it: "answer"
starts a response, "ignore" drops the turn. If the head never fires, the VAD's end of speech answers
anyway (fallback). With turn detection off, the client commits and asks for a response itself.

Speech during an answer is an interruption in two steps: after `min_interruption_ms` of it the answer
pauses (no more audio, and `speech_started`, on which clients flush playback); the state head then either
takes the turn (the answer ends cancelled, `turn_detected`) or ignores it (a backchannel, a cough), and the
answer resumes from where playback stopped, as it does when the VAD closes first.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

from app.engine.events import CancelCause
from app.model import CHUNK_SAMPLES, ListenState
from app.sessions.events import new_item_id
from app.sessions.turn_events import (
    AnnounceCleared,
    AnnounceCommitted,
    AnnounceSpeechStarted,
    AnnounceSpeechStopped,
    AudioHeard,
    AudioItemAdded,
    CancelResponse,
    ClientClear,
    ClientCommit,
    CommitNow,
    CommitReached,
    DetectionChanged,
    FeedChunk,
    HeadVerdict,
    NoteHeard,
    PauseResponse,
    PushToTalkAudio,
    QueueCommit,
    QueueDrop,
    QueueRelease,
    RefuseEmptyCommit,
    ReleaseReached,
    ResetVad,
    ResponseFinished,
    ResponseRequested,
    ResponseStarted,
    ResumeResponse,
    StartResponse,
    TurnAnswered,
    TurnCommand,
    TurnInput,
    TurnSettings,
    VadSpeech,
    VadSpeechStarted,
    VadSpeechStopped,
)


class TurnPhase(Enum):
    """Where the user's turn stands."""

    IDLE = "idle"  # no user turn open
    LISTENING = "listening"  # the user's audio goes to the engine
    AWAITING_RESPONSE = "awaiting_response"  # a committed user turn waits for response.create


@dataclass
class Interruption:
    """The answer an open listen turn speaks into, and where that speech began."""

    response_id: str
    speech_start_ms: int
    paused: bool = False
    answer_over: bool = False  # the answer ended on the wire meanwhile: an ordinary turn now


class TurnTaking:
    """The turn state of one conversation and every decision about it."""

    def __init__(
        self,
        settings: TurnSettings,
        new_id: Callable[[], str] = new_item_id,
        chunk_samples: int = CHUNK_SAMPLES,
    ) -> None:
        self.settings = settings
        self.phase = TurnPhase.IDLE
        self.turn = 0  # numbers listen turns: work queued for an ended turn is dropped
        self.item_id: str | None = None  # the user item of the open turn
        self.answering: str | None = None  # the response on the wire, if one is
        self.interruption: Interruption | None = None
        self._new_id = new_id
        self._chunk = chunk_samples
        self._announced = False  # speech_started was sent for this turn
        self._stop_owed = False  # ... and speech_stopped not yet
        self._audio_start_ms = 0
        self._preroll_left = 0  # pre-roll samples still to feed (the head may not act on them)
        self._buffer = np.zeros(0, dtype=np.float32)
        self._chunks_queued = 0

    @property
    def turn_in_progress(self) -> bool:
        """Whether the user is speaking or a committed turn waits for its response."""
        return self.phase != TurnPhase.IDLE

    def describe(self) -> dict:
        """The turn state, for a log line."""
        interruption = self.interruption
        return {
            "phase": self.phase.value,
            "answering": self.answering,
            "interruption": None
            if interruption is None
            else {"paused": interruption.paused, "answer_over": interruption.answer_over},
        }

    def handle(self, event: TurnInput) -> list[TurnCommand]:
        """Apply one input; return what the session must do, in order."""
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"turn taking has no rule for {type(event).__name__}")
        return handler(self, event)

    # -- the VAD -------------------------------------------------------------------------------------
    def _speech_started(self, event: VadSpeechStarted) -> list[TurnCommand]:
        if self.phase != TurnPhase.IDLE:
            return []
        answering = self.answering
        if answering is not None and not self.settings.interrupt_response:
            return []  # the client asked us not to be interrupted: the answer plays on, unpaused
        # Speech during an answer is announced only once it has lasted min_interruption_ms (the pause).
        commands = self._open_turn(event.audio_start_ms, announce=answering is None)
        self.interruption = None
        if answering is not None:
            self.interruption = Interruption(answering, event.speech_start_ms)
            commands.append(NoteHeard(answering, whole=False))  # should the head take the turn at once
        self._preroll_left = len(event.audio)
        return commands + self._buffer_audio(event.audio, act=False)

    def _speech(self, event: VadSpeech) -> list[TurnCommand]:
        if self.phase != TurnPhase.LISTENING:
            return []
        return self._buffer_audio(event.samples, act=self._acting())

    def _audio_heard(self, event: AudioHeard) -> list[TurnCommand]:
        """Pause the interrupted answer once the speech into it has lasted `min_interruption_ms`."""
        interruption = self.interruption
        if interruption is None or interruption.paused or self.phase != TurnPhase.LISTENING:
            return []
        if not self.settings.server_vad:
            return []
        if event.clock_ms - interruption.speech_start_ms < self.settings.min_interruption_ms:
            return []
        commands: list[TurnCommand] = []
        if interruption.answer_over:  # it ended meanwhile: an ordinary turn now
            self.interruption = None
        else:
            interruption.paused = True
            commands += [PauseResponse(interruption.response_id), NoteHeard(interruption.response_id, False)]
        return commands + self._announce()

    def _speech_stopped(self, event: VadSpeechStopped) -> list[TurnCommand]:
        if self.phase != TurnPhase.LISTENING:
            return []
        commands = self._send_speech_stopped(event.audio_end_ms)
        if self.interruption is not None and not self.interruption.answer_over:
            # Unless the head takes the turn on the audio it has not heard yet, this was no interruption
            # after all: once it has heard it all, the turn is dropped and the answer goes on.
            return commands + self._flush(act=self._acting()) + [QueueRelease(self.turn)]
        # The state head had its chance during the silence: answer now (fallback), once all the audio
        # heard so far has been fed.
        return commands + self._flush(act=False) + [QueueCommit(self.turn)]

    def _push_to_talk(self, event: PushToTalkAudio) -> list[TurnCommand]:
        commands: list[TurnCommand] = []
        if self.phase == TurnPhase.IDLE:
            commands += self._open_turn(audio_start_ms=0, announce=False)
        if self.phase == TurnPhase.LISTENING:
            commands += self._buffer_audio(event.samples, act=False)
        return commands

    # -- the engine ----------------------------------------------------------------------------------
    def _verdict(self, event: HeadVerdict) -> list[TurnCommand]:
        decision = event.decision
        if decision.skipped or event.turn != self.turn:
            return []
        if decision.state == ListenState.ANSWER:
            interruption, self.interruption = self.interruption, None
            commands: list[TurnCommand] = []
            if interruption is not None:
                commands += self._announce()  # taken before the pause: speech_started still comes first
            if decision.answer_id is not None:  # the engine answered: the turn is over
                commands += self._send_speech_stopped() + self._committed() + self._end_turn()
                if decision.stream is not None:
                    commands.append(StartResponse(decision.stream))
            elif self.phase == TurnPhase.LISTENING and not self.settings.create_response:
                # The turn is over but the client starts responses itself (once: verdicts on the chunks
                # still queued say the same again).
                commands += self._send_speech_stopped() + self._committed()
                self.phase = TurnPhase.AWAITING_RESPONSE
                self.item_id = None
                commands.append(ResetVad())
                if interruption is not None:
                    commands.append(CancelResponse(interruption.response_id, CancelCause.TURN_DETECTED))
            return commands
        if decision.state == ListenState.IGNORE and decision.turn_ended:
            # Noise or a backchannel: the engine dropped the turn; an answer in progress goes on.
            announced = self._announced
            commands = self._send_speech_stopped()
            if announced:
                commands.append(AnnounceCleared())
            return commands + self._end_turn()
        return []

    def _release(self, event: ReleaseReached) -> list[TurnCommand]:
        """The VAD closed an interrupting turn and the head, having heard all of it, did not take it."""
        interruption = self.interruption
        if event.turn != self.turn or self.phase != TurnPhase.LISTENING or interruption is None:
            return []
        if interruption.answer_over:  # the answer ended meanwhile: an ordinary turn, answered
            self.interruption = None
            return [QueueCommit(self.turn)]
        commands: list[TurnCommand] = [AnnounceCleared()] if self._announced else []
        return commands + self._drop()

    def _commit_reached(self, event: CommitReached) -> list[TurnCommand]:
        if event.turn != self.turn or self.phase == TurnPhase.IDLE:
            return []
        return self._committed() + [CommitNow(event.request)]

    def _answered(self, event: TurnAnswered) -> list[TurnCommand]:
        commands = self._end_turn()
        if event.stream is not None:
            commands.append(StartResponse(event.stream, event.request))
        return commands

    # -- the client ----------------------------------------------------------------------------------
    def _client_commit(self, event: ClientCommit) -> list[TurnCommand]:
        if self.phase != TurnPhase.LISTENING or (self._chunks_queued == 0 and not len(self._buffer)):
            return [RefuseEmptyCommit()]
        commands = self._flush(act=False) + self._send_speech_stopped()
        self.phase = TurnPhase.AWAITING_RESPONSE
        commands += self._committed()
        self.item_id = None
        return commands

    def _client_clear(self, event: ClientClear) -> list[TurnCommand]:
        return self._drop() if self.phase != TurnPhase.IDLE else []

    def _audio_item(self, event: AudioItemAdded) -> list[TurnCommand]:
        commands = self._drop() if self.phase != TurnPhase.IDLE else []
        self.turn += 1
        self.phase = TurnPhase.LISTENING
        self.item_id = event.item_id
        commands += self._buffer_audio(event.samples, act=False) + self._flush(act=False)
        self.phase = TurnPhase.AWAITING_RESPONSE
        self.item_id = None
        return commands

    def _response_requested(self, event: ResponseRequested) -> list[TurnCommand]:
        """A response.create: a committed or open turn is answered (after what was fed); a typed turn
        wins over speech still in progress, which is dropped. No `QueueCommit` in the result: the
        session answers the typed text (or the instructions) itself."""
        if event.typed_text_waiting and self.phase != TurnPhase.AWAITING_RESPONSE:
            return self._drop() if self.phase == TurnPhase.LISTENING else []
        if self.phase != TurnPhase.IDLE:
            return self._flush(act=False) + [QueueCommit(self.turn, event.request)]
        return []

    def _detection_changed(self, event: DetectionChanged) -> list[TurnCommand]:
        commands = self._drop() if self.phase == TurnPhase.LISTENING else []
        self.settings = event.settings
        return commands

    # -- responses -----------------------------------------------------------------------------------
    def _response_started(self, event: ResponseStarted) -> list[TurnCommand]:
        self.answering = event.response_id
        return []

    def _response_finished(self, event: ResponseFinished) -> list[TurnCommand]:
        if self.answering == event.response_id:
            self.answering = None
        interruption = self.interruption
        if interruption is not None and interruption.response_id == event.response_id:
            interruption.answer_over = True
            interruption.paused = False
        return []

    # -- the turn itself -----------------------------------------------------------------------------
    def _acting(self) -> bool:
        return self._preroll_left <= 0 and self.settings.server_vad and self.settings.create_response

    def _open_turn(self, audio_start_ms: int, announce: bool) -> list[TurnCommand]:
        """Start a user turn; only a VAD-detected one is announced with speech_started (maybe later)."""
        self.turn += 1
        self.phase = TurnPhase.LISTENING
        self._announced = False
        self._stop_owed = False
        self.item_id = self._new_id()
        self._audio_start_ms = audio_start_ms
        self._buffer = np.zeros(0, dtype=np.float32)
        self._chunks_queued = 0
        return self._announce() if announce else []

    def _announce(self) -> list[TurnCommand]:
        if self._announced or self.item_id is None:
            return []
        self._announced = True
        self._stop_owed = True
        return [AnnounceSpeechStarted(self._audio_start_ms, self.item_id)]

    def _send_speech_stopped(self, audio_end_ms: int | None = None) -> list[TurnCommand]:
        if not self._stop_owed or self.item_id is None:
            return []
        self._stop_owed = False
        return [AnnounceSpeechStopped(self.item_id, audio_end_ms)]

    def _committed(self) -> list[TurnCommand]:
        return [AnnounceCommitted(self.item_id)] if self.item_id is not None else []

    def _end_turn(self) -> list[TurnCommand]:
        commands: list[TurnCommand] = []
        interruption, self.interruption = self.interruption, None
        if interruption is not None and not interruption.answer_over:
            # The turn ended without taking over: the answer goes on, all of it to be heard.
            if interruption.paused:
                commands.append(ResumeResponse(interruption.response_id))
            commands.append(NoteHeard(interruption.response_id, whole=True))
        self.turn += 1  # work still queued for the old turn is dropped
        self.phase = TurnPhase.IDLE
        self.item_id = None
        self._announced = False
        self._stop_owed = False
        self._buffer = np.zeros(0, dtype=np.float32)
        commands.append(ResetVad())
        return commands

    def _drop(self) -> list[TurnCommand]:
        return self._end_turn() + [QueueDrop()]

    def _buffer_audio(self, samples: np.ndarray, act: bool) -> list[TurnCommand]:
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32)])
        commands: list[TurnCommand] = []
        while len(self._buffer) >= self._chunk:
            chunk, self._buffer = self._buffer[: self._chunk], self._buffer[self._chunk :]
            commands.append(FeedChunk(self.turn, chunk, act and self._preroll_left <= 0))
            self._chunks_queued += 1
            self._preroll_left -= self._chunk
        return commands

    def _flush(self, act: bool) -> list[TurnCommand]:
        """Queue what is buffered as a last chunk, padded with zeros."""
        if not len(self._buffer):
            return []
        padded = np.concatenate([self._buffer, np.zeros(self._chunk - len(self._buffer), dtype=np.float32)])
        self._buffer = np.zeros(0, dtype=np.float32)
        self._chunks_queued += 1
        return [FeedChunk(self.turn, padded, act)]

    _handlers: dict[type, Callable[[TurnTaking, object], list[TurnCommand]]] = {
        VadSpeechStarted: _speech_started,
        VadSpeech: _speech,
        AudioHeard: _audio_heard,
        VadSpeechStopped: _speech_stopped,
        PushToTalkAudio: _push_to_talk,
        HeadVerdict: _verdict,
        ReleaseReached: _release,
        CommitReached: _commit_reached,
        TurnAnswered: _answered,
        ClientCommit: _client_commit,
        ClientClear: _client_clear,
        AudioItemAdded: _audio_item,
        ResponseRequested: _response_requested,
        DetectionChanged: _detection_changed,
        ResponseStarted: _response_started,
        ResponseFinished: _response_finished,
    }
