"""Turn taking as a pure state machine: every transition, without a server, a model or an event loop."""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
import pytest

from app.engine.events import AnswerStream, CancelCause, ChunkDecision
from app.model import ListenState
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
    TurnSettings,
    VadSpeech,
    VadSpeechStarted,
    VadSpeechStopped,
)
from app.sessions.turn_taking import TurnPhase, TurnTaking

CHUNK = 4  # samples per chunk here, so tests can count chunks


def machine(**settings) -> TurnTaking:
    ids = itertools.count(1)
    return TurnTaking(TurnSettings(**settings), new_id=lambda: f"item_{next(ids)}", chunk_samples=CHUNK)


def audio(samples: int) -> np.ndarray:
    return np.full(samples, 0.1, dtype=np.float32)


def kinds(commands) -> list[type]:
    return [type(c) for c in commands]


def stream(answer_id: str = "resp_new") -> AnswerStream:
    return AnswerStream(answer_id, asyncio.Queue())


def verdict(turns: TurnTaking, state: ListenState, **fields) -> HeadVerdict:
    return HeadVerdict(turns.turn, ChunkDecision(state, (0.0, 0.0, 0.0), 0, **fields))


def start_speech(turns: TurnTaking, preroll: int = 2 * CHUNK, at_ms: int = 1000) -> list:
    return turns.handle(
        VadSpeechStarted(audio_start_ms=at_ms - 300, speech_start_ms=at_ms, audio=audio(preroll))
    )


def answering(turns: TurnTaking, response_id: str = "resp_old") -> None:
    assert turns.handle(ResponseStarted(response_id)) == []


# -- a turn on a quiet session --------------------------------------------------------------------------
def test_speech_opens_an_announced_turn_whose_preroll_the_head_may_not_act_on() -> None:
    turns = machine()
    commands = start_speech(turns)
    assert kinds(commands) == [AnnounceSpeechStarted, FeedChunk, FeedChunk]
    assert commands[0] == AnnounceSpeechStarted(audio_start_ms=700, item_id="item_1")
    assert [c.act for c in commands[1:]] == [False, False]
    assert turns.phase == TurnPhase.LISTENING and turns.item_id == "item_1"


def test_speech_after_the_preroll_lets_the_head_act_and_partial_chunks_wait() -> None:
    turns = machine()
    start_speech(turns)
    commands = turns.handle(VadSpeech(audio(CHUNK + 1)))
    assert kinds(commands) == [FeedChunk] and commands[0].act and commands[0].turn == turns.turn


def test_without_create_response_the_head_never_acts() -> None:
    turns = machine(create_response=False)
    start_speech(turns, preroll=0)
    assert [c.act for c in turns.handle(VadSpeech(audio(2 * CHUNK)))] == [False, False]


def test_speech_while_a_turn_is_open_or_waiting_opens_nothing() -> None:
    turns = machine()
    start_speech(turns)
    assert start_speech(turns) == []
    turns.handle(ClientCommit())
    assert turns.phase == TurnPhase.AWAITING_RESPONSE
    assert start_speech(turns) == []


def test_audio_outside_a_turn_is_not_fed() -> None:
    turns = machine()
    assert turns.handle(VadSpeech(audio(3 * CHUNK))) == []
    assert turns.handle(VadSpeechStopped(500)) == []
    assert turns.handle(AudioHeard(500)) == []


def test_end_of_speech_answers_once_everything_fed_was_heard() -> None:
    turns = machine()
    start_speech(turns)
    turns.handle(VadSpeech(audio(2)))
    commands = turns.handle(VadSpeechStopped(audio_end_ms=2000))
    assert kinds(commands) == [AnnounceSpeechStopped, FeedChunk, QueueCommit]
    assert commands[0] == AnnounceSpeechStopped("item_1", 2000)
    assert not commands[1].act and len(commands[1].samples) == CHUNK  # padded
    assert commands[2] == QueueCommit(turns.turn)
    assert kinds(turns.handle(CommitReached(turns.turn))) == [AnnounceCommitted, CommitNow]
    answer = stream()
    commands = turns.handle(TurnAnswered(answer, request="req"))
    assert commands == [ResetVad(), StartResponse(answer, "req")]
    assert turns.phase == TurnPhase.IDLE and turns.item_id is None


def test_a_commit_or_release_of_an_ended_turn_is_ignored() -> None:
    turns = machine()
    start_speech(turns)
    old = turns.turn
    turns.handle(ClientClear())
    assert turns.handle(CommitReached(old)) == []
    assert turns.handle(ReleaseReached(old)) == []
    assert turns.handle(TurnAnswered(None)) == [ResetVad()]


def test_the_heads_answer_ends_the_turn_and_starts_its_stream() -> None:
    turns = machine()
    start_speech(turns)
    answer = stream()
    commands = turns.handle(
        verdict(turns, ListenState.ANSWER, answer_id="resp_new", turn_ended=True, stream=answer)
    )
    assert kinds(commands) == [AnnounceSpeechStopped, AnnounceCommitted, ResetVad, StartResponse]
    assert commands[-1].stream is answer
    assert turns.phase == TurnPhase.IDLE


