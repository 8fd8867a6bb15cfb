"""A client that stops reading: the server's queue for it stays bounded, the session is freed once the
client is `max_outbound_seconds` behind, and the client (when it reads again) finds an `error`
(`client_too_slow`) and close 4000; a client that never reads again is disconnected (TCP) once the
close handshake times out, and nothing of it is left."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from app.sessions.realtime import RealtimeSession
from tests.conftest import LiveServer
from tests.routes.conftest import RealtimeClient, run, send_text_turn

MAX_OUTBOUND_SECONDS = 2.0
ENGINE_AHEAD_S = 2.0
SMALL_BUFFER = 4096
CLOSE_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def slow_reader_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(
        max_answer_tokens=200,
        top_k=1,
        max_outbound_seconds=MAX_OUTBOUND_SECONDS,
        engine_audio_ahead_s=ENGINE_AHEAD_S,
        ws_send_buffer_bytes=16384,
        ws_close_timeout_s=CLOSE_TIMEOUT_S,
    )


def small_buffer_socket(port: int) -> socket.socket:
    """A TCP socket whose receive buffer is tiny, so a client that stops reading stalls the server quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    sock.connect(("127.0.0.1", port))
    return sock


def test_a_client_that_stops_reading_is_freed_and_closed_with_4000(slow_reader_server: LiveServer) -> None:
    state = slow_reader_server.state
    engine = state.pool.engines[0]
    sessions_before = set(engine.sessions)

    async def main() -> tuple[float, float, list[dict], int | None]:
        sock = small_buffer_socket(slow_reader_server.settings.port)
        async with websockets.connect(
            slow_reader_server.ws_url, sock=sock, proxy=None, max_size=None, max_queue=1
        ) as ws:
            client = RealtimeClient(ws)
            await client.wait_for("session.created")
            (session_id,) = set(engine.sessions) - sessions_before
            (live,) = [c.session for c in state.sessions if c.session.session_id == session_id]
            assert isinstance(live, RealtimeSession)
            await send_text_turn(client, "Tell me a long story about the sky.")
            await client.wait_for("response.output_audio.delta")
            # Stop reading. Watch the server's queue for this client until it gives up on it.
            stopped = time.monotonic()
            most_queued = 0.0
            while session_id in engine.sessions and time.monotonic() - stopped < 60:
                most_queued = max(most_queued, live.outbound.queued_audio_s())
                await asyncio.sleep(0.05)
            freed_after = time.monotonic() - stopped
            # Read again: what was in flight, then the goodbye.
            received: list[dict] = []
            close_code = None
            try:
                while True:
                    raw = await asyncio.wait_for(ws.recv(), 30)
                    received.append(json.loads(raw))
            except ConnectionClosed as closed:
                close_code = closed.rcvd.code if closed.rcvd else None
            return freed_after, most_queued, received, close_code

    freed_after, most_queued, received, close_code = run(main())
    assert freed_after < 30, "the stalled client was never freed"
    # What a stalled client can make us hold: what we were late by, and what the engine runs ahead.
    assert most_queued <= MAX_OUTBOUND_SECONDS + ENGINE_AHEAD_S + 1.5, most_queued
    assert close_code == 4000
    errors = [e for e in received if e["type"] == "error"]
    assert errors and errors[-1]["error"]["code"] == "client_too_slow"
    assert state.metrics.errors.get("client_too_slow", 0) >= 1


def test_a_client_that_never_reads_again_is_disconnected_and_freed(slow_reader_server: LiveServer) -> None:
    state = slow_reader_server.state
    engine = state.pool.engines[0]
    connections = slow_reader_server.server.server_state.connections  # uvicorn's live connections
    sessions_before = set(engine.sessions)

    async def main() -> tuple[float, RealtimeSession]:
        sock = small_buffer_socket(slow_reader_server.settings.port)
        # max_queue=1: once one message waits unread, the client stops taking data from its socket.
        ws = await websockets.connect(
            slow_reader_server.ws_url, sock=sock, proxy=None, max_size=None, max_queue=1
        )
        try:
            client = RealtimeClient(ws)
            await client.wait_for("session.created")
            (session_id,) = set(engine.sessions) - sessions_before
            (live,) = [c.session for c in state.sessions if c.session.session_id == session_id]
            ours = len(connections)
            await send_text_turn(client, "Tell me a long story about the sky.")
            await client.wait_for("response.output_audio.delta")
            stopped = time.monotonic()  # from now on the client reads nothing, ever
            while len(connections) >= ours and time.monotonic() - stopped < 60:
                await asyncio.sleep(0.1)
            return time.monotonic() - stopped, live
        finally:
            ws.transport.abort()

    disconnected_after, live = run(main())
    # Found slow after max_outbound_seconds; its goodbye and close queue at once; then the close handshake.
    bound = MAX_OUTBOUND_SECONDS + CLOSE_TIMEOUT_S + 8.0
    assert disconnected_after < bound, (
        f"the server still held the connection after {disconnected_after:.1f} s"
    )
    deadline = time.monotonic() + 5
    while (state.sessions or live.live_tasks) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not state.sessions
    assert live.live_tasks == 0
    assert live.session_id not in engine.sessions
