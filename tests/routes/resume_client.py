"""What a resuming client does, for the resume tests (one process, and through nginx): count what it
received, drop its connection without a close frame, reconnect with its token; and a tap on the engine's
answer streams, so a test can compare what the client heard with exactly the audio the engine made."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import numpy as np
import websockets

from app.engine.events import AnswerStream, AudioDelta
from app.sessions.audio_formats import OutputAudioConverter
from app.sessions.session_config import SessionConfig
from tests.routes.conftest import RealtimeClient, send_text_turn


def extension(client: RealtimeClient) -> dict[str, Any]:
    """The `freeze_omni` object of the connection's `session.created`."""
    return client.events("session.created")[-1]["freeze_omni"]


def received(*connections: RealtimeClient) -> int:
    """What the protocol asks a resuming client to count: messages received over all its connections,
    except each connection's `session.created`."""
    return sum(1 for c in connections for r in c.log if r.event["type"] != "session.created")


async def connect(url: str, **connect_args: Any) -> RealtimeClient:
    """A connection, after its `session.created` (or its first event, if refused)."""
    ws = await websockets.connect(url, proxy=None, max_size=None, open_timeout=10, **connect_args)
    client = RealtimeClient(ws)
    await client.next_event(timeout=10)
    return client


def resume_url(url: str, session_key: str, token: str, count: int | None = None) -> str:
    query = f"{url}?session={session_key}&resume={token}"
    return query if count is None else f"{query}&received={count}"


LONG_PROMPTS = ("What is the weather like?", "Tell me a story.", "Please talk for a while.", "Hello!")


async def start_answer(
    client: RealtimeClient, audio_ms: float, prompts: tuple[str, ...] = LONG_PROMPTS
) -> str:
    """Ask for an answer and read until `audio_ms` of its audio has arrived; returns its response id.

    The tiny model's answers vary in length with each session's seed: a prompt whose answer ends before
    `audio_ms` is followed by the next one, until an answer is long enough to be cut in the middle.
    """
    wanted = int(audio_ms * 48)  # bytes of 24 kHz pcm16
    for prompt in prompts:
        await send_text_turn(client, prompt)
        created = await client.wait_for("response.created")
        response_id = created["response"]["id"]

        def enough_or_over(rid: str = response_id) -> bool:
            over = any(e["response"]["id"] == rid for e in client.events("response.done"))
            return over or len(client.audio(rid)) >= wanted

        await client.pump(enough_or_over, timeout=30)
        if len(client.audio(response_id)) >= wanted and not any(
            e["response"]["id"] == response_id for e in client.events("response.done")
        ):
            return response_id
        await client.wait_for("response.done", where=lambda e, rid=response_id: e["response"]["id"] == rid)
    raise AssertionError(f"no answer of {prompts} lasted {audio_ms} ms; got {client.types()}")


def drop(client: RealtimeClient) -> None:
    """The network goes away: the TCP connection ends without a close frame."""
    client.ws.transport.abort()


async def close_quietly(*clients: RealtimeClient) -> None:
    for client in clients:
        with contextlib.suppress(Exception):  # already gone
            await asyncio.wait_for(client.ws.close(), 5)


def record_made_audio(monkeypatch) -> MadeAudio:
    """Record the audio of every answer an in-process server's engine streams (observes, changes nothing)."""
    made = MadeAudio()
    original = AnswerStream.next_event

    async def recording(self: AnswerStream):
        event = await original(self)
        if isinstance(event, AudioDelta):
            made.pieces[self.answer_id].append(np.array(event.samples, copy=True))
        return event

    monkeypatch.setattr(AnswerStream, "next_event", recording)
    return made


class MadeAudio:
    """Every answer's audio as the engine made it (the answer stream's `AudioDelta`s), by response id."""

    def __init__(self) -> None:
        self.pieces: dict[str, list[np.ndarray]] = defaultdict(list)

    def wire_bytes(self, response_id: str) -> bytes:
        """The answer's audio in the session's default wire format (pcm16 at 24 kHz), converted as the
        server converts it, had every byte gone out on one connection."""
        converter = OutputAudioConverter(SessionConfig().output_format.wire)
        return b"".join(converter.push(p) for p in self.pieces[response_id]) + converter.flush()
