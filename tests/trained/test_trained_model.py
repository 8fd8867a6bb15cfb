"""The committed trained model answers questions it never heard, speaks intelligibly, and takes turns.

Requirements beyond the project's own: espeak-ng (apt) for the recordings, pocketsphinx==5.1.1 and
jiwer (pip) to transcribe the spoken answers.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from app.engine.engine import Engine
from app.engine.events import AnswerDone, AnswerStatus, TextDelta
from app.engine.settings import EngineSettings
from app.model.checkpoint_io.defaults import ensure_default_model
from app.model.llm.duplex import ListenState
from app.model.llm.sampling import LLMSampling
from training import domain
from training.asr import transcribe, word_error_rate
from training.common import MODEL_DIR
from training.heldout import CHUNK, held_out_question

MAX_WER = 0.10
MAX_WRONG_ANSWERS = 1


def _chunks(samples: np.ndarray) -> list[np.ndarray]:
    padded = np.concatenate([samples, np.zeros((-len(samples)) % CHUNK, dtype=np.float32)])
    return [padded[i : i + CHUNK] for i in range(0, len(padded), CHUNK)]


def _settings() -> EngineSettings:
    return EngineSettings(
        max_sessions=4,
        max_answer_tokens=60,
        sampling=LLMSampling(greedy=True),
        decoder_greedy=True,
        llm_max_len=2048,
        admission_max_load=0.0,
    )


def test_the_trained_model_is_the_default(trained_paths) -> None:
    assert ensure_default_model().root == MODEL_DIR
    size = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert size < 50e6


def test_held_out_questions_get_the_expected_text_answer(question_turns) -> None:
    assert len(question_turns) >= 10
    wrong = [(rec.description, result.text) for rec, result in question_turns if result.text != rec.answer]
    # At most one miss: the shipped fine-tune (training/README.md) answers 48 of 50 clean held-out questions
    # (one of them here: "two times three" heard as "three times three" in one voice).
    assert len(wrong) <= MAX_WRONG_ANSWERS, f"{len(wrong)} of {len(question_turns)} answered wrongly: {wrong}"


def test_spoken_answers_are_intelligible(question_turns) -> None:
    answers = domain.answers()
    heard = [transcribe(result.audio, 24000, answers) for _, result in question_turns]
    wer = word_error_rate([rec.answer for rec, _ in question_turns], heard)
    assert wer <= MAX_WER, (
        f"WER {wer:.1%}: {list(zip([r.answer for r, _ in question_turns], heard, strict=True))}"
    )


def test_a_question_followed_by_silence_is_answered_within_two_chunks(question_turns) -> None:
    for rec, result in question_turns:
        states = result.states
        first = next((i for i, s in enumerate(states) if s == ListenState.ANSWER.value), None)
        assert first is not None, f"{rec.description}: never answered; states {states}"
        assert first >= rec.end_chunk, f"{rec.description}: answered before the question ended: {states}"
        assert first <= rec.end_chunk + 2, f"{rec.description}: answered {first - rec.end_chunk} chunks late"


async def _listen_states(engine: Engine, samples: np.ndarray) -> list[ListenState]:
    sid = await engine.open_session()
    try:
        return [(await engine.feed_chunk(sid, chunk, act=False)).state for chunk in _chunks(samples)]
    finally:
        await engine.close_session(sid)


def test_noise_and_backchannels_are_not_answered(trained_model, ignorables) -> None:
    async def main():
        engine = Engine(trained_model, _settings())
        await engine.start()
        try:
            return [await _listen_states(engine, rec.samples) for rec in ignorables]
        finally:
            await engine.stop()

    all_states = asyncio.run(main())
    answered = [
        rec.description
        for rec, states in zip(ignorables, all_states, strict=True)
        if ListenState.ANSWER in states
    ]
    assert not answered, f"answered: {answered}"
    ignored = sum(ListenState.IGNORE in states for states in all_states)
    assert ignored >= len(ignorables) // 2, f"only {ignored} of {len(ignorables)} were called ignorable"


def test_a_question_during_an_answer_barges_in(trained_model) -> None:
    first = held_out_question(0, 12, seed=91_000)  # "What is two plus two?"
    second = held_out_question(1, 27, seed=91_001)  # "What color is the sky?"

    async def main():
        # The chunks go in as fast as the engine hears them, not at real time: with one codec token per
        # step the first answer's speech is still being made while the second question is heard (with
        # several, this short answer could end first: no barge-in left to test).
        engine = Engine(trained_model, replace(_settings(), speech_tokens_per_step=1))
        await engine.start()
        try:
            sid = await engine.open_session(seed=0)
            for chunk in _chunks(first.samples):
                decision = await engine.feed_chunk(sid, chunk, act=True)
                if decision.state == ListenState.ANSWER:
                    break
            assert decision.answer_id is not None, "the first question was not answered"
            running = decision.stream
            assert not isinstance(await running.next_event(), AnswerDone)
            decisions = []
            for chunk in _chunks(second.samples):
                decisions.append(await engine.feed_chunk(sid, chunk, act=True))
                if decisions[-1].state == ListenState.ANSWER:
                    break
            stream = decisions[-1].stream
            text = ""
            async for event in stream:
                if isinstance(event, TextDelta):
                    text += event.text
            async for _ in running:  # the interrupted answer's remaining events, up to its end
                pass
            return decisions, running, stream, text
        finally:
            await engine.stop()

    decisions, running, stream, text = asyncio.run(main())
    states = [d.state for d in decisions]
    assert states[-1] == ListenState.ANSWER, f"no barge-in: {states}"
    assert len(decisions) - 1 >= second.end_chunk, "barged in before the second question ended"
    assert running.done is not None and running.done.status == AnswerStatus.CANCELLED
    assert stream.done.status == AnswerStatus.COMPLETED
    assert text == second.answer


def test_int8_llm_weights_say_what_fp32_says(trained_paths, held_out_questions, question_turns) -> None:
    """The server's default on a CPU with native bf16 (`FREEZE_OMNI_LLM_WEIGHTS=auto`) is int8 LLM weights:
    on held-out recordings its greedy answers, state decisions and speech tokens must be fp32's."""
    from app.model.checkpoint_io.layout import load_freeze_omni
    from app.model.pipeline import InferOptions, OfflinePipeline

    model = load_freeze_omni(trained_paths.model_path, trained_paths.llm_path, llm_weights="int8")
    pipeline = OfflinePipeline(model)
    for rec, fp32 in question_turns:
        int8 = pipeline.run(rec.samples, InferOptions.greedy())
        assert (int8.text, int8.states) == (fp32.text, fp32.states), rec.description
        assert int8.codec_ids == fp32.codec_ids, rec.description
        probs = np.array(int8.state_probs) - np.array(fp32.state_probs)
        assert np.abs(probs).max() < 0.02, rec.description
