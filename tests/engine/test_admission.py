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
            # One answer has been measured speaking: two sessions beyond it (the default) may come in.
            assert engine.meter.most_speaking == 1
            assert engine.headroom().headroom_sessions == 2
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
        meter.record(0.005 + 0.002 * tokens, codec_tokens=tokens, listening=0, speaking=tokens)
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
        meter.record(
            0.010, codec_tokens=2, listening=0, speaking=2
        )  # 5 ms per token of 25 ms: 0.2 per session
    assert meter.predicted_load(4) == pytest.approx(0.8)
    assert meter.admits(3) and not meter.admits(4)
    for _ in range(10):
        meter.record(
            0.120, codec_tokens=0, listening=1, speaking=0
        )  # 0.75 of a 160 ms chunk for one listener
    assert meter.predicted_load(2) == pytest.approx(1.5)  # listening is now the tighter budget
    assert not meter.admits(1)
    assert meter.admits(0)  # the first session is always let in


def test_one_slow_step_does_not_close_the_door() -> None:
    meter = RealtimeMeter(token_period_s=0.025, chunk_period_s=0.16, max_load=0.9, window_steps=50)
    meter.record(0.002, codec_tokens=1, listening=0, speaking=1)
    meter.record(
        1.5, codec_tokens=1, listening=0, speaking=1
    )  # warm-up or a pause: counted as 2 token periods
    for _ in range(50):
        meter.record(0.002, codec_tokens=1, listening=0, speaking=1)
    assert meter.admits(1)


def burst(meter: RealtimeMeter, asked: int, max_sessions: int = 16) -> int:
    """Connection attempts all decided before any step is measured: how many get in."""
    admitted = 0
    for _ in range(asked):
        if admitted < max_sessions and meter.admits(admitted):
            admitted += 1
    return admitted


def cpu_meter(**overrides) -> RealtimeMeter:
    values = dict(token_period_s=0.025, chunk_period_s=0.16, max_load=0.9, window_steps=50, tokens_per_step=4)
    return RealtimeMeter(**(values | overrides))


def test_a_burst_on_a_cold_or_listening_only_measure_admits_only_the_unmeasured_allowance() -> None:
    # Nothing measured yet: the fit predicts no load at all, so every place used to be taken.
    cold = cpu_meter()
    assert cold.predicted_load(16) == 0.0
    assert burst(cold, 16) == 2  # `unmeasured_sessions`
    assert burst(cpu_meter(unmeasured_sessions=5), 16) == 5

    # Only listening measured (cheap): the speech fit is empty, the listen fit says 16 fit.
    listening = cpu_meter()
    for step in range(100):
        heard = 1 + step % 4
        listening.record(0.004 * heard, codec_tokens=0, listening=heard, speaking=0)
    assert listening.predicted_load(16) < 0.9
    assert burst(listening, 16) == 2


def test_a_burst_cannot_extrapolate_from_one_answer_to_many_then_measurement_opens_the_door() -> None:
    # The tail of a previous load: one answer speaking, 4 tokens in 10 ms steps. The proportional fit
    # reads 2.5 ms a token: 11 sessions x 4 tokens in a step of 100 ms "fit" (load 0.10 a session).
    meter = cpu_meter()
    for _ in range(100):
        meter.record(0.010, codec_tokens=4, listening=0, speaking=1)
    assert meter.predicted_load(9) == pytest.approx(0.9)
    assert burst(meter, 16) == 3  # the one measured speaking and two beyond it, not 9

    # Three answers then speak together, and cost what they cost (30 ms for 12 tokens): the fit now
    # knows three speakers, and admits two beyond them while it predicts room.
    for _ in range(100):
        meter.record(0.030, codec_tokens=12, listening=0, speaking=3)
    assert meter.most_speaking == 3
    assert meter.admits(4) and not meter.admits(5)
    assert "at most 3 answer(s) measured speaking together" in meter.refusal(5)

    # Steps of five answers that use up the budget: now the fit, not the allowance, refuses.
    for _ in range(100):
        meter.record(0.095, codec_tokens=20, listening=0, speaking=5)
    assert meter.measured_limit == 7
    assert not meter.admits(5) and "of the real-time budget" in meter.refusal(5)


def test_a_burst_of_sessions_on_a_fresh_engine_is_held_to_the_allowance(tiny_model) -> None:
    async def main() -> None:
        engine = Engine(
            tiny_model,
            greedy_settings(max_sessions=8, admission_max_load=0.9, admission_unmeasured_sessions=2),
        )
        pool = EnginePool([engine])
        await pool.start()
        try:
            # Eight connection attempts at once, before any step: two come in, six are refused.
            results = await asyncio.gather(*(pool.open_session() for _ in range(8)), return_exceptions=True)
            admitted = [r for r in results if not isinstance(r, BaseException)]
            refused = [r for r in results if isinstance(r, CapacityError)]
            assert len(admitted) == 2 and len(refused) == 6
            assert "measured speaking together" in str(refused[0])
            assert engine.headroom().measured_speaking == 0 and engine.headroom().headroom_sessions == 0

            # Both admitted answer at once (fast injected steps): two measured speaking together.
            engine.meter.step_seconds_hook = lambda measured: 0.001
            streams = [await engine.respond(ref.session_id) for ref in admitted]
            for stream in streams:
                while not isinstance(await asyncio.wait_for(stream.next_event(), 60), AnswerDone):
                    pass
            assert engine.meter.most_speaking == 2
            assert engine.headroom().headroom_sessions == 2  # two beyond the two measured
            results = await asyncio.gather(*(pool.open_session() for _ in range(4)), return_exceptions=True)
            assert sum(not isinstance(r, BaseException) for r in results) == 2
        finally:
            await pool.stop()

    asyncio.run(main())
