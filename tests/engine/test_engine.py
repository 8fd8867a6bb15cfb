"""The engine on the tiny model: equivalence with the offline pipeline, barge-in, isolation."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from app.engine.engine import AnswerStream, Engine
from app.engine.errors import CapacityError, SessionClosedError
from app.engine.events import AnswerDone, AnswerStatus, AudioDelta, CancelCause, TextDelta
from app.engine.pool import EnginePool
from app.engine.settings import EngineSettings
from app.model.checkpoint_io.layout import FreezeOmni, load_freeze_omni
from app.model.llm.duplex import ListenState
from app.model.llm.sampling import LLMSampling
from app.model.pipeline import InferOptions, OfflinePipeline
from tests.engine.conftest import chunks_of

MAX_TOKENS = 24


def greedy_settings(**overrides) -> EngineSettings:
    values = dict(
        max_sessions=16,
        max_answer_tokens=MAX_TOKENS,
        sampling=LLMSampling(greedy=True),
        decoder_greedy=True,
        trim_leading_silence=False,
        llm_max_len=2048,
        admission_max_load=0.0,  # outputs, not capacity: tests/engine/test_admission.py has those
    )
    values.update(overrides)
    return EngineSettings(**values)


@pytest.fixture(scope="module")
def own_model(tiny_model_dir) -> FreezeOmni:
    """A private copy of the tiny model: these tests set the state head's bias."""
    return load_freeze_omni(tiny_model_dir.model_path, tiny_model_dir.llm_path)


@contextmanager
def forced_state(model: FreezeOmni, state: ListenState) -> Iterator[None]:
    """Make the state head always say `state` (by its bias only; the model itself runs)."""
    bias = model.audio.predictor_head.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.zero_()
        bias[{ListenState.LISTEN: 0, ListenState.ANSWER: 1, ListenState.IGNORE: 2}[state]] = 50.0
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


async def collect(stream: AnswerStream) -> tuple[AnswerDone, np.ndarray, str]:
    audio, text = [], ""
    async for event in stream:
        if isinstance(event, AudioDelta):
            audio.append(event.samples)
        elif isinstance(event, TextDelta):
            text += event.text
    samples = np.concatenate(audio) if audio else np.zeros(0, np.float32)
    return stream.done, samples, text


async def listen_then_answer(engine: Engine, session_id: str, samples: np.ndarray):
    states = []
    for chunk in chunks_of(samples):
        decision = await engine.feed_chunk(session_id, chunk, act=False)
        states.append(decision.state.value)
    stream = await engine.commit_listen(session_id)
    done, audio, text = await collect(stream)
    return states, done, audio, text


@pytest.mark.parametrize("sessions", [1, 4, 16])
def test_concurrent_sessions_match_the_offline_pipeline(tiny_model, question_wavs, sessions) -> None:
    wavs = question_wavs[:sessions]
    pipeline = OfflinePipeline(tiny_model)
    references = [
        pipeline.run(w, InferOptions.greedy(max_new_tokens=MAX_TOKENS, seed=i)) for i, w in enumerate(wavs)
    ]

    async def main():
        engine = Engine(tiny_model, greedy_settings())
        await engine.start()
        try:
            ids = [await engine.open_session(seed=i) for i in range(sessions)]
            results = await asyncio.gather(
                *(listen_then_answer(engine, sid, w) for sid, w in zip(ids, wavs, strict=True))
            )
            return results, dict(engine.stats.rows), engine.stats.forwards_with_rows
        finally:
            await engine.stop()

    results, rows, forwards = asyncio.run(main())
    for reference, (states, done, audio, text) in zip(references, results, strict=True):
        assert done.status == AnswerStatus.COMPLETED
        assert states == reference.states
        assert list(done.token_ids) == reference.token_ids
        assert [list(ids) for ids in done.codec_ids] == reference.codec_ids
        assert text == reference.text
        assert len(audio) == len(reference.audio)
        np.testing.assert_allclose(audio, reference.audio, atol=1e-4)
    if sessions > 1:  # the work really was batched across sessions
        assert rows["llm"] / forwards["llm"] > 1.5
        assert rows["encoder"] / forwards["encoder"] > 1.5


def _text_answer(engine: Engine, session_id: str, text: str):
    async def run():
        return await collect(await engine.text_turn(session_id, text))

    return run()