def test_the_heads_ignore_drops_the_turn_and_says_cleared_only_if_announced() -> None:
    turns = machine()
    start_speech(turns)
    commands = turns.handle(verdict(turns, ListenState.IGNORE, turn_ended=True))
    assert kinds(commands) == [AnnounceSpeechStopped, AnnounceCleared, ResetVad]
    turns.handle(PushToTalkAudio(audio(CHUNK)))  # never announced
    assert kinds(turns.handle(verdict(turns, ListenState.IGNORE, turn_ended=True))) == [ResetVad]


def test_verdicts_that_change_nothing() -> None:
    turns = machine()
    start_speech(turns)
    assert turns.handle(verdict(turns, ListenState.LISTEN)) == []
    assert turns.handle(verdict(turns, ListenState.IGNORE)) == []  # reported, not acted on
    assert turns.handle(verdict(turns, ListenState.ANSWER, skipped=True)) == []
    stale = HeadVerdict(turns.turn - 1, ChunkDecision(ListenState.ANSWER, (0, 0, 0), 0, answer_id="r"))
    assert turns.handle(stale) == []
    assert turns.phase == TurnPhase.LISTENING


def test_without_create_response_an_answer_verdict_waits_for_response_create() -> None:
    turns = machine(create_response=False)
    start_speech(turns)
    commands = turns.handle(verdict(turns, ListenState.ANSWER))
    assert kinds(commands) == [AnnounceSpeechStopped, AnnounceCommitted, ResetVad]
    assert turns.phase == TurnPhase.AWAITING_RESPONSE
    assert turns.handle(verdict(turns, ListenState.ANSWER)) == []  # a chunk still queued: committed once
    commands = turns.handle(ResponseRequested(typed_text_waiting=False, request="req"))
    assert commands == [QueueCommit(turns.turn, "req")]
    assert turns.handle(CommitReached(turns.turn, "req")) == [CommitNow("req")]


# -- interruptions --------------------------------------------------------------------------------------
def test_speech_into_an_answer_is_announced_only_when_it_pauses_the_answer() -> None:
    turns = machine(min_interruption_ms=200)
    answering(turns)
    commands = start_speech(turns, at_ms=1000)
    assert kinds(commands) == [NoteHeard, FeedChunk, FeedChunk]
    assert commands[0] == NoteHeard("resp_old", whole=False)
    assert turns.handle(AudioHeard(1199)) == []
    commands = turns.handle(AudioHeard(1200))
    assert kinds(commands) == [PauseResponse, NoteHeard, AnnounceSpeechStarted]
    assert commands[0] == PauseResponse("resp_old")
    assert turns.handle(AudioHeard(1400)) == []  # paused once


def test_a_backchannel_the_head_ignores_resumes_the_answer() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    turns.handle(AudioHeard(1300))
    commands = turns.handle(verdict(turns, ListenState.IGNORE, turn_ended=True))
    assert commands == [
        AnnounceSpeechStopped("item_1"),
        AnnounceCleared(),
        ResumeResponse("resp_old"),
        NoteHeard("resp_old", whole=True),
        ResetVad(),
    ]


def test_an_ignored_interruption_shorter_than_the_pause_resumes_nothing() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    commands = turns.handle(verdict(turns, ListenState.IGNORE, turn_ended=True))
    assert commands == [NoteHeard("resp_old", whole=True), ResetVad()]


def test_the_head_taking_the_turn_announces_it_and_starts_the_new_answer() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    answer = stream()
    commands = turns.handle(
        verdict(turns, ListenState.ANSWER, answer_id="resp_new", turn_ended=True, stream=answer)
    )
    # speech_started before anything else; the engine has cancelled the old answer (turn_detected)
    assert kinds(commands) == [
        AnnounceSpeechStarted,
        AnnounceSpeechStopped,
        AnnounceCommitted,
        ResetVad,
        StartResponse,
    ]
    assert turns.interruption is None


def test_without_create_response_a_taken_interruption_cancels_the_answer() -> None:
    turns = machine(create_response=False)
    answering(turns)
    start_speech(turns)
    commands = turns.handle(verdict(turns, ListenState.ANSWER))
    assert commands[-1] == CancelResponse("resp_old", CancelCause.TURN_DETECTED)
    assert turns.phase == TurnPhase.AWAITING_RESPONSE


def test_an_interruption_the_vad_closes_is_released_once_heard() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    turns.handle(AudioHeard(1300))
    turns.handle(VadSpeech(audio(1)))
    commands = turns.handle(VadSpeechStopped(1500))
    assert kinds(commands) == [AnnounceSpeechStopped, FeedChunk, QueueRelease]
    assert commands[1].act  # the head may still take the turn on the last of it
    assert commands[2] == QueueRelease(turns.turn)
    commands = turns.handle(ReleaseReached(turns.turn))
    assert kinds(commands) == [AnnounceCleared, ResumeResponse, NoteHeard, ResetVad, QueueDrop]
    assert turns.phase == TurnPhase.IDLE


