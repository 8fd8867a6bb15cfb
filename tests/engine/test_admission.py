"""Admission from measured headroom: driven by injected step times (a hook on the measure), not a timer."""

from __future__ import annotations

import asyncio

import pytest

from app.engine.engine import Engine
from app.engine.errors import CapacityError
from app.engine.events import AnswerDone
from app.engine.headroom import RealtimeMeter
from app.engine.pool import EnginePool
from tests.engine.test_engine import greedy_settings


async def answer_steps(engine: Engine, session_id: str, at_least: int) -> None:
    """Run answers on `session_id` until `at_least` more answer steps have been measured."""
    target = engine.meter.speech_fit.steps + at_least
    for _ in range(20):
        stream = await engine.respond(session_id)
        while not isinstance(await asyncio.wait_for(stream.next_event(), 60), AnswerDone):
            pass
        if engine.meter.speech_fit.steps >= target:
            return
    pytest.fail(f"only {engine.meter.speech_fit.steps} answer steps measured, wanted {target}")


def test_refuses_when_the_measured_budget_is_used_up_and_admits_again(tiny_model) -> None:
    async def main() -> None:
        engine = Engine(
            tiny_model, greedy_settings(max_sessions=4, admission_max_load=0.9, admission_window_steps=10)
        )
        pool = EnginePool([engine])
        await pool.start()
        try:
            first = await pool.open_session()
            # Each step "takes" 200 ms: more than the 25-100 ms of audio (1-4 codec tokens) it makes.
            engine.meter.step_seconds_hook = lambda measured: 0.200
            await answer_steps(engine, first.session_id, 10)
            assert engine.meter.predicted_load(2) > 0.9
            with pytest.raises(CapacityError, match="no real-time headroom"):
                await pool.open_session()
            assert engine.load == 1
            headroom = engine.headroom()
            assert headroom.headroom_sessions == 0 and headroom.load > 1.0
            assert headroom.step_ms == pytest.approx(200.0, rel=0.01)

            # The machine recovers: 2 ms steps. The refused place opens again.
            engine.meter.step_seconds_hook = lambda measured: 0.002
            await answer_steps(engine, first.session_id, 40)
            assert engine.headroom().headroom_sessions == 3  # bounded by max_sessions
            second = await pool.open_session()
            assert engine.load == 2
            await pool.close_session(second.session_id)
        finally:
            await pool.stop()

    asyncio.run(main())


def test_the_fixed_cap_still_bounds_admission(tiny_model) -> None:
    async def main() -> None:
        engine = Engine(tiny_model, greedy_settings(max_sessions=2, admission_max_load=0.9))
        pool = EnginePool([engine])
        await pool.start()
        try:
            first = await pool.open_session()
            engine.meter.step_seconds_hook = lambda measured: 0.001
            await answer_steps(engine, first.session_id, 5)
            await pool.open_session()
            with pytest.raises(CapacityError, match="all 2 session places"):
                await pool.open_session()
        finally:
            await pool.stop()

    asyncio.run(main())


def test_the_fit_separates_fixed_cost_from_cost_per_token() -> None:
    meter = RealtimeMeter(
        token_period_s=0.025, chunk_period_s=0.16, max_load=0.9, window_steps=20, tokens_per_step=4
    )
    # Steps of 5 ms + 2 ms per codec token, making 1 to 8 tokens.
    for step in range(200):
        tokens = 1 + step % 8
        meter.record(0.005 + 0.002 * tokens, codec_tokens=tokens, listening=0)
    fixed, per_token = meter.speech_fit.line()
    assert fixed == pytest.approx(0.005, abs=1e-9)
    assert per_token == pytest.approx(0.002, abs=1e-9)
    # n answers catching up, 4 tokens each, in a step of 100 ms: (5 + 8 n) / 100 <= 0.9 up to n = 10.
    assert meter.speech_load(10) == pytest.approx(0.85)
    assert meter.admits(9) and not meter.admits(10)
    assert meter.headroom(open_sessions=5, free_places=10).headroom_sessions == 5


def test_a_token_count_never_varied_reads_as_proportional_and_listening_has_its_own_budget() -> None:
    meter = RealtimeMeter(token_period_s=0.025, chunk_period_s=0.16, max_load=0.9)
    for _ in range(10):
        meter.record(0.010, codec_tokens=2, listening=0)  # 5 ms per token of 25 ms: 0.2 per session
    assert meter.predicted_load(4) == pytest.approx(0.8)
    assert meter.admits(3) and not meter.admits(4)
    for _ in range(10):
        meter.record(0.120, codec_tokens=0, listening=1)  # 0.75 of a 160 ms chunk for one listener
    assert meter.predicted_load(2) == pytest.approx(1.5)  # listening is now the tighter budget
    assert not meter.admits(1)
    assert meter.admits(0)  # the first session is always let in


def test_one_slow_step_does_not_close_the_door() -> None:
    meter = RealtimeMeter(token_period_s=0.025, chunk_period_s=0.16, max_load=0.9, window_steps=50)
    meter.record(0.002, codec_tokens=1, listening=0)
    meter.record(1.5, codec_tokens=1, listening=0)  # warm-up or a pause: counted as 2 token periods
    for _ in range(50):
        meter.record(0.002, codec_tokens=1, listening=0)
    assert meter.admits(1)