def test_barge_in_cancels_the_answer_within_one_step(own_model, question_wavs) -> None:
    async def main():
        engine = Engine(own_model, greedy_settings(max_answer_tokens=200))
        await engine.start()
        try:
            sid = await engine.open_session(seed=1)
            first = await engine.text_turn(sid, "Tell me a long story about the weather.")
            first_event = await first.next_event()  # the answer is running
            assert not isinstance(first_event, AnswerDone)
            with forced_state(own_model, ListenState.ANSWER):
                decision = await engine.feed_chunk(sid, chunks_of(question_wavs[0])[0], act=True)
            assert decision.state == ListenState.ANSWER and decision.answer_id is not None
            # By the time the verdict is back, the old answer has ended as cancelled.
            events = [first_event]
            while first.done is None:
                events.append(first._queue.get_nowait())
                if isinstance(events[-1], AnswerDone):
                    first.done = events[-1]
            assert first.done.status == AnswerStatus.CANCELLED
            assert first.done.cause == CancelCause.TURN_DETECTED
            second = decision.stream  # the verdict carries the answer it started
            assert second is not None and second.answer_id == decision.answer_id
            done, audio, _ = await collect(second)
            assert done.status == AnswerStatus.COMPLETED and len(audio) > 0
            return engine.llm_cache.num_free, engine.decoder_cache.num_free
        finally:
            await engine.stop()

    asyncio.run(main())


def test_ignored_speech_leaves_the_answer_untouched(own_model, question_wavs) -> None:
    prompt = "What colour is the sky?"

    async def answer(interrupt: bool):
        engine = Engine(own_model, greedy_settings(max_answer_tokens=60))
        await engine.start()
        try:
            sid = await engine.open_session(seed=2)
            stream = await engine.text_turn(sid, prompt)
            if interrupt:
                await stream.next_event()
                with forced_state(own_model, ListenState.IGNORE):
                    decisions = [
                        await engine.feed_chunk(sid, c, act=True) for c in chunks_of(question_wavs[1])[:3]
                    ]
                assert decisions[0].state == ListenState.IGNORE
            done, audio, text = await collect(stream)
            return done, audio, text
        finally:
            await engine.stop()

    plain = asyncio.run(answer(False))
    interrupted = asyncio.run(answer(True))
    assert interrupted[0].status == AnswerStatus.COMPLETED
    assert interrupted[0].token_ids == plain[0].token_ids
    assert interrupted[0].codec_ids == plain[0].codec_ids
    np.testing.assert_allclose(interrupted[1], plain[1], atol=1e-4)


def test_ignored_turn_when_idle_leaves_no_trace(own_model, question_wavs) -> None:
    async def main(ignored_first: bool):
        engine = Engine(own_model, greedy_settings())
        await engine.start()
        try:
            sid = await engine.open_session(seed=3)
            if ignored_first:
                with forced_state(own_model, ListenState.IGNORE):
                    decision = await engine.feed_chunk(sid, chunks_of(question_wavs[2])[0], act=True)
                assert decision.state == ListenState.IGNORE
                assert engine.sessions[sid].listen is None
            done, _, _ = await collect(await engine.text_turn(sid, "Good morning."))
            return done
        finally:
            await engine.stop()

    assert asyncio.run(main(True)).token_ids == asyncio.run(main(False)).token_ids


def test_cancel_and_close_free_caches_without_disturbing_others(tiny_model, question_wavs) -> None:
    reference = OfflinePipeline(tiny_model).run(
        question_wavs[3], InferOptions.greedy(max_new_tokens=MAX_TOKENS, seed=7)
    )

    async def main():
        engine = Engine(tiny_model, greedy_settings())
        await engine.start()
        try:
            free_llm, free_decoder = engine.llm_cache.num_free, engine.decoder_cache.num_free
            keep = await engine.open_session(seed=7)
            cancel = await engine.open_session(seed=8)
            close = await engine.open_session(seed=9)
            kept = asyncio.create_task(listen_then_answer(engine, keep, question_wavs[3]))
            streams = [await engine.text_turn(sid, "Tell me about the weather.") for sid in (cancel, close)]
            await streams[0].next_event()
            await streams[1].next_event()
            await engine.cancel_answer(cancel)
            await engine.close_session(close)
            done_cancel, _, _ = await collect(streams[0])
            done_close, _, _ = await collect(streams[1])
            assert done_cancel.status == done_close.status == AnswerStatus.CANCELLED
            with pytest.raises(SessionClosedError):
                await engine.text_turn(close, "hello")
            await engine.close_session(cancel)
            states, done, audio, _ = await kept
            await engine.close_session(keep)
            assert engine.llm_cache.num_free == free_llm
            assert engine.decoder_cache.num_free == free_decoder
            return states, done, audio
        finally:
            await engine.stop()

    states, done, audio = asyncio.run(main())
    assert states == reference.states
    assert list(done.token_ids) == reference.token_ids
    assert [list(c) for c in done.codec_ids] == reference.codec_ids


