"""Keep-alives and limits: a peer that vanished without a close is found by ping/pong and freed, a live
idle client is kept, a session has a maximum age, and one API key may hold a bounded number of sessions."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import time
from collections.abc import Callable

import pytest
import websockets

from tests.conftest import LiveServer
from tests.routes.conftest import (
    SHORT_ANSWER_TOKENS,
    RealtimeClient,
    answers_text,
    realtime_client,
    run,
    text_turn,
)

KEY = "secret"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_SESSION_SECONDS = 4.0
PING_S = 0.5
RESUME_GRACE_S = 1.0  # a vanished peer's session waits this long for a resume before it is freed


@pytest.fixture(scope="module")
def limited_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(
        api_keys=[KEY],
        max_sessions_per_key=1,
        max_session_seconds=MAX_SESSION_SECONDS,
        ws_ping_interval_s=PING_S,
        ws_ping_timeout_s=PING_S,
        max_answer_tokens=4,
        resume_grace_s=RESUME_GRACE_S,
    )


def wait_until(condition: Callable[[], bool], timeout: float) -> float:
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise TimeoutError("condition not met")
        time.sleep(0.02)
    return time.monotonic() - started


def test_a_peer_that_never_answers_pings_is_freed(limited_server: LiveServer) -> None:
    """A raw TCP client completes the handshake, then goes silent (a phone that lost its network)."""
    engine = limited_server.state.pool.engines[0]
    before = set(engine.sessions)
    sock = socket.create_connection(("127.0.0.1", limited_server.settings.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /v1/realtime HTTP/1.1\r\nHost: 127.0.0.1:{limited_server.settings.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer {KEY}\r\n\r\n"
        ).encode()
    )
    assert sock.recv(4096).startswith(b"HTTP/1.1 101")
    try:
        wait_until(lambda: len(set(engine.sessions) - before) == 1, 5)
        freed_in = wait_until(lambda: not (set(engine.sessions) - before), 10)
    finally:
        sock.close()
    assert freed_in < 5 * PING_S + 2 + RESUME_GRACE_S


def test_a_live_idle_client_answers_pings_and_stays(limited_server: LiveServer) -> None:
    async def main() -> dict:
        async with realtime_client(limited_server.ws_url, additional_headers=AUTH) as client:
            await asyncio.sleep(6 * PING_S)  # several pings, answered by the client library
            return await answers_text(client, "Hi.")

    assert base64.b64decode(run(main())["delta"])


def test_a_session_has_a_maximum_age(limited_server: LiveServer) -> None:
    async def main() -> tuple[dict, int, float]:
        async with realtime_client(limited_server.ws_url, additional_headers=AUTH) as client:
            opened = time.monotonic()
            error = await client.wait_for("error", timeout=MAX_SESSION_SECONDS + 5)
            closed = await client.wait_closed()
            return error, closed.rcvd.code, time.monotonic() - opened

    error, code, age = run(main())
    assert error["error"]["code"] == "session_expired"
    assert "FREEZE_OMNI_MAX_SESSION_SECONDS" in error["error"]["message"]
    assert code == 1000
    assert MAX_SESSION_SECONDS - 0.5 <= age <= MAX_SESSION_SECONDS + 3


def test_one_key_holds_at_most_its_limit(limited_server: LiveServer) -> None:
    async def main() -> tuple[dict, int, dict]:
        async with (
            realtime_client(limited_server.ws_url, additional_headers=AUTH),
            websockets.connect(limited_server.ws_url, proxy=None, additional_headers=AUTH) as ws,
        ):
            second = RealtimeClient(ws)
            refusal = await second.wait_for("error")
            closed = await second.wait_closed()
        # The first has gone: the key may open a session again, and it works.
        async with realtime_client(limited_server.ws_url, additional_headers=AUTH) as third:
            return refusal, closed.rcvd.code, await answers_text(third, "Hi.")

    refusal, code, delta = run(main())
    assert refusal["error"]["code"] == "key_session_limit"
    assert code == 1013
    assert base64.b64decode(delta["delta"])


def test_a_request_waiting_on_a_busy_engine_is_not_idleness(start_server: Callable[..., LiveServer]) -> None:
    """An overloaded engine takes longer than the idle timeout to take a typed turn: the session must
    wait for it, not close the client for idleness while its request is in hand."""
    idle_s = 1.0
    server = start_server(idle_timeout_s=idle_s, max_answer_tokens=4)
    engine = server.state.pool.engines[0]
    real_text_turn = engine.text_turn

    async def busy_text_turn(*args, **kwargs):  # the engine's own call, after a busy spell
        await asyncio.sleep(2.5 * idle_s)
        return await real_text_turn(*args, **kwargs)

    engine.text_turn = busy_text_turn

    async def main() -> tuple[dict, list[str]]:
        async with realtime_client(server.ws_url) as client:
            done = await text_turn(client, "Hello.")
            return done, client.types()

    done, types = run(main())
    assert done["response"]["status"] == "completed"
    assert "error" not in types


def test_idleness_counts_from_the_end_of_the_answer(start_server: Callable[..., LiveServer]) -> None:
    """An answer that plays longer than the idle timeout: a client that takes half the idle timeout to
    reply after `response.done` is answered; the time the answer took is not the client's idleness."""
    idle_s = 1.0
    server = start_server(idle_timeout_s=idle_s, max_answer_tokens=SHORT_ANSWER_TOKENS, top_k=1)

    async def main() -> tuple[list[dict], list[str]]:
        async with realtime_client(server.ws_url) as client:
            first = await text_turn(client, "Tell me a story.")  # about 3 s of speech
            await asyncio.sleep(idle_s / 2)  # the user thinks
            dones = [first, await text_turn(client, "And another.")]
            return dones, client.types()

    dones, types = run(main())
    assert all(done["response"]["status"] == "completed" for done in dones)
    assert "error" not in types
