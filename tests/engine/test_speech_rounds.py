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
    scheduler.stats.recent_step_s = 0.500  # capped by the setting
    assert scheduler._speech_tokens(playing, 0.5) == 4
