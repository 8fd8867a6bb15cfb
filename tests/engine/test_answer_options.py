"""Answer options on the tiny model: text-only answers skip speech, out-of-band answers leave the
conversation as it was, per-answer token caps and instructions, answers with no new user input."""

from __future__ import annotations

import asyncio

from app.engine.engine import Engine
from app.engine.events import AnswerOptions, AnswerStatus
from tests.engine.test_engine import collect, greedy_settings


def run_engine(model, body, **settings):
    async def main():
        engine = Engine(model, greedy_settings(**settings))
        await engine.start()
        try:
            return await body(engine)
        finally:
            await engine.stop()

    return asyncio.run(main())


def test_text_only_answer_has_the_same_text_and_no_speech_work(tiny_model) -> None:
    async def body(engine: Engine):
        spoken_sid = await engine.open_session(seed=3)
        text_sid = await engine.open_session(seed=3)
        spoken = await collect(await engine.text_turn(spoken_sid, "What can you do?"))
        steps_before = dict(engine.stats.rows)
        text_only = await collect(
            await engine.text_turn(text_sid, "What can you do?", AnswerOptions(speak=False))
        )
        return spoken, text_only, steps_before, dict(engine.stats.rows)

    (spoken_done, spoken_audio, _), (done, audio, _), before, after = run_engine(tiny_model, body)
    assert done.status == AnswerStatus.COMPLETED
    assert done.token_ids == spoken_done.token_ids and done.text == spoken_done.text
    assert len(spoken_audio) > 0 and len(audio) == 0
    assert done.codec_ids == () and done.stats["audio_tokens"] == 0
    # No speech decoder or codec rows ran for the text-only answer.
    assert after.get("decoder", 0) == before.get("decoder", 0)
    assert after.get("codec", 0) == before.get("codec", 0)


def test_session_defaults_apply_to_answers(tiny_model) -> None:
    async def body(engine: Engine):
        sid = await engine.open_session(seed=3)
        await engine.set_answer_defaults(sid, AnswerOptions(speak=False, max_tokens=3))
        return await collect(await engine.text_turn(sid, "What can you do?"))

    done, audio, _ = run_engine(tiny_model, body)
    assert len(audio) == 0 and len(done.token_ids) == 3


def test_out_of_band_answer_leaves_the_conversation_unchanged(tiny_model) -> None:
    async def body(engine: Engine, out_of_band: bool):
        sid = await engine.open_session(seed=5)
        await collect(await engine.text_turn(sid, "Hello."))
        length = engine.llm_cache.lengths[engine.sessions[sid].main_slot]
        history = len(engine.sessions[sid].history)
        if out_of_band:
            side, _, _ = await collect(
                await engine.text_turn(sid, "Summarise the weather.", AnswerOptions(out_of_band=True))
            )
            assert side.status == AnswerStatus.COMPLETED and side.token_ids
            assert engine.llm_cache.lengths[engine.sessions[sid].main_slot] == length
            assert len(engine.sessions[sid].history) == history
        done, _, _ = await collect(await engine.text_turn(sid, "What can you do?"))
        return done.token_ids

    with_side = run_engine(tiny_model, lambda e: body(e, True))
    without = run_engine(tiny_model, lambda e: body(e, False))
    assert with_side == without


def test_answer_without_user_input_and_per_answer_instructions(tiny_model) -> None:
    async def body(engine: Engine):
        sid = await engine.open_session(seed=8)
        greeting = await collect(await engine.respond(sid))
        plain = await collect(await engine.respond(sid, AnswerOptions(out_of_band=True)))
        steered = await collect(
            await engine.respond(
                sid, AnswerOptions(out_of_band=True, instructions="Greet the user like a pirate.")
            )
        )
        return greeting, plain, steered

    greeting, plain, steered = run_engine(tiny_model, body)
    assert greeting[0].status == AnswerStatus.COMPLETED and greeting[0].token_ids and len(greeting[1]) > 0
    assert plain[0].token_ids != steered[0].token_ids  # the instructions reached the model


def test_usage_counts_what_went_in_and_out(tiny_model) -> None:
    async def body(engine: Engine):
        sid = await engine.open_session(seed=3)
        return await collect(await engine.text_turn(sid, "What can you do?"))

    done, _, _ = run_engine(tiny_model, body)
    tokens = len(tiny_model.tokenize("What can you do?"))
    assert done.stats["input_text_tokens"] == tokens
    assert done.stats["text_tokens"] == len(done.token_ids)
    assert done.stats["audio_tokens"] == sum(len(ids) for ids in done.codec_ids) > 0
