"""Supervised sessions: an unexpected exception inside any one task of a connection (receive loop,
outbound sender, feeder, watchdog, response streamer) gives that client an `error` (server_error) and
close 1011, logs the traceback with the session id, frees the session's engine resources, and leaves
a bystander's turn, answered meanwhile, intact.

The fault is injected into the real server code of the in-process live server, for the victim's
session only: each patched method behaves as before for every other session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from app.sessions.outbound import Outbound
from app.sessions.realtime import RealtimeSession
from app.sessions.response_streamer import ResponseStreamer
from tests.conftest import LiveServer
from tests.routes.conftest import realtime_client, run, send_text_turn


class InjectedFault(RuntimeError):
    """What the patched code raises."""


class Victim:
    """Marks the next session opened as the victim; its patched parts raise once `trigger` is set."""

    def __init__(self) -> None:
        self.armed = threading.Event()
        self.trigger = threading.Event()
        self.session: RealtimeSession | None = None

    def owns(self, part: Any) -> bool:
        session = self.session
        if session is None:
            return False
        return (
            part is session or part is session.outbound or getattr(part, "outbound", None) is session.outbound
        )

    async def run_then_fault(self, part: Any, work: Any) -> Any:
        """Run `work` (the real code); for the victim's part, raise inside it once `trigger` is set."""
        if not self.owns(part):
            return await work
        task = asyncio.ensure_future(work)
        while not self.trigger.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise InjectedFault(f"injected into {type(part).__name__}")


def patch_open(monkeypatch: pytest.MonkeyPatch, victim: Victim) -> None:
    original = RealtimeSession.open

    async def open_marking_victim(self: RealtimeSession) -> None:
        if victim.armed.is_set():
            victim.armed.clear()
            victim.session = self
        await original(self)

    monkeypatch.setattr(RealtimeSession, "open", open_marking_victim)


def patch_task(monkeypatch: pytest.MonkeyPatch, victim: Victim, task: str) -> None:
    """Make one per-connection task of the victim raise."""
    owner, name = {
        "receive": (RealtimeSession, "handle_message"),
        "outbound": (Outbound, "run"),
        "feeder": (RealtimeSession, "_feeder"),
        "watchdog": (RealtimeSession, "_watchdog"),
        "response": (ResponseStreamer, "run"),
    }[task]
    original = getattr(owner, name)

    async def faulty(self: Any, *args: Any) -> Any:
        return await victim.run_then_fault(self, original(self, *args))

    monkeypatch.setattr(owner, name, faulty)


@pytest.mark.parametrize("task", ["receive", "outbound", "feeder", "watchdog", "response"])
def test_a_failing_task_ends_its_session_with_1011_and_spares_the_bystander(
    fault_server: LiveServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, task: str
) -> None:
    victim = Victim()
    patch_open(monkeypatch, victim)
    patch_task(monkeypatch, victim, task)
    engine = fault_server.state.pool.engines[0]
    caplog.set_level(logging.ERROR, logger="app.sessions.realtime")

    async def main() -> tuple[dict, int, dict, float]:
        async with realtime_client(fault_server.ws_url) as bystander:
            victim.armed.set()
            async with realtime_client(fault_server.ws_url) as client:
                assert victim.session is not None
                await send_text_turn(bystander, "Tell me about the sky.")
                await bystander.wait_for("response.output_audio.delta")
                victim.trigger.set()
                with contextlib.suppress(ConnectionClosed):
                    await send_text_turn(client, "Hello.")  # reaches the receive loop, starts a response
                error = await client.wait_for("error", timeout=20)
                closed = await client.wait_closed(timeout=20)
                victim_id = victim.session.session_id
                deadline = time.monotonic() + 10
                while victim_id in engine.sessions and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
                freed_after = time.monotonic() - (deadline - 10)
                assert victim_id not in engine.sessions, "the victim's engine session was not freed"
                done = await bystander.wait_for("response.done", timeout=30)
                return error, closed.rcvd.code, done, freed_after

    error, close_code, done, _ = run(main())
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "internal_error"
    assert close_code == 1011
    assert done["response"]["status"] == "completed"
    assert any(item["content"] for item in done["response"]["output"])
    victim_id = victim.session.session_id
    logged = [r for r in caplog.records if victim_id in r.getMessage() and r.exc_info]
    assert logged, "no traceback logged with the session id"
    assert isinstance(logged[0].exc_info[1], InjectedFault)
    assert victim.session.live_tasks == 0
