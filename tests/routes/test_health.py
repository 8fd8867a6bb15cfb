"""Liveness, readiness, Prometheus metrics, and a graceful shutdown that says goodbye with 1001."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Callable

import httpx
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer
from tests.routes.conftest import RealtimeClient, realtime_client, run, text_turn

CLOSE_GOING_AWAY = 1001
# One sample line of the text exposition format: name, optional labels, a float value.
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="[^"]*",?)*\})? (\S+)$')
TYPE = re.compile(r"^# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|summary|histogram|untyped)$")


def parse_metrics(text: str) -> dict[str, float]:
    """Parse Prometheus text; every sample must follow a `# TYPE` of its family. Keys keep the labels."""
    assert text.endswith("\n")
    families: set[str] = set()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            match = TYPE.match(line)
            assert match, f"bad comment line: {line!r}"
            families.add(match.group(1))
            continue
        match = SAMPLE.match(line)
        assert match, f"bad sample line: {line!r}"
        name, labels, value = match.groups()
        family = re.sub(r"_(sum|count)$", "", name)
        assert name in families or family in families, f"{name} has no # TYPE line"
        samples[name + (labels or "")] = float(value)  # float() takes NaN, which an empty summary holds
    return samples


def test_healthz(realtime_server: LiveServer) -> None:
    """The process answers."""
    response = httpx.get(f"{realtime_server.base_url}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_capacity(realtime_server: LiveServer) -> None:
    """Loaded: 200, with the replicas, the session places and how many are taken."""
    response = httpx.get(f"{realtime_server.base_url}/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["capacity"] == realtime_server.settings.max_sessions
    assert 0 <= body["active_sessions"] <= body["capacity"]
    assert len(body["replicas"]) == 1
    assert body["auth"] is False


def test_metrics_after_a_turn(realtime_server: LiveServer) -> None:
    """Prometheus text with sessions, first-audio latency, real-time factor, queue depth and batch sizes;
    the latency and real-time-factor summaries count the turn just taken."""

    def scrape() -> dict[str, float]:
        response = httpx.get(f"{realtime_server.base_url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        return parse_metrics(response.text)

    before = scrape()

    async def main() -> tuple[dict, dict[str, float]]:
        async with realtime_client(realtime_server.ws_url) as client:
            done = await text_turn(client, "Hello!")
            return done, scrape()  # while the session is open

    done, during = run(main())
    after = scrape()
    assert done["response"]["status"] == "completed"
    assert during["freeze_omni_websocket_sessions"] >= 1
    assert during["freeze_omni_engine_sessions"] >= 1
    assert after["freeze_omni_engine_capacity"] == realtime_server.settings.max_sessions
    assert after["freeze_omni_sessions_opened_total"] == before["freeze_omni_sessions_opened_total"] + 1
    completed = 'freeze_omni_responses_total{status="completed"}'
    assert after[completed] == before.get(completed, 0) + 1
    for summary in ("freeze_omni_first_audio_seconds", "freeze_omni_real_time_factor"):
        assert after[f"{summary}_count"] == before[f"{summary}_count"] + 1
        median = after[f'{summary}{{quantile="0.5"}}']
        assert math.isfinite(median) and median > 0
    assert after['freeze_omni_first_audio_seconds{quantile="0.95"}'] < 30
    assert after["freeze_omni_queue_depth_chunks"] >= 0
    batch_rows = {k: v for k, v in after.items() if k.startswith("freeze_omni_batch_rows_mean{")}
    assert batch_rows and all(v >= 1 for v in batch_rows.values()), batch_rows
    assert after["freeze_omni_engine_steps"] > before["freeze_omni_engine_steps"]


def test_shutdown_closes_open_sessions_with_1001(start_server: Callable[..., LiveServer]) -> None:
    """Stopping the server says "going away" (1001) to a connected client before the process ends."""
    server = start_server()

    async def main() -> tuple[RealtimeClient, ConnectionClosed]:
        async with realtime_client(server.ws_url) as client:
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            closed = await client.wait_closed(timeout=20)
            await stopping
            return client, closed

    client, closed = run(main())
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_GOING_AWAY
    assert closed.rcvd.reason == "server shutting down"
    assert not server.thread.is_alive()
    (notice,) = client.events("error")  # the reconnect hint before the close
    assert notice["error"]["code"] == "server_shutting_down"
