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
    chunker = SimpleNamespace(tokens_to_next_window=lambda: 1)  # its next window is one token away
    playing = SimpleNamespace(first_audio_at=1.0, chunker=chunker)
    first = SimpleNamespace(first_audio_at=None, chunker=chunker)
    scheduler.stats.recent_step_s = 0.010  # short steps: one token keeps pace
    assert [scheduler._speech_tokens(playing, ahead) for ahead in (1.5, 0.5, -0.1)] == [1, 1, 2]
    assert scheduler._speech_tokens(first, 0.0) == 2
    scheduler.stats.recent_step_s = 0.060  # 60 ms steps: three tokens keep pace
    assert [scheduler._speech_tokens(playing, ahead) for ahead in (1.5, 0.5, -0.1)] == [1, 3, 4]
    assert scheduler._speech_tokens(first, 0.0) == 4
    scheduler.stats.recent_step_s = 0.090  # four tokens keep pace: the most, not yet overloaded
    assert [scheduler._speech_tokens(playing, ahead) for ahead in (1.5, 0.5, -0.1)] == [1, 4, 4]


def test_an_answer_gets_the_tokens_to_finish_its_next_window_before_its_audio_runs_out(tiny_model) -> None:
    """Audio comes a codec window at a time: 20 tokens (0.5 s) in a reply's first segment. At the bare
    pace (one token per 25 ms step) the next window would be ready just as the last one's audio ran
    out; the answer gets enough to finish it with 100 ms of audio to spare."""
    from types import SimpleNamespace

    scheduler = Engine(tiny_model, greedy_settings(speech_tokens_per_step=4, max_audio_ahead_s=2.0)).scheduler
    scheduler.stats.recent_step_s = 0.025

    def answer(need: int):
        return SimpleNamespace(
            first_audio_at=1.0, chunker=SimpleNamespace(tokens_to_next_window=lambda: need)
        )

    # 20 tokens due in (0.5 - 0.1) s = 16 steps: 2 a step; in 8 steps: 3; in 2 steps: the most.
    assert [scheduler._speech_tokens(answer(20), ahead) for ahead in (0.5, 0.3, 0.15)] == [2, 3, 4]
    assert scheduler._speech_tokens(answer(2), 0.5) == 1  # nearly there: the pace is enough
    assert scheduler._speech_tokens(answer(40), 1.5) == 1  # 1.4 s for 40 tokens: one a step
    bare_pace = Engine(tiny_model, greedy_settings(speech_tokens_per_step=4, window_deadline=False)).scheduler
    bare_pace.stats.recent_step_s = 0.025
    assert [bare_pace._speech_tokens(answer(20), ahead) for ahead in (0.5, 0.3, 0.15)] == [1, 1, 1]


def _speaking(session_id: str, ahead: float | None, need: int = 1):
    """A session in a step's plan: an answer with speech to make, `ahead` s of audio ahead of its
    playback (None: owing its first audio), its next codec window `need` tokens away."""
    from types import SimpleNamespace

    from app.engine.state import AnswerPhase

    answer = SimpleNamespace(
        phase=AnswerPhase.SPEECH_ONLY,
        last_token=None,
        segment=object(),
        pending_segments=(),
        first_audio_at=None if ahead is None else 1.0,
        audio_ahead_s=lambda now, rate: 0.0 if ahead is None else ahead,
        chunker=SimpleNamespace(tokens_to_next_window=lambda: need),
    )
    return SimpleNamespace(session_id=session_id, closed=False, error=None, listen=None, answer=answer)


def test_an_overloaded_step_gives_the_tokens_to_first_audio_and_answers_about_to_run_dry(tiny_model) -> None:
    """Steps so slow that even the most tokens cannot keep pace (here 200 ms: 8 tokens of audio a step,
    4 at most): answers owing first audio, or which must start now to finish their next window (at the
    most a step) before their audio runs out, get the most; those that could wait two steps none (left
    out of the step); the rest one. Before, every answer got the most."""
    engine = Engine(tiny_model, greedy_settings(speech_tokens_per_step=4, max_audio_ahead_s=2.0))
    scheduler = engine.scheduler
    scheduler.stats.recent_step_s = 0.200
    sessions = [
        _speaking("far", 1.5),
        _speaking("held", 0.7),  # (0.7 - 0.1) / 0.2 = 3 steps of audio, its window one token away
        _speaking("window", 0.7, need=20),  # the same audio, but 20 tokens to its next window: 5 steps
        _speaking("between", 0.45),
        _speaking("dry", 0.1),
        _speaking("behind", -0.2),
        _speaking("first", None),
    ]
    plan = scheduler.plan(now=10.0, sessions=sessions)
    assert plan.speech_tokens == {"window": 4, "between": 1, "dry": 4, "behind": 4, "first": 4}
    # First audio first, then the least ahead; the held ones take no part in the speech decoder.
    assert [s.session_id for s in plan.speech] == ["first", "behind", "dry", "between", "window"]
    # The same answers in a step that keeps pace (50 ms: two tokens) are all planned.
    scheduler.stats.recent_step_s = 0.050
    plan = scheduler.plan(now=10.0, sessions=sessions)
    assert plan.speech_tokens == {
        "far": 1,
        "held": 2,
        "window": 2,
        "between": 2,
        "dry": 2,
        "behind": 3,
        "first": 3,
    }
    # The spreading rule, kept for comparison: every answer short of its look-ahead gets the most.
    spreading = Engine(
        tiny_model, greedy_settings(speech_tokens_per_step=4, max_audio_ahead_s=2.0, overload_priority=False)
    ).scheduler
    spreading.stats.recent_step_s = 0.200
    plan = spreading.plan(now=10.0, sessions=sessions)
    assert plan.speech_tokens == {
        "far": 1,
        "held": 4,
        "window": 4,
        "between": 4,
        "dry": 4,
        "behind": 4,
        "first": 4,
    }


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
    # Only while an LLM forward is a small share of a step (measured; here injected).
    scheduler.stats.record_step(0.040, llm_forward_s=0.004)  # a tenth of the step
    assert scheduler.stats.recent_llm_share == pytest.approx(0.1)
    assert scheduler._text_tokens(answer()) == 3
    for _ in range(30):
        scheduler.stats.record_step(0.040, llm_forward_s=0.030)  # three quarters: a big LLM
    assert scheduler.stats.recent_llm_share > 0.7
    assert scheduler._text_tokens(answer()) == 1
    scheduler.stats.record_step(0.040)  # a step without the LLM changes nothing
    assert scheduler._text_tokens(answer()) == 1
    always = Engine(tiny_model, greedy_settings(first_text_max_llm_share=1.0)).scheduler
    always.stats.recent_llm_share = 0.9
    assert always._text_tokens(answer()) == 3
    never = Engine(tiny_model, greedy_settings(first_text_max_llm_share=0.0)).scheduler
    assert never._text_tokens(answer()) == 1


@pytest.mark.parametrize("text_tokens", [1, 3])
def test_several_text_tokens_per_step_keep_the_offline_output(tiny_model, question_wavs, text_tokens) -> None:
    wav = question_wavs[0]
    reference = OfflinePipeline(tiny_model).run(wav, InferOptions.greedy(max_new_tokens=MAX_TOKENS, seed=5))

    async def main():
        engine = Engine(
            tiny_model, greedy_settings(first_text_tokens_per_step=text_tokens, first_text_max_llm_share=1.0)
        )
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
