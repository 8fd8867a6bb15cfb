"""`response.create` and session fields that shape answers, through the official SDK: text-only answers
(per session and per response) carry no audio, out-of-band answers leave the conversation unchanged and
carry the client's metadata, the assistant can speak first, usage counts what went in and out."""

from __future__ import annotations

import time
from typing import Any

import pytest
from openai import AsyncOpenAI

from tests.conftest import LiveServer
from tests.routes.conftest import run
from tests.routes.test_openai_sdk import MODEL, events_until


def sdk_client(server: LiveServer) -> AsyncOpenAI:
    ws_base = server.base_url.replace("http://", "ws://") + "/v1"
    return AsyncOpenAI(api_key="unused", base_url=f"{server.base_url}/v1", websocket_base_url=ws_base)


def user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


async def text_turn(connection: Any, text: str, response: dict | None = None) -> list[Any]:
    await connection.conversation.item.create(item=user_text(text))
    await connection.response.create(**({"response": response} if response else {}))
    return await events_until(connection, "response.done")


def audio_events(events: list[Any]) -> list[Any]:
    return [e for e in events if "audio" in e.type and "transcript" not in e.type]


@pytest.mark.parametrize("dialect", ["ga", "beta"])
def test_text_only_session_answers_without_audio(realtime_server: LiveServer, dialect: str) -> None:
    client = sdk_client(realtime_server)
    realtime = client.realtime if dialect == "ga" else client.beta.realtime

    async def main() -> tuple[list[Any], list[Any], float, float]:
        async with realtime.connect(model=MODEL) as connection:
            await events_until(connection, "session.created", timeout=10)
            started = time.perf_counter()
            spoken = await text_turn(connection, "What is two plus two?")
            spoken_s = time.perf_counter() - started
            if dialect == "ga":
                await connection.session.update(session={"type": "realtime", "output_modalities": ["text"]})
            else:
                await connection.session.update(session={"modalities": ["text"]})
            await events_until(connection, "session.updated", timeout=10)
            started = time.perf_counter()
            written = await text_turn(connection, "What is two plus two?")
            return spoken, written, spoken_s, time.perf_counter() - started

    spoken, written, spoken_s, written_s = run(main())
    assert audio_events(spoken) and not audio_events(written)
    done = written[-1].response
    assert done.status == "completed"
    text_type = "response.output_text.delta" if dialect == "ga" else "response.text.delta"
    deltas = [e.delta for e in written if e.type == text_type]
    assert deltas
    modalities = done.output_modalities if dialect == "ga" else done.modalities
    assert list(modalities) == ["text"]
    (item,) = done.output
    assert item.content[0].type == ("output_text" if dialect == "ga" else "text")
    assert item.content[0].text == "".join(deltas)
    assert done.usage.output_token_details.audio_tokens == 0
    print(f"\nanswer time: spoken {spoken_s * 1000:.0f} ms, text-only {written_s * 1000:.0f} ms")


def test_text_only_per_response_and_metadata_echo(realtime_server: LiveServer) -> None:
    client = sdk_client(realtime_server)

    async def main() -> tuple[list[Any], list[Any]]:
        async with client.realtime.connect(model=MODEL) as connection:
            await events_until(connection, "session.created", timeout=10)
            one = await text_turn(
                connection, "Hello!", {"output_modalities": ["text"], "metadata": {"client_event_id": "ev-1"}}
            )
            two = await text_turn(connection, "Hello again!", {"metadata": {"topic": "greeting"}})
            return one, two

    one, two = run(main())
    assert not audio_events(one) and audio_events(two)  # the session default (audio) is back
    for events, metadata in ((one, {"client_event_id": "ev-1"}), (two, {"topic": "greeting"})):
        created = next(e for e in events if e.type == "response.created")
        assert created.response.metadata == metadata
        assert events[-1].response.metadata == metadata


def test_out_of_band_response_leaves_the_conversation_unchanged(realtime_server: LiveServer) -> None:
    """The next answer after an out-of-band one is the same as in a session that never had it (greedy)."""
    client = sdk_client(realtime_server)

    async def conversation(with_side: bool) -> tuple[list[Any], list[Any]]:
        async with client.realtime.connect(model=MODEL) as connection:
            await events_until(connection, "session.created", timeout=10)
            await text_turn(connection, "Hello!")
            side: list[Any] = []
            if with_side:
                await connection.response.create(
                    response={
                        "conversation": "none",
                        "input": [user_text("Summarise the weather.")],
                        "output_modalities": ["text"],
                        "metadata": {"purpose": "summary"},
                    }
                )
                side = await events_until(connection, "response.done")
            return side, await text_turn(connection, "What can you do?")

    side, after_side = run(conversation(True))
    _, plain = run(conversation(False))
    done = side[-1].response
    assert done.status == "completed" and done.metadata == {"purpose": "summary"}
    assert done.output[0].content[0].text
    assert not [e for e in side if e.type.startswith("conversation.item")]  # not added to the conversation
    heard = [e.output[0].content[0].transcript for e in (after_side[-1].response, plain[-1].response)]
    assert heard[0] == heard[1] and heard[0]


@pytest.mark.parametrize("instructions", [None, "Greet the user warmly."])
def test_assistant_speaks_first(realtime_server: LiveServer, instructions: str | None) -> None:
    """response.create on a conversation with no user item answers from the instructions (a greeting)."""
    client = sdk_client(realtime_server)

    async def main() -> list[Any]:
        async with client.realtime.connect(model=MODEL) as connection:
            await events_until(connection, "session.created", timeout=10)
            await connection.response.create(
                **({"response": {"instructions": instructions}} if instructions else {})
            )
            return await events_until(connection, "response.done")

    events = run(main())
    assert not [e for e in events if e.type == "error"]
    assert events[-1].response.status == "completed"
    assert audio_events(events)
    usage = events[-1].response.usage
    assert usage.output_tokens > 0 and usage.input_tokens == 0


def test_refused_response_field_creates_no_response(realtime_server: LiveServer) -> None:
    client = sdk_client(realtime_server)

    async def main() -> tuple[list[Any], list[Any]]:
        async with client.realtime.connect(model=MODEL) as connection:
            await events_until(connection, "session.created", timeout=10)
            await connection.conversation.item.create(item=user_text("Hello!"))
            await connection.response.create(response={"tool_choice": "required"})
            refused = await events_until(connection, "error", timeout=10)
            await connection.response.create()
            return refused, await events_until(connection, "response.done")

    refused, answered = run(main())
    assert refused[-1].error.param == "response.tool_choice"
    assert not [e for e in refused if e.type == "response.created"]
    assert answered[-1].response.status == "completed"
