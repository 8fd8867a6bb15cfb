"""Several codec tokens per step for answers behind their playback: the tokens are the offline pipeline's,
only made sooner; and the codec on its own lane or inside the step gives the same audio."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from app.engine.engine import Engine
from app.engine.events import AnswerStatus
from app.model.pipeline import InferOptions, OfflinePipeline
from tests.engine.test_engine import MAX_TOKENS, greedy_settings, listen_then_answer


@pytest.mark.parametrize(("tokens_per_step", "codec_thread"), [(1, True), (4, True), (1, False)])
def test_several_tokens_per_step_keep_the_offline_output(
    tiny_model, question_wavs, tokens_per_step, codec_thread
) -> None:
    wav = question_wavs[1]
    reference = OfflinePipeline(tiny_model).run(wav, InferOptions.greedy(max_new_tokens=MAX_TOKENS, seed=3))

    async def main():
        engine = Engine(
            tiny_model, greedy_settings(speech_tokens_per_step=tokens_per_step, codec_thread=codec_thread)
        )
        await engine.start()
        try:
            session_id = await engine.open_session(seed=3)
            result = await listen_then_answer(engine, session_id, wav)
            return result, engine.stats.rows["decoder"], engine.stats.forwards_with_rows["decoder"]
        finally:
            await engine.stop()

    (states, done, audio, text), decoder_rows, decoder_steps = asyncio.run(main())
    assert done.status == AnswerStatus.COMPLETED
    assert states == reference.states
    assert list(done.token_ids) == reference.token_ids
    assert [list(ids) for ids in done.codec_ids] == reference.codec_ids
    assert text == reference.text
    np.testing.assert_allclose(audio, reference.audio, atol=1e-4)
    # One session: more decoder rows than steps that ran the decoder means several tokens in a step.
    if tokens_per_step == 1:
        assert decoder_rows == decoder_steps
    else:
        assert decoder_rows > decoder_steps
        assert decoder_rows <= tokens_per_step * decoder_steps


def test_speech_tokens_follow_the_pace_of_steps(tiny_model) -> None:
    """Tokens per step: the pace (cadence / 25 ms) near playback, one more when behind or owing first
    audio, one when well ahead, never more than the setting."""
    from types import SimpleNamespace

    engine = Engine(tiny_model, greedy_settings(speech_tokens_per_step=4, max_audio_ahead_s=2.0))
    scheduler = engine.scheduler
    playing, first = SimpleNamespace(first_audio_at=1.0), SimpleNamespace(first_audio_at=None)
    scheduler.stats.recent_step_s = 0.010  # short steps: one token keeps pace
    assert [scheduler._speech_tokens(playing, ahead) for ahead in (1.5, 0.5, -0.1)] == [1, 1, 2]
    assert scheduler._speech_tokens(first, 0.0) == 2
    scheduler.stats.recent_step_s = 0.060  # 60 ms steps: three tokens keep pace
    assert [scheduler._speech_tokens(playing, ahead) for ahead in (1.5, 0.5, -0.1)] == [1, 3, 4]
    assert scheduler._speech_tokens(first, 0.0) == 4
    scheduler.stats.recent_step_s = 0.090  # four tokens keep pace: the most, not yet overloaded
    assert [scheduler._speech_tokens(playing, ahead) for ahead in (1.5, 0.5, -0.1)] == [1, 4, 4]


def _speaking(session_id: str, ahead: float | None):
    """A session in a step's plan: an answer with speech to make, `ahead` s of audio ahead of its
    playback (None: owing its first audio)."""
    from types import SimpleNamespace

    from app.engine.state import AnswerPhase

    answer = SimpleNamespace(
        phase=AnswerPhase.SPEECH_ONLY,
        last_token=None,
        segment=object(),
        pending_segments=(),
        first_audio_at=None if ahead is None else 1.0,
        audio_ahead_s=lambda now, rate: 0.0 if ahead is None else ahead,
    )
    return SimpleNamespace(session_id=session_id, closed=False, error=None, listen=None, answer=answer)


def test_an_overloaded_step_gives_the_tokens_to_first_audio_and_answers_about_to_run_dry(tiny_model) -> None:
    """Steps so slow that even the most tokens cannot keep pace (here 200 ms: 8 tokens of audio a step,
    4 at most): answers owing first audio or with less than a step of audio get the most, those with
    two steps of audio none (left out of the step), the rest one. Before, every answer got the most."""
    engine = Engine(tiny_model, greedy_settings(speech_tokens_per_step=4, max_audio_ahead_s=2.0))
    scheduler = engine.scheduler
    scheduler.stats.recent_step_s = 0.200
    sessions = [
        _speaking("far", 1.5),
        _speaking("held", 0.5),
        _speaking("between", 0.3),
        _speaking("dry", 0.1),
        _speaking("behind", -0.2),
        _speaking("first", None),
    ]
    plan = scheduler.plan(now=10.0, sessions=sessions)
    assert plan.speech_tokens == {"between": 1, "dry": 4, "behind": 4, "first": 4}
    # First audio first, then the least ahead; the held ones take no part in the speech decoder.
    assert [s.session_id for s in plan.speech] == ["first", "behind", "dry", "between"]
    # The same answers in a step that keeps pace (50 ms: two tokens) are all planned.
    scheduler.stats.recent_step_s = 0.050
    plan = scheduler.plan(now=10.0, sessions=sessions)
    assert plan.speech_tokens == {"far": 1, "held": 2, "between": 2, "dry": 2, "behind": 3, "first": 3}
    # The spreading rule, kept for comparison: every answer short of its look-ahead gets the most.
    spreading = Engine(
        tiny_model, greedy_settings(speech_tokens_per_step=4, max_audio_ahead_s=2.0, overload_priority=False)
    ).scheduler
    spreading.stats.recent_step_s = 0.200
    plan = spreading.plan(now=10.0, sessions=sessions)
    assert plan.speech_tokens == {"far": 1, "held": 4, "between": 4, "dry": 4, "behind": 4, "first": 4}


def test_answers_owing_their_first_segment_get_several_text_tokens(tiny_model) -> None:
    from types import SimpleNamespace

    engine = Engine(tiny_model, greedy_settings(first_text_tokens_per_step=3))
    scheduler = engine.scheduler

    def answer(speak=True, pending=(), segment=None, codec_ids=()):
        return SimpleNamespace(speak=speak, pending_segments=pending, segment=segment, codec_ids=codec_ids)

    assert scheduler._text_tokens(answer()) == 3
    assert scheduler._text_tokens(answer(pending=("a segment",))) == 1  # its speech can start
    assert scheduler._text_tokens(answer(segment=object())) == 1
    assert scheduler._text_tokens(answer(codec_ids=([1, 2],))) == 1  # a later segment: it is speaking
    assert scheduler._text_tokens(answer(speak=False)) == 1  # text only: every token is sent at once
    single = Engine(tiny_model, greedy_settings(first_text_tokens_per_step=1)).scheduler
    assert single._text_tokens(answer()) == 1


@pytest.mark.parametrize("text_tokens", [1, 3])
def test_several_text_tokens_per_step_keep_the_offline_output(tiny_model, question_wavs, text_tokens) -> None:
    wav = question_wavs[0]
    reference = OfflinePipeline(tiny_model).run(wav, InferOptions.greedy(max_new_tokens=MAX_TOKENS, seed=5))

    async def main():
        engine = Engine(tiny_model, greedy_settings(first_text_tokens_per_step=text_tokens))
        await engine.start()
        try:
            session_id = await engine.open_session(seed=5)
            result = await listen_then_answer(engine, session_id, wav)
            return result, engine.stats
        finally:
            await engine.stop()

    (states, done, audio, text), stats = asyncio.run(main())
    assert done.status == AnswerStatus.COMPLETED
    assert states == reference.states
    assert list(done.token_ids) == reference.token_ids
    assert [list(ids) for ids in done.codec_ids] == reference.codec_ids
    assert text == reference.text
    np.testing.assert_allclose(audio, reference.audio, atol=1e-4)
    # One session: listen rows are one per LLM step; answer rows are more than the steps only with
    # several text tokens a step.
    answer_rows = stats.rows["llm"] - stats.rows["encoder"]
    answer_steps = stats.forwards_with_rows["llm"] - stats.forwards_with_rows["encoder"]
    assert len(reference.token_ids) >= 3
    if text_tokens == 1:
        assert answer_rows == answer_steps
    else:
        assert answer_rows > answer_steps
