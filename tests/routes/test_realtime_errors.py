"""`/v1/realtime` under bad input and hard conditions: each error is reported as the protocol says (an `error`
event naming the offending event, or the right close code / HTTP status), and the session or server goes on.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from app.model.fixtures.tiny import TinyPaths
from tests.conftest import LiveServer, free_port
from tests.routes.conftest import (
    API_KEY,
    MAX_MESSAGE_BYTES,
    RealtimeClient,
    answers_text,
    realtime_client,
    run,
    text_turn,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOSE_NORMAL = 1000
CLOSE_TOO_BIG = 1009
CLOSE_TRY_AGAIN = 1013


@pytest.fixture(scope="module")
def single_server(start_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """A server with room for one session."""
    server = start_server(max_sessions=1, max_answer_tokens=4)
    yield server
    server.stop()


def error_of(client: RealtimeClient, event_id: str | None = None) -> dict[str, Any]:
    """The one `error` event received so far (for `event_id`, when given)."""
    errors = [
        e["error"] for e in client.events("error") if event_id is None or e["error"]["event_id"] == event_id
    ]
    assert len(errors) == 1, client.events("error")
    return errors[0]


BAD_MESSAGES = {
    "malformed_json": ('{"type": "response.create", "event_id": "evt_bad_json"', "invalid_json", None),
    "not_an_object": ("[1, 2, 3]", "invalid_json", None),
    "unknown_type": (
        {"type": "response.fly", "event_id": "evt_unknown"},
        "unknown_event_type",
        "evt_unknown",
    ),
    "missing_type": ({"event_id": "evt_no_type"}, "missing_required_parameter", "evt_no_type"),
    "type_not_a_string": ({"type": 7, "event_id": "evt_type_7"}, "invalid_type", "evt_type_7"),
    "bad_base64": (
        {"type": "input_audio_buffer.append", "audio": "not base64!", "event_id": "evt_b64"},
        "invalid_base64",
        "evt_b64",
    ),
    "append_without_audio": (
        {"type": "input_audio_buffer.append", "event_id": "evt_no_audio"},
        "missing_required_parameter",
        "evt_no_audio",
    ),
    "pcm_at_44100": (
        {
            "type": "session.update",
            "event_id": "evt_rate",
            "session": {
                "type": "realtime",
                "audio": {"input": {"format": {"type": "audio/pcm", "rate": 44100}}},
            },
        },
        "invalid_value",
        "evt_rate",
    ),
    "unknown_format_type": (
        {
            "type": "session.update",
            "event_id": "evt_opus",
            "session": {"type": "realtime", "audio": {"output": {"format": {"type": "audio/opus"}}}},
        },
        "invalid_value",
        "evt_opus",
    ),
    "unknown_beta_format": (
        {"type": "session.update", "event_id": "evt_beta_fmt", "session": {"input_audio_format": "mp3"}},
        "invalid_value",
        "evt_beta_fmt",
    ),
    "deeply_nested_json": ("[" * 30_000 + "]" * 30_000, "invalid_json", None),
    "deeply_nested_event": (
        '{"type": "session.update", "event_id": "evt_deep", "session": ' + "[" * 30_000 + "]" * 30_000 + "}",
        "invalid_json",
        None,  # the parser gives up before the event_id can be read (30k levels: under the test limit of 64 KiB)
    ),
    "odd_byte_pcm16_append": (
        {
            "type": "input_audio_buffer.append",
            "audio": base64.b64encode(b"\x01\x02\x03").decode(),
            "event_id": "evt_odd",
        },
        "invalid_value",
        "evt_odd",
    ),
    "commit_empty_buffer": (
        {"type": "input_audio_buffer.commit", "event_id": "evt_commit"},
        "input_audio_buffer_commit_empty",
        "evt_commit",
    ),
    "cancel_without_response": (
        {"type": "response.cancel", "event_id": "evt_cancel"},
        "response_cancel_not_active",
        "evt_cancel",
    ),
    "response_with_tools": (
        {"type": "response.create", "event_id": "evt_tools", "response": {"tools": [{"type": "function"}]}},
        "unsupported_parameter",
        "evt_tools",
    ),
    "response_input_in_conversation": (
        {"type": "response.create", "event_id": "evt_input", "response": {"input": []}},
        "unsupported_parameter",
        "evt_input",
    ),
}


@pytest.mark.parametrize("name", list(BAD_MESSAGES))
def test_bad_message_is_an_error_event_and_the_session_goes_on(
    realtime_server: LiveServer, name: str
) -> None:
    """Each bad message gets one `error` with the right code and event_id; the session stays usable."""
    message, code, event_id = BAD_MESSAGES[name]
    raw = message if isinstance(message, str) else json.dumps(message)

    async def main() -> tuple[RealtimeClient, dict, RealtimeClient]:
        async with (
            realtime_client(realtime_server.ws_url) as client,
            realtime_client(realtime_server.ws_url) as bystander,
        ):
            await client.ws.send(raw)
            await client.wait_for("error", timeout=5)
            await answers_text(bystander, "Hello?")
            return client, await answers_text(client, "Are you still there?"), bystander

    client, delta, bystander = run(main())
    assert not bystander.events("error")  # the other session never noticed
    error = error_of(client)
    assert error["code"] == code, error
    assert error["event_id"] == event_id
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert base64.b64decode(delta["delta"])  # and a later text turn is answered
    if code == "invalid_value" and name.startswith("odd_byte"):
        assert error["param"] == "audio"
        assert not client.events("input_audio_buffer.speech_started")  # nothing was buffered


def test_bad_format_leaves_the_session_format_unchanged(realtime_server: LiveServer) -> None:
    """A refused session.update changes nothing: the audio format is still 24 kHz pcm16 afterwards."""

    async def main() -> RealtimeClient:
        async with realtime_client(realtime_server.ws_url) as client:
            bad = {"type": "audio/pcm", "rate": 44100}
            await client.send({"type": "session.update", "session": {"audio": {"input": {"format": bad}}}})
            await client.wait_for("error", timeout=5)
            await client.send({"type": "session.update", "session": {"instructions": "Be brief."}})
            await client.wait_for("session.updated", timeout=5)
            return client

    client = run(main())
    (updated,) = client.events("session.updated")
    assert updated["session"]["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
def test_oversized_message_closes_with_1009(realtime_server: LiveServer, binary: bool) -> None:
    """A message over max_message_bytes: `error` message_too_large, then close 1009 (message too big)."""
    audio = bytes(MAX_MESSAGE_BYTES + 2)

    async def main() -> tuple[RealtimeClient, ConnectionClosed]:
        async with realtime_client(realtime_server.ws_url) as client:
            if binary:
                await client.ws.send(audio)
            else:
                await client.append(audio)
            return client, await client.wait_closed(timeout=10)

    client, closed = run(main())
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_TOO_BIG
    assert error_of(client)["code"] == "message_too_large"


def test_absurdly_large_message_still_closes_with_1009(realtime_server: LiveServer) -> None:
    """Far over the limit, the WebSocket layer itself refuses the frame, with the same close code."""

    async def main() -> ConnectionClosed:
        async with realtime_client(realtime_server.ws_url) as client:
            await client.ws.send(bytes(4 * MAX_MESSAGE_BYTES))
            return await client.wait_closed(timeout=10)

    closed = run(main())
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_TOO_BIG


def test_full_server_refuses_with_an_error_and_1013(single_server: LiveServer) -> None:
    """With every place taken, a newcomer gets `error` capacity_exceeded and close 1013; the first
    session goes on as if nothing happened."""

    async def main() -> tuple[RealtimeClient, dict, ConnectionClosed, dict]:
        async with realtime_client(single_server.ws_url) as first:
            async with websockets.connect(single_server.ws_url, proxy=None) as ws:
                second = RealtimeClient(ws)
                closed = await second.wait_closed(timeout=10)
            return first, second.events()[0], closed, await text_turn(first, "Hello?")

    first, refusal, closed, done = run(main())
    assert refusal["type"] == "error"
    assert refusal["error"]["code"] == "capacity_exceeded"
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_TRY_AGAIN
    assert done["response"]["status"] == "completed"
    assert first.audio(done["response"]["id"])
    assert single_server.state.metrics.sessions_refused >= 1


# -- API keys ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "subprotocols"),
    [
        ({}, None),
        ({"Authorization": "Bearer wrong"}, None),
        ({}, ["realtime", "openai-insecure-api-key.wrong"]),
    ],
    ids=["no_key", "wrong_bearer", "wrong_subprotocol"],
)
def test_bad_key_is_refused_at_the_handshake(
    keyed_server: LiveServer, headers: dict[str, str], subprotocols: list[str] | None
) -> None:
    """No key or a wrong one: the upgrade is answered with HTTP 401 and a JSON error."""

    async def main() -> None:
        async with websockets.connect(
            keyed_server.ws_url, proxy=None, additional_headers=headers, subprotocols=subprotocols
        ):
            pass

    with pytest.raises(InvalidStatus) as refused:
        run(main())
    response = refused.value.response
    assert response.status_code == 401
    assert json.loads(response.body)["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    ("headers", "subprotocols", "expected_subprotocol"),
    [
        ({"Authorization": f"Bearer {API_KEY}"}, None, None),
        ({}, ["realtime", f"openai-insecure-api-key.{API_KEY}"], "realtime"),
    ],
    ids=["bearer", "subprotocol"],
)
def test_good_key_is_let_in(
    keyed_server: LiveServer,
    headers: dict[str, str],
    subprotocols: list[str] | None,
    expected_subprotocol: str | None,
) -> None:
    """The right key, as a bearer token or as the browsers' subprotocol, opens a working session."""

    async def main() -> tuple[str | None, dict]:
        async with realtime_client(
            keyed_server.ws_url, additional_headers=headers, subprotocols=subprotocols
        ) as client:
            return client.ws.subprotocol, await answers_text(client, "Hi.")

    subprotocol, delta = run(main())
    assert subprotocol == expected_subprotocol
    assert base64.b64decode(delta["delta"])