def test_an_exception_in_one_session_fails_that_session_alone(tiny_model, question_wavs) -> None:
    class Exploding:
        def push(self, *args):
            raise RuntimeError("injected fault")

        def flush(self):
            raise RuntimeError("injected fault")

    async def main():
        engine = Engine(tiny_model, greedy_settings())
        await engine.start()
        try:
            bad, good = await engine.open_session(seed=1), await engine.open_session(seed=2)
            bad_stream = await engine.text_turn(bad, "Hello there.")
            good_stream = await engine.text_turn(good, "Hello there.")
            engine.sessions[bad].answer.segmenter = Exploding()  # applied between steps
            bad_done, _, _ = await collect(bad_stream)
            good_done, good_audio, _ = await collect(good_stream)
            assert bad_done.status == AnswerStatus.FAILED
            assert good_done.status == AnswerStatus.COMPLETED and len(good_audio) > 0
            with pytest.raises(SessionClosedError, match="failed"):
                await engine.text_turn(bad, "again")
            assert engine.stats.sessions_failed == 1
            assert engine.llm_cache.num_free == engine.llm_cache.shape.num_slots - 2
        finally:
            await engine.stop()

    asyncio.run(main())


def test_capacity_is_refused_at_once_and_the_pool_balances(tiny_model) -> None:
    async def main():
        engines = [Engine(tiny_model, greedy_settings(max_sessions=2), name=f"r{i}") for i in range(2)]
        pool = EnginePool(engines)
        await pool.start()
        try:
            refs = [await pool.open_session() for _ in range(4)]
            assert [e.load for e in engines] == [2, 2]
            with pytest.raises(CapacityError, match="all 4 session places"):
                await pool.open_session()
            await pool.close_session(refs[0].session_id)
            assert (await pool.open_session()).engine is refs[0].engine
        finally:
            await pool.stop()

    asyncio.run(main())


def test_history_is_kept_and_trimmed_with_the_system_prompt(tiny_model) -> None:
    async def main():
        settings = greedy_settings(llm_max_len=450, max_turn_chunks=100, max_answer_tokens=MAX_TOKENS)
        engine = Engine(tiny_model, settings)
        await engine.start()
        try:
            sid = await engine.open_session(seed=5)
            session = engine.sessions[sid]
            lengths = []
            for turn in range(8):
                done, _, _ = await collect(
                    await engine.text_turn(sid, f"Question number {turn}, what is two plus two?")
                )
                assert done.status == AnswerStatus.COMPLETED
                lengths.append(engine.llm_cache.lengths[session.main_slot])
            assert any(b < a for a, b in zip(lengths, lengths[1:], strict=False)), lengths  # trimmed
            assert max(lengths) <= settings.llm_max_len
            turns = {entry.exchange for entry in session.history}
            assert 1 not in turns and 8 in turns  # oldest dropped, newest kept
        finally:
            await engine.stop()

    asyncio.run(main())


def test_instructions_change_the_next_answer_and_keep_history(tiny_model) -> None:
    async def main(role: str | None):
        engine = Engine(tiny_model, greedy_settings())
        await engine.start()
        try:
            sid = await engine.open_session(seed=6)
            await collect(await engine.text_turn(sid, "Hello."))
            history_turns = len(engine.sessions[sid].history)
            if role is not None:
                await engine.set_instructions(sid, role)
            done, _, _ = await collect(await engine.text_turn(sid, "What can you do?"))
            assert len(engine.sessions[sid].history) == history_turns + 1
            return done.token_ids
        finally:
            await engine.stop()

    assert asyncio.run(main("You are a pirate. Answer in riddles.")) != asyncio.run(main(None))


def test_a_turn_at_its_length_limit_is_answered(tiny_model, question_wavs) -> None:
    async def main():
        engine = Engine(tiny_model, greedy_settings(max_turn_chunks=3))
        await engine.start()
        try:
            sid = await engine.open_session(seed=4)
            chunks = chunks_of(question_wavs[0])
            decisions = [await engine.feed_chunk(sid, chunks[i], act=False) for i in range(3)]
            assert [d.answer_id is not None for d in decisions] == [False, False, True]
            stream = decisions[-1].stream
            assert stream is not None and stream.answer_id == decisions[-1].answer_id
            done, audio, _ = await collect(stream)
            assert done.status == AnswerStatus.COMPLETED and len(audio) > 0
        finally:
            await engine.stop()

    asyncio.run(main())


