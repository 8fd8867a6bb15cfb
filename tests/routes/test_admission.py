"""Admission from measured headroom, as clients and a load balancer see it: a server whose measured
steps use up the real-time budget refuses newcomers (WebSocket `error` + 1013, REST 503 with
`Retry-After`) and reports no headroom on /readyz and /metrics; the admitted session goes on; once the
steps are fast again, it admits. Step times are injected through the meter's hook, not a timer."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import websockets

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
    # One answer measured speaking: two beyond it may come in (FREEZE_OMNI_ADMISSION_UNMEASURED_SESSIONS).
    assert after["measured_speaking"] == 1
    assert after["headroom_sessions"] == 2 and after["load"] < 0.9


async def connect_and_hold(url: str, all_answered: asyncio.Event) -> tuple[dict, int | None]:
    """Connect; return the first event and, if the server closed, its close code. An admitted session
    stays open until every attempt of the burst has its answer, so that each one counts."""
    async with websockets.connect(url, proxy=None, open_timeout=10) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if first["type"] == "session.created":
            await all_answered.wait()
            return first, None
        client = RealtimeClient(ws)
        closed = await client.wait_closed(timeout=10)
        return first, closed.rcvd.code if closed.rcvd else None


def test_a_burst_of_connections_on_a_fresh_server_gets_the_allowance_and_1013_for_the_rest(
    start_server,
) -> None:
    # A fresh server has measured no speech: its fit predicts nothing, which used to admit the whole
    # burst up to the fixed cap. Now two sessions come in (the default allowance) and the rest get 1013.
    server = start_server(max_sessions=6, admission_max_load=0.9)

    async def main():
        all_answered = asyncio.Event()
        attempts = [asyncio.create_task(connect_and_hold(server.ws_url, all_answered)) for _ in range(6)]
        deadline = asyncio.get_running_loop().time() + 30  # a wrong admission must fail, not hang
        while sum(task.done() for task in attempts) < 4 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        readyz = (await asyncio.to_thread(httpx.get, server.base_url + "/readyz")).json()
        all_answered.set()
        return await asyncio.gather(*attempts), readyz

    results, readyz = run(main())
    admitted = [first for first, code in results if first["type"] == "session.created"]
    refusals = [(first, code) for first, code in results if first["type"] == "error"]
    assert len(admitted) == 2 and len(refusals) == 4
    for first, code in refusals:
        assert first["error"]["code"] == "capacity_exceeded" and code == CLOSE_TRY_AGAIN
        assert "measured speaking together" in first["error"]["message"]
    assert readyz["active_sessions"] == 2
    (headroom,) = readyz["headroom"].values()
    assert headroom["measured_speaking"] == 0 and headroom["headroom_sessions"] == 0