# -- timeouts and vanishing clients -------------------------------------------------------------------------------
def test_idle_session_is_closed_with_an_error(keyed_server: LiveServer) -> None:
    """No client event for idle_timeout_s: `error` idle_timeout, then a normal close."""
    headers = {"Authorization": f"Bearer {API_KEY}"}

    async def main() -> tuple[RealtimeClient, ConnectionClosed, float]:
        async with realtime_client(keyed_server.ws_url, additional_headers=headers) as client:
            started = time.perf_counter()
            closed = await client.wait_closed(timeout=10)
            return client, closed, time.perf_counter() - started

    client, closed, waited = run(main())
    assert error_of(client)["code"] == "idle_timeout"
    assert closed.rcvd is not None and closed.rcvd.code == CLOSE_NORMAL
    assert keyed_server.settings.idle_timeout_s <= waited < keyed_server.settings.idle_timeout_s + 3


def test_vanished_client_frees_its_engine_session(realtime_server: LiveServer) -> None:
    """A client that drops its connection mid-answer: its session waits the resume grace time for a resume
    (still holding its cache slots), then the server ends the answer and frees the session's cache slots;
    a session beside it carries on."""
    engine = realtime_server.state.pool.engines[0]

    async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.perf_counter() + timeout
        while not condition():
            assert time.perf_counter() < deadline, "timed out"
            await asyncio.sleep(0.02)

    async def main() -> tuple[int, int, int, dict]:
        await wait_until(lambda: engine.load == 0)  # sessions of earlier tests are gone
        free_at_start = engine.llm_cache.num_free
        cancelled_before = engine.stats.answers_cancelled
        async with realtime_client(realtime_server.ws_url) as stayer:
            leaver = await websockets.connect(realtime_server.ws_url, proxy=None)
            await leaver.send(
                json.dumps(
                    {
                        "type": "conversation.item.create",
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "Tell me a story."}],
                        },
                    }
                )
            )
            await leaver.send(json.dumps({"type": "response.create"}))
            while json.loads(await leaver.recv())["type"] != "response.created":
                pass
            await wait_until(lambda: engine.load == 2)
            free_with_both = engine.llm_cache.num_free
            ended_before = cancelled_before + engine.stats.answers_completed
            leaver.transport.abort()  # no close frame: the client is simply gone
            await wait_until(lambda: realtime_server.state.resumable.parked == 1)
            parked_at = time.perf_counter()
            assert engine.load == 2  # parked for a resume: it keeps its place
            await wait_until(lambda: engine.load == 1)
            assert time.perf_counter() - parked_at > realtime_server.settings.resume_grace_s - 0.5
            free_with_one = engine.llm_cache.num_free
            assert engine.stats.answers_cancelled + engine.stats.answers_completed == ended_before + 1
            done = await text_turn(stayer, "Are you still there?")
        await wait_until(lambda: engine.load == 0)
        assert engine.llm_cache.num_free == free_at_start
        return free_at_start, free_with_both, free_with_one, done

    free_at_start, free_with_both, free_with_one, done = run(main())
    assert free_with_both == free_at_start - 4  # two sessions, a main and a spare slot each
    assert free_with_one == free_at_start - 2
    assert done["response"]["status"] == "completed"


