"""`conversation.item.truncate`: the model's conversation keeps only the heard part of an answer, and
each bad parameter gets an `error` that names it, after which the session goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.routes.conftest import (
    RealtimeClient,
    answers_text,
    engine_answers,
    forced_state,
    realtime_client,
    text_turn,
    transcript,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def truncate_server(start_server: Callable[..., LiveServer]) -> Iterator[LiveServer]:
    """Answers of a few seconds (greedy text), the head kept listening."""
    server = start_server(max_answer_tokens=40, top_k=1, seed=2)
    with forced_state(server, "listen"):
        yield server
    server.stop()


def squeezed(text: str) -> str:
    return "".join(text.split())


async def truncate(client: RealtimeClient, **fields: Any) -> dict[str, Any]:
    """Send a truncate; returns the `conversation.item.truncated` or the `error` it caused."""
    event_id = f"evt_{len(client.log)}"
    await client.send({"type": "conversation.item.truncate", "event_id": event_id, **fields})
    while True:
        event = await client.next_event(10)
        if event["type"] == "conversation.item.truncated":
            return event
        if event["type"] == "error" and event["error"].get("event_id") == event_id:
            return event


def test_truncate_cuts_the_models_conversation_to_the_heard_text(truncate_server: LiveServer) -> None:
    async def main() -> tuple[str, float, list[str], list[str], dict, dict]:
        async with realtime_client(truncate_server.ws_url) as client:
            done = await text_turn(client, "Tell me something.")
            item_id = done["response"]["output"][0]["id"]
            sent_ms = 1000 * len(client.audio(done["response"]["id"])) / 48000
            whole = engine_answers(truncate_server)
            cut = await truncate(client, item_id=item_id, content_index=0, audio_end_ms=int(sent_ms / 3))
            after_cut = engine_answers(truncate_server)
            again = await truncate(client, item_id=item_id, content_index=0, audio_end_ms=0)
            await answers_text(client, "And then?")
            return transcript(done), sent_ms, whole, after_cut, cut, again

    said, sent_ms, whole, after_cut, cut, again = asyncio.run(main())
    assert cut["type"] == "conversation.item.truncated" and again["type"] == "conversation.item.truncated"
    assert sent_ms > 1000
    assert squeezed(whole[0]) == squeezed(said)
    kept = squeezed(after_cut[0])
    assert kept and len(kept) < len(squeezed(said)) and squeezed(said).startswith(kept)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"content_index": 7}, "content_index"),
        ({"audio_end_ms": 10_000_000}, "audio_end_ms"),
        ({"audio_end_ms": -5}, "audio_end_ms"),
        ({"item_id": "user"}, "item_id"),
    ],
    ids=["content_index", "audio_end_ms_past_the_audio", "audio_end_ms_negative", "user_item"],
)
def test_a_bad_truncate_names_the_parameter_and_the_session_goes_on(
    truncate_server: LiveServer, fields: dict[str, Any], param: str
) -> None:
    async def main() -> tuple[dict, list[str], list[str]]:
        async with realtime_client(truncate_server.ws_url) as client:
            await client.send(
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi"}],
                    },
                }
            )
            user_item = (await client.wait_for("conversation.item.added"))["item"]["id"]
            await client.send({"type": "response.create"})
            done = await client.wait_for("response.done", timeout=60)
            before = engine_answers(truncate_server)
            request = {
                "item_id": done["response"]["output"][0]["id"],
                "content_index": 0,
                "audio_end_ms": 100,
            }
            request.update(fields)
            if request["item_id"] == "user":
                request["item_id"] = user_item
            answer = await truncate(client, **request)
            after = engine_answers(truncate_server)
            await answers_text(client, "Still there?")  # the session goes on
            return answer, before, after

    answer, before, after = asyncio.run(main())
    assert answer["type"] == "error", answer
    assert answer["error"]["param"] == param, answer
    assert answer["error"]["message"]
    assert after == before  # nothing was cut
