"""Session fields the server cannot honour are refused with an `error` naming them, never silently echoed;
the rest of the same `session.update` applies and the session goes on. Driven through the official SDK, in
the GA and the beta dialect."""

from __future__ import annotations

from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.conftest import LiveServer
from tests.routes.conftest import run
from tests.routes.test_openai_sdk import MODEL, events_until

# (GA session fields, beta session fields, the refused parameter, how the echo must read afterwards)
REFUSED = {
    "transcription": (
        {"audio": {"input": {"transcription": {"model": "gpt-4o-mini-transcribe"}}}},
        {"input_audio_transcription": {"model": "gpt-4o-mini-transcribe"}},
        "session.audio.input.transcription",
    ),
    "noise_reduction": (
        {"audio": {"input": {"noise_reduction": {"type": "near_field"}}}},
        {"input_audio_noise_reduction": {"type": "near_field"}},
        "session.audio.input.noise_reduction",
    ),
    "speed": ({"audio": {"output": {"speed": 1.5}}}, {"speed": 1.5}, "session.audio.output.speed"),
    "tools": (
        {"tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]},
        {"tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]},
        "session.tools",
    ),
    "tool_choice": ({"tool_choice": "required"}, {"tool_choice": "required"}, "session.tool_choice"),
    "idle_timeout_ms": (
        {"audio": {"input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}}}},
        {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 5000}},
        "session.audio.input.turn_detection.idle_timeout_ms",
    ),
}


def _text_turn_events(connection: Any) -> Any:
    async def turn() -> list[Any]:
        await connection.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}
        )
        await connection.response.create()
        return await events_until(connection, "response.done")

    return turn()


@pytest.mark.parametrize("dialect", ["ga", "beta"])
@pytest.mark.parametrize("field", list(REFUSED))
def test_unhonoured_field_is_refused_and_the_rest_applies(
    realtime_server: LiveServer, field: str, dialect: str
) -> None:
    ga_fields, beta_fields, param = REFUSED[field]
    ws_base = realtime_server.base_url.replace("http://", "ws://") + "/v1"
    client = AsyncOpenAI(
        api_key="unused", base_url=f"{realtime_server.base_url}/v1", websocket_base_url=ws_base
    )
    realtime = client.realtime if dialect == "ga" else client.beta.realtime

    async def main() -> tuple[list[Any], list[Any]]:
        async with realtime.connect(model=MODEL) as connection:
            await events_until(connection, "session.created", timeout=10)
            fields = ga_fields if dialect == "ga" else beta_fields
            session = {"instructions": "Be brief.", "model": "gpt-realtime", **fields}
            if dialect == "ga":
                session["type"] = "realtime"
            await connection.session.update(session=session)
            update = await events_until(connection, "session.updated", timeout=10)
            return update, await _text_turn_events(connection)

    update, turn = run(main())
    errors = [e for e in update if e.type == "error"]
    assert len(errors) == 1, update
    assert errors[0].error.param == param
    assert errors[0].error.code == "unsupported_parameter"
    session = update[-1].session
    assert session.instructions == "Be brief."  # the rest of the update applied
    echoed = session.model_dump()
    assert echoed["model"] == "freeze-omni"  # the model that answers, not whatever the client named
    if dialect == "ga":
        audio = echoed["audio"]
        assert audio["input"]["transcription"] is None and audio["input"]["noise_reduction"] is None
        assert audio["output"]["speed"] in (None, 1.0)
    else:
        assert echoed["input_audio_transcription"] is None and echoed["input_audio_noise_reduction"] is None
        assert echoed["speed"] in (None, 1.0)
    assert echoed["tools"] in (None, []) and echoed["tool_choice"] in (None, "auto")
    turn_detection = (
        echoed["audio"]["input"]["turn_detection"] if dialect == "ga" else echoed["turn_detection"]
    )
    assert turn_detection.get("idle_timeout_ms") is None
    assert turn[-1].response.status == "completed"  # the session goes on
    assert not [e for e in turn if e.type == "error"]
