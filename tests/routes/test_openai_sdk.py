"""The official `openai` SDK's realtime clients, pointed at our server, hold a conversation with it.

`AsyncOpenAI(...).realtime.connect(model=...)` dials `<websocket_base_url>/realtime?model=...`, or, without
`websocket_base_url`, `base_url` with its scheme turned from http to ws (openai/resources/realtime/realtime.py,
`_prepare_url`). The beta client always turns `base_url` into `wss://`, so it needs `websocket_base_url`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.conftest import LiveServer
from tests.routes.conftest import API_KEY, APPEND_MS, WIRE_RATE, run, silence

MODEL = "freeze-omni"


async def stream_with_sdk(connection: Any, audio: bytes) -> None:
    """Append `audio` in 100 ms pieces at real-time pace through the SDK's typed helper."""
    step = 2 * WIRE_RATE * APPEND_MS // 1000
    started = time.perf_counter()
    for offset in range(0, len(audio), step):
        await connection.input_audio_buffer.append(
            audio=base64.b64encode(audio[offset : offset + step]).decode()
        )
        due = started + (offset + step) / (2 * WIRE_RATE)
        await asyncio.sleep(max(0.0, due - time.perf_counter()))


async def events_until(connection: Any, event_type: str, timeout: float = 60.0) -> list[Any]:
    """Every event the SDK parses, up to and including the first of `event_type`."""
    events: list[Any] = []
    deadline = time.perf_counter() + timeout
    while not events or events[-1].type != event_type:
        events.append(await asyncio.wait_for(connection.recv(), deadline - time.perf_counter()))
    return events


@pytest.mark.slow
def test_sdk_realtime_client_holds_a_spoken_turn(realtime_server: LiveServer, question_pcm: bytes) -> None:
    """GA client, URL derived from `base_url`: session.update, real-time appends, a completed response."""
    client = AsyncOpenAI(api_key="unused", base_url=f"{realtime_server.base_url}/v1")

    async def main() -> list[Any]:
        async with client.realtime.connect(model=MODEL) as connection:
            (created,) = await events_until(connection, "session.created", timeout=10)
            await connection.session.update(
                session={
                    "type": "realtime",
                    "output_modalities": ["audio"],
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": WIRE_RATE}}},
                }
            )
            sender = asyncio.create_task(stream_with_sdk(connection, question_pcm + silence(1.0)))
            events = [created, *await events_until(connection, "response.done")]
            await sender
            return events

    events = run(main())
    types = [e.type for e in events]
    for expected in (
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "response.created",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.done",
    ):
        assert expected in types, (expected, types)
    done = events[-1]
    assert done.response.status == "completed"
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    assert audio and len(audio) % 2 == 0
    (item,) = done.response.output
    assert item.role == "assistant"


@pytest.mark.slow
def test_sdk_beta_client_gets_beta_event_names(keyed_server: LiveServer) -> None:
    """Beta client (`OpenAI-Beta: realtime=v1`) with `websocket_base_url` and the server's API key: a text
    turn answered with the beta names (`response.audio.delta`, `conversation.item.created`)."""
    ws_base = keyed_server.base_url.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(api_key=API_KEY, base_url=f"{keyed_server.base_url}/v1", websocket_base_url=ws_base)

    async def main() -> list[Any]:
        async with client.beta.realtime.connect(model=MODEL) as connection:
            await connection.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "Hello!"}],
                }
            )
            await connection.response.create()
            return await events_until(connection, "response.done")

    events = run(main())
    types = [e.type for e in events]
    assert types[0] == "session.created"
    assert "conversation.item.created" in types
    assert "response.audio.delta" in types and "response.output_audio.delta" not in types
    assert "response.audio_transcript.done" in types
    assert events[-1].response.status == "completed"
    assert events[0].session.input_audio_format == "pcm16"  # the flat beta session


@pytest.mark.slow
def test_sdk_parses_session_created_with_the_routing_extension(realtime_server: LiveServer) -> None:
    """A session key in the URL (`extra_query`): the SDK still parses `session.created`, and keeps our
    extension object (session key, serving process, resume token) as an extra field."""
    client = AsyncOpenAI(api_key="unused", base_url=f"{realtime_server.base_url}/v1")

    async def main() -> Any:
        async with client.realtime.connect(model=MODEL, extra_query={"session": "sdk-user-42"}) as connection:
            (created,) = await events_until(connection, "session.created", timeout=10)
            return created

    created = run(main())
    assert type(created).__name__ == "SessionCreatedEvent"
    assert created.session.type == "realtime"
    extension = dict(created.model_extra["freeze_omni"])
    assert extension.pop("resume_token").startswith("rt_")
    assert extension == {
        "session_key": "sdk-user-42",
        "instance_id": realtime_server.state.instance_id,
        "resume_grace_s": realtime_server.settings.resume_grace_s,
    }