def test_an_interruption_whose_answer_ended_becomes_an_ordinary_turn() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    turns.handle(ResponseFinished("resp_old"))
    assert turns.answering is None
    assert kinds(turns.handle(AudioHeard(1300))) == [AnnounceSpeechStarted]  # no pause: nothing plays
    assert turns.interruption is None
    assert kinds(turns.handle(VadSpeechStopped(1500)))[-1] == QueueCommit


def test_a_release_after_the_answer_ended_answers_the_turn() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    turns.handle(AudioHeard(1300))
    turns.handle(VadSpeechStopped(1500))
    turns.handle(ResponseFinished("resp_old"))
    assert turns.handle(ReleaseReached(turns.turn)) == [QueueCommit(turns.turn)]
    assert turns.phase == TurnPhase.LISTENING


def test_interrupt_response_false_lets_the_answer_play_on() -> None:
    turns = machine(interrupt_response=False)
    answering(turns)
    assert start_speech(turns) == []
    assert turns.phase == TurnPhase.IDLE
    turns.handle(ResponseFinished("resp_old"))
    assert kinds(start_speech(turns))[0] == AnnounceSpeechStarted


def test_another_responses_end_leaves_the_interruption_alone() -> None:
    turns = machine()
    answering(turns)
    start_speech(turns)
    turns.handle(ResponseFinished("resp_other"))
    assert turns.answering == "resp_old"
    assert kinds(turns.handle(AudioHeard(1300)))[0] == PauseResponse


# -- push to talk and client events ---------------------------------------------------------------------
def test_push_to_talk_turn_is_committed_by_the_client() -> None:
    turns = machine(server_vad=False)
    commands = turns.handle(PushToTalkAudio(audio(CHUNK + 2)))
    assert kinds(commands) == [FeedChunk] and not commands[0].act
    assert turns.handle(AudioHeard(100)) == []
    commands = turns.handle(ClientCommit())
    assert kinds(commands) == [FeedChunk, AnnounceCommitted]  # never announced: no speech_stopped
    assert turns.phase == TurnPhase.AWAITING_RESPONSE and turns.item_id is None
    assert turns.handle(PushToTalkAudio(audio(CHUNK))) == []  # waits for response.create
    assert kinds(turns.handle(ResponseRequested(False))) == [QueueCommit]
    assert kinds(turns.handle(CommitReached(turns.turn))) == [CommitNow]  # committed already


def test_an_empty_commit_is_refused() -> None:
    turns = machine(server_vad=False)
    assert turns.handle(ClientCommit()) == [RefuseEmptyCommit()]
    turns.handle(ClientCommit())
    assert turns.phase == TurnPhase.IDLE


def test_clear_drops_an_open_turn() -> None:
    turns = machine()
    assert turns.handle(ClientClear()) == []
    answering(turns)
    start_speech(turns)
    turns.handle(AudioHeard(1300))
    assert kinds(turns.handle(ClientClear())) == [ResumeResponse, NoteHeard, ResetVad, QueueDrop]


def test_an_audio_item_is_a_whole_turn_waiting_for_response_create() -> None:
    turns = machine()
    start_speech(turns)
    commands = turns.handle(AudioItemAdded("item_client", audio(2 * CHUNK + 1)))
    assert kinds(commands) == [ResetVad, QueueDrop, FeedChunk, FeedChunk, FeedChunk]
    assert not any(c.act for c in commands if isinstance(c, FeedChunk))
    assert turns.phase == TurnPhase.AWAITING_RESPONSE


def test_response_create_routes() -> None:
    turns = machine()
    assert turns.handle(ResponseRequested(typed_text_waiting=False)) == []  # idle: the caller answers
    start_speech(turns)
    turns.handle(VadSpeech(audio(1)))
    commands = turns.handle(ResponseRequested(typed_text_waiting=False, request="req"))
    assert kinds(commands) == [FeedChunk, QueueCommit] and commands[1].request == "req"
    # a typed turn wins over speech in progress
    turns = machine()
    start_speech(turns)
    assert kinds(turns.handle(ResponseRequested(typed_text_waiting=True))) == [ResetVad, QueueDrop]
    assert turns.turn_in_progress is False


def test_a_detection_change_drops_a_listening_turn_only() -> None:
    turns = machine()
    start_speech(turns)
    commands = turns.handle(DetectionChanged(TurnSettings(server_vad=False)))
    assert kinds(commands) == [ResetVad, QueueDrop] and not turns.settings.server_vad
    turns.handle(PushToTalkAudio(audio(CHUNK)))
    turns.handle(ClientCommit())
    assert turns.handle(DetectionChanged(TurnSettings())) == []
    assert turns.phase == TurnPhase.AWAITING_RESPONSE


def test_every_turn_number_is_new() -> None:
    turns = machine()
    seen = {turns.turn}
    for _ in range(3):
        start_speech(turns)
        seen.add(turns.turn)
        turns.handle(verdict(turns, ListenState.IGNORE, turn_ended=True))
        seen.add(turns.turn)
    assert len(seen) == 7


def test_an_unknown_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="no rule"):
        machine().handle("speech")  # type: ignore[arg-type]