def _squeezed(text: str) -> str:
    return "".join(text.split())


def _cache_matches_history(engine: Engine, sid: str) -> bool:
    session = engine.sessions[sid]
    fed = engine.llm_cache.lengths[session.main_slot]
    system = engine.llm_cache.lengths[session.main_slot] - sum(e.length for e in session.history)
    return fed > 0 and system == session_system_length(engine, session)


def session_system_length(engine: Engine, session) -> int:
    from app.model.turn_parts import system_prefill_embeds

    return system_prefill_embeds(engine.model, session.role).shape[0]


def test_a_truncated_answer_leaves_only_the_heard_text_in_the_conversation(own_model) -> None:
    async def main():
        engine = Engine(own_model, greedy_settings(max_answer_tokens=30))
        await engine.start()
        try:
            sid = await engine.open_session(seed=3)
            stream = await engine.text_turn(sid, "Tell me about the weather.")
            done, _, _ = await collect(stream)
            words = done.text.split()
            assert len(words) >= 4, done.text
            heard = " ".join(words[:2])
            await engine.cut_answer(sid, stream.answer_id, heard)
            ((kind, kept),) = [entry for entry in engine.conversation_text(sid) if entry[0] == "answer"]
            assert _squeezed(heard).startswith(_squeezed(kept)) and len(_squeezed(kept)) > 0
            assert len(_squeezed(kept)) >= len(_squeezed(heard)) - 8  # at most a piece of a word less
            # The next turn reads the conversation again, cut: the cache holds exactly the history.
            second, _, _ = await collect(await engine.text_turn(sid, "And tomorrow?"))
            assert second.status == AnswerStatus.COMPLETED
            answers = [text for kind, text in engine.conversation_text(sid) if kind == "answer"]
            assert answers[0] == kept and len(answers) == 2
            assert _cache_matches_history(engine, sid)
        finally:
            await engine.stop()

    asyncio.run(main())


def test_an_interrupted_answer_keeps_only_what_was_heard_before_the_next_answer(
    own_model, question_wavs
) -> None:
    async def main():
        engine = Engine(own_model, greedy_settings(max_answer_tokens=200))
        await engine.start()
        try:
            sid = await engine.open_session(seed=4)
            first = await engine.text_turn(sid, "Tell me a long story about the weather.")
            text = ""
            while len(text.split()) < 6:
                event = await first.next_event()
                assert not isinstance(event, AnswerDone)
                if isinstance(event, TextDelta):
                    text += event.text
            heard = " ".join(text.split()[:3])
            engine.note_heard(sid, first.answer_id, heard)  # paused here by an interruption
            with forced_state(own_model, ListenState.ANSWER):
                decision = await engine.feed_chunk(sid, chunks_of(question_wavs[0])[0], act=True)
            assert decision.answer_id is not None
            # The new answer starts from a conversation holding only the heard words of the old one.
            answers = [t for kind, t in engine.conversation_text(sid) if kind == "answer"]
            assert _squeezed(heard).startswith(_squeezed(answers[0])) and answers[0].strip()
            done, _, _ = await collect(decision.stream)
            assert done.status == AnswerStatus.COMPLETED
            assert _cache_matches_history(engine, sid)
        finally:
            await engine.stop()

    asyncio.run(main())


def test_the_reasons_of_closed_sessions_are_kept_for_a_bounded_number(tiny_model) -> None:
    """A call that races a session's close is told why it closed; the table of reasons stays bounded
    (a few times the sessions one replica holds), however many sessions come and go."""

    async def main() -> tuple[int, str, str]:
        engine = Engine(tiny_model, greedy_settings(max_sessions=2))
        await engine.start()
        try:
            ids = []
            for _ in range(100):
                session_id = await engine.open_session()
                await engine.close_session(session_id)
                ids.append(session_id)
            kept = len(engine.scheduler._closed_reasons)
            with pytest.raises(SessionClosedError) as latest:
                await engine.text_turn(ids[-1], "hello")
            with pytest.raises(SessionClosedError) as oldest:
                await engine.text_turn(ids[0], "hello")
            return kept, str(latest.value), str(oldest.value)
        finally:
            await engine.stop()

    kept, latest, oldest = asyncio.run(main())
    assert kept == 64
    assert "no such session" not in latest
    assert "no such session" in oldest
