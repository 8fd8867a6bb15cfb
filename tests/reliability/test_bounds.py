"""Every per-session buffer is bounded: queued control events, remembered item ids, typed text waiting
for a response (with the session going on after the refusal)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.sessions.events import InputAudioBufferCleared
from app.sessions.outbound import Outbound
from app.sessions.recent_ids import RecentIds
from tests.conftest import LiveServer
from tests.routes.conftest import realtime_client, run, send_text_turn

LLM_MAX_LEN = 1024  # typed text waiting for a response: at most 8 characters per token, 8192


def test_control_events_beyond_the_limit_are_refused_and_flagged() -> None:
    async def main() -> tuple[int, bool]:
        async def never_sent(_event: object) -> None:
            raise AssertionError("nothing is sent: the sender task is not running")

        outbound = Outbound(never_sent, max_control_events=50)
        for _ in range(500):
            outbound.put(InputAudioBufferCleared())
        return len(outbound._control), outbound.overflowed

    queued, overflowed = asyncio.run(main())
    assert queued == 50
    assert overflowed


def test_remembered_item_ids_are_bounded() -> None:
    ids = RecentIds(3)
    for item_id in ["a", "b", "c", "d"]:
        ids.add(item_id)
    assert len(ids) == 3
    assert "a" not in ids and "d" in ids
    ids.add("b")  # used again: now the most recent
    ids.add("e")
    assert "b" in ids and "c" not in ids


@pytest.fixture(scope="module")
def short_context_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    return start_server(llm_max_len=LLM_MAX_LEN, max_answer_tokens=4)


def test_typed_text_waiting_for_a_response_is_bounded(short_context_server: LiveServer) -> None:
    async def main() -> tuple[list[dict], dict]:
        async with realtime_client(short_context_server.ws_url) as client:
            for index in range(3):
                await client.send(
                    {
                        "type": "conversation.item.create",
                        "event_id": f"item-{index}",
                        "item": {
                            "type": "message",
                            "role": "user",
                            "content": [{"type": "input_text", "text": "word " * 600}],
                        },
                    }
                )
            error = await client.wait_for("error")
            added = client.events("conversation.item.added")
            # The session goes on (answering this much text is the conversation's own limit, not tested here).
            await client.send({"type": "session.update", "session": {"instructions": "Be brief."}})
            updated = await client.wait_for("session.updated")
            return [error, *added], updated

    (error, *added), updated = run(main())
    assert error["error"]["code"] == "pending_text_too_long"
    assert error["error"]["event_id"] == "item-2"
    assert len(added) == 2
    assert updated["session"]["instructions"] == "Be brief."


def test_a_typed_turn_longer_than_the_conversation_is_an_error_and_the_session_goes_on(
    short_context_server: LiveServer,
) -> None:
    """Text under the pending-text bound but over what one turn may hold (in tokens): a plain `error`
    naming the param, no failed response, no close; a normal turn after it is answered, and a bystander
    session's turn at the same time is answered too."""
    long_text = "word " * 1500  # 7500 characters: about 1500 tokens, more than 1024

    async def victim() -> tuple[dict, list[str], dict]:
        async with realtime_client(short_context_server.ws_url) as client:
            item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": long_text}]}
            await client.send({"type": "conversation.item.create", "item": item})
            await client.send({"type": "response.create", "event_id": "too-long"})
            error = await client.wait_for("error")
            await send_text_turn(client, "Hello.")
            done = await client.wait_for("response.done")
            return error, client.types(), done

    async def bystander() -> dict:
        async with realtime_client(short_context_server.ws_url) as client:
            await send_text_turn(client, "What is two plus two?")
            return await client.wait_for("response.done")

    async def main() -> tuple[tuple[dict, list[str], dict], dict]:
        return await asyncio.gather(victim(), bystander())

    (error, types, done), bystander_done = run(main())
    assert error["error"]["type"] == "invalid_request_error"
    assert error["error"]["code"] == "context_length_exceeded"
    assert error["error"]["param"] == "item.content"
    assert error["error"]["event_id"] == "too-long"
    assert "at most" in error["error"]["message"]
    assert types.count("response.created") == 1  # only the normal turn's
    assert done["response"]["status"] == "completed"
    assert bystander_done["response"]["status"] == "completed"
