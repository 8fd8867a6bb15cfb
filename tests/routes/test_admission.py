"""Admission from measured headroom, as clients and a load balancer see it: a server whose measured
steps use up the real-time budget refuses newcomers (WebSocket `error` + 1013, REST 503 with
`Retry-After`) and reports no headroom on /readyz and /metrics; the admitted session goes on; once the
steps are fast again, it admits. Step times are injected through the meter's hook, not a timer."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest

from app.model import wav_bytes
from tests.conftest import LiveServer
from tests.routes.conftest import RealtimeClient, realtime_client, run, text_turn
from tests.routes.test_routing import CLOSE_TRY_AGAIN, refused


@pytest.fixture(scope="module")
def measured_server(start_server) -> LiveServer:
    return start_server(
        max_sessions=4, admission_max_load=0.9, admission_window_steps=10, max_answer_tokens=8
    )


async def turns_until_measured(server: LiveServer, client: RealtimeClient, steps: int) -> None:
    meter = server.state.pool.engines[0].meter
    target = meter.speech_fit.steps + steps
    for _ in range(30):
        done = await text_turn(client, "Hello?")
        assert done["response"]["status"] == "completed"
        if meter.speech_fit.steps >= target:
            return
    pytest.fail(f"only {meter.speech_fit.steps} answer steps measured, wanted {target}")


def test_a_server_out_of_real_time_refuses_then_admits_again(measured_server: LiveServer) -> None:
    server = measured_server
    meter = server.state.pool.engines[0].meter
    question = wav_bytes(np.random.default_rng(0).normal(0, 0.01, 16000).astype(np.float32), 16000)

    async def main():
        async with realtime_client(server.ws_url) as first:
            meter.step_seconds_hook = lambda measured: 0.200  # more than the 1-4 token periods a step makes
            await turns_until_measured(server, first, 10)
            events, closed = await refused(server.ws_url)
            rest = await asyncio.to_thread(
                httpx.post,
                server.base_url + "/v1/turns",
                content=question,
                headers={"Content-Type": "audio/wav"},
                timeout=30,
            )
            readyz = (await asyncio.to_thread(httpx.get, server.base_url + "/readyz")).json()
            metrics = (await asyncio.to_thread(httpx.get, server.base_url + "/metrics")).text
            still = await text_turn(first, "Hello?")

            meter.step_seconds_hook = lambda measured: 0.002
            await turns_until_measured(server, first, 40)
            ready_after = (await asyncio.to_thread(httpx.get, server.base_url + "/readyz")).json()
            async with realtime_client(server.ws_url) as second:
                again = second.events("session.created")
        meter.step_seconds_hook = None
        return events, closed, rest, readyz, metrics, still, again, ready_after

    events, closed, rest, readyz, metrics, still, again, ready_after = run(main())
    (refusal,) = events
    assert refusal["type"] == "error" and refusal["error"]["code"] == "capacity_exceeded"
    assert "real-time headroom" in refusal["error"]["message"]
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_TRY_AGAIN
    assert rest.status_code == 503 and rest.json()["error"]["code"] == "capacity_exceeded"
    assert rest.headers["Retry-After"]
    (headroom,) = readyz["headroom"].values()
    assert readyz["status"] == "ready" and readyz["active_sessions"] == 1
    assert headroom["headroom_sessions"] == 0 and headroom["load"] > 1.0 and headroom["max_load"] == 0.9
    assert headroom["step_ms"] == pytest.approx(200.0, rel=0.01) and 25.0 <= headroom["budget_ms"] <= 100.0
    assert "\nfreeze_omni_engine_headroom_sessions 0.0\n" in metrics
    assert still["response"]["status"] == "completed"  # the admitted session goes on
    assert len(again) == 1
    (after,) = ready_after["headroom"].values()
    assert after["headroom_sessions"] == 3 and after["load"] < 0.9
