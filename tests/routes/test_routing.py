"""What a load balancer relies on, in one process: the `?session=` key, the process name in
`session.created`, and draining (readyz 503, new sessions refused with 1013, live ones told to reconnect
elsewhere before 1001). The same behaviour through nginx and several processes: tests/deploy."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Callable

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer
from tests.routes.conftest import RealtimeClient, answers_text, realtime_client, run

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN = 1013


async def refused(url: str) -> tuple[list[dict], ConnectionClosed]:
    """Connect without waiting for `session.created` (refusals send none), read every event until the
    server closes; return them and the close."""
    async with websockets.connect(url, proxy=None, open_timeout=10) as ws:
        client = RealtimeClient(ws)
        closed = await client.wait_closed(timeout=10)
        return client.events(), closed


def test_a_chosen_session_key_is_reported_with_the_serving_process(realtime_server: LiveServer) -> None:
    async def main() -> dict:
        async with realtime_client(realtime_server.ws_url + "?session=user-7.phone_A~1") as client:
            return client.events("session.created")[0]

    created = run(main())
    extension = created["freeze_omni"]
    token = extension.pop("resume_token")
    assert extension == {
        "session_key": "user-7.phone_A~1",
        "instance_id": f"{socket.gethostname()}:{realtime_server.settings.port}",
        "resume_grace_s": realtime_server.settings.resume_grace_s,
    }
    assert re.fullmatch(r"rt_[A-Za-z0-9_-]{32}", token), token  # 192 random bits, URL-safe
    assert created["session"]["type"] == "realtime"  # the standard part is unchanged


def test_without_a_key_each_session_gets_a_fresh_url_safe_one(realtime_server: LiveServer) -> None:
    async def key(url: str) -> str:
        async with realtime_client(url) as client:
            return client.events("session.created")[0]["freeze_omni"]["session_key"]

    keys = [run(key(realtime_server.ws_url)), run(key(realtime_server.ws_url + "?session="))]
    assert keys[0] != keys[1]
    assert all(re.fullmatch(r"[A-Za-z0-9._~-]{16,128}", k) for k in keys), keys


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("session=" + "k" * 129, "the limit is 128"),
        ("session=two%20words", "only letters, digits"),
        ("session=%D0%BA%D0%BB%D1%8E%D1%87", "only letters, digits"),  # Cyrillic
        ("session=a/b", "only letters, digits"),
    ],
)
def test_a_bad_session_key_gets_an_error_and_1008_and_the_server_goes_on(
    realtime_server: LiveServer, query: str, says: str
) -> None:
    async def main() -> tuple[list[dict], ConnectionClosed, dict]:
        events, closed = await refused(f"{realtime_server.ws_url}?{query}")
        async with realtime_client(realtime_server.ws_url + "?session=" + "k" * 128) as client:
            delta = await answers_text(client, "Hello!")
        return events, closed, delta

    events, closed, delta = run(main())
    (error,) = events
    assert error["type"] == "error"
    assert error["error"]["code"] == "invalid_session_key"
    assert error["error"]["param"] == "session"
    assert says in error["error"]["message"]
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_POLICY
    assert delta["type"] == "response.output_audio.delta"  # a good key (128 characters) is served


def test_a_draining_server_refuses_new_sessions_and_sends_live_ones_elsewhere(
    start_server: Callable[..., LiveServer],
) -> None:
    """Draining is what SIGTERM starts (tests/deploy sends the signal to a real process); here the
    server's own shutdown path runs in-process."""
    server = start_server(instance_id="engine-a", shutdown_grace_s=2.0)
    assert httpx.get(server.base_url + "/readyz").json()["instance_id"] == "engine-a"

    async def main() -> tuple:
        async with realtime_client(server.ws_url + "?session=alice") as live:
            server.state.draining = True  # as `drain` sets it first
            readyz = await asyncio.to_thread(httpx.get, server.base_url + "/readyz")
            metrics = await asyncio.to_thread(httpx.get, server.base_url + "/metrics")
            rest = await asyncio.to_thread(
                httpx.post,
                server.base_url + "/v1/turns",
                content=b"RIFF",
                headers={"Content-Type": "audio/wav"},
            )
            refused_events, refusal = await refused(server.ws_url + "?session=bob")
            stopping = asyncio.create_task(asyncio.to_thread(server.stop))
            closed = await live.wait_closed(timeout=20)
            await stopping
            return live, closed, refused_events, refusal, readyz, rest, metrics

    live, closed, refused_events, refusal, readyz, rest, metrics = run(main())
    assert readyz.status_code == 503 and readyz.json()["status"] == "draining"
    assert "\nfreeze_omni_draining 1.0\n" in metrics.text and "\nfreeze_omni_ready 0.0\n" in metrics.text
    assert rest.status_code == 503 and rest.json()["error"]["code"] == "server_shutting_down"
    assert rest.headers["Retry-After"] == "1"
    (refusal_error,) = refused_events
    assert refusal_error["error"]["code"] == "server_shutting_down"
    assert refusal.rcvd is not None and refusal.rcvd.code == CLOSE_TRY_AGAIN
    assert live.events("session.created")[0]["freeze_omni"]["instance_id"] == "engine-a"
    (goodbye,) = live.events("error")
    assert goodbye["error"]["code"] == "server_shutting_down"
    assert "reconnect" in goodbye["error"]["message"]
    assert goodbye["freeze_omni"] == {"reconnect": True, "session_key": "alice"}
    assert live.types()[-1] == "error"  # the notice is the last event before the close
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_GOING_AWAY