@pytest.fixture
def server_process(tiny_model_dir: TinyPaths) -> Iterator[str]:
    """A server in a process of its own, configured by FREEZE_OMNI_* variables; yields its ws URL.

    For a test that may leave the server broken: the process is killed afterwards, however it is.
    """
    port = free_port()
    env = {
        **os.environ,
        "FREEZE_OMNI_MODEL_PATH": str(tiny_model_dir.model_path),
        "FREEZE_OMNI_LLM_PATH": str(tiny_model_dir.llm_path),
        "FREEZE_OMNI_PORT": str(port),
        "FREEZE_OMNI_MAX_SESSIONS": "2",
        "FREEZE_OMNI_MAX_ANSWER_TOKENS": "4",
        "FREEZE_OMNI_LOG_LEVEL": "warning",
    }
    code = "from app.config import Settings; from app.serving import run_server; run_server(Settings())"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert child.poll() is None, "the server process exited"
            assert time.monotonic() < deadline, "the server process did not become ready"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield f"ws://127.0.0.1:{port}/v1/realtime"
    finally:
        child.kill()
        child.wait(timeout=10)


def test_client_leaving_while_its_audio_is_heard_leaves_the_server_working(
    server_process: str, question_pcm: bytes
) -> None:
    """A client sends audio faster than real time and leaves before it has all been heard; the next
    client is served as usual."""

    async def leave_early() -> None:
        async with realtime_client(server_process) as client:
            await client.send(
                {"type": "session.update", "session": {"audio": {"input": {"turn_detection": None}}}}
            )
            await client.wait_for("session.updated")
            await client.stream(question_pcm * 4, paced=False)
            await client.send({"type": "input_audio_buffer.commit"})
            await client.wait_for("input_audio_buffer.committed")

    async def come_next() -> dict:
        async with realtime_client(server_process, created_within=5) as client:
            return await answers_text(client, "Hello?", timeout=10)

    run(leave_early())
    delta = run(come_next())
    assert base64.b64decode(delta["delta"])


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "conversation.item.truncate",
            "item_id": "item_nope",
            "content_index": 0,
            "audio_end_ms": 500,
        },
        {"type": "conversation.item.delete", "item_id": "item_nope"},
    ],
    ids=["truncate", "delete"],
)
def test_unknown_item_is_an_error(realtime_server: LiveServer, event: dict[str, Any]) -> None:
    """Truncating or deleting an item the conversation does not hold is an `error` naming the event."""

    async def main() -> RealtimeClient:
        async with realtime_client(realtime_server.ws_url) as client:
            await client.send({**event, "event_id": "evt_item"})
            await client.pump(lambda: bool(client.events("error")) or len(client.log) > 1, timeout=5)
            return client

    client = run(main())
    assert error_of(client, "evt_item")["type"] == "invalid_request_error"


def test_message_just_under_the_limit_is_accepted(realtime_server: LiveServer) -> None:
    """An append just under max_message_bytes is taken like any other (no error, no close)."""
    audio = bytes((MAX_MESSAGE_BYTES - 200) // 4 * 3 // 2 * 2)

    async def main() -> RealtimeClient:
        async with realtime_client(realtime_server.ws_url) as client:
            await client.append(audio)
            await client.send({"type": "input_audio_buffer.clear"})
            await client.wait_for("input_audio_buffer.cleared", timeout=5)
            return client

    client = run(main())
    assert not client.events("error")
    assert len(base64.b64encode(audio)) < MAX_MESSAGE_BYTES
