"""Answer audio as binary WebSocket frames: one raw Opus packet each, behind a two-byte header.

A frame is ``[response number][output index][packet...]``:

- byte 0, the response number: the position (from 0, modulo 256) of the response's ``response.created``
  among all the ``response.created`` events this connection has sent. A client counts those events as
  they arrive and knows which response (``response.id``) each frame belongs to, without ids on the wire.
- byte 1, the output index: the item's ``output_index`` within that response (its
  ``response.output_item.added`` names the item); our responses have one audio item, index 0.

The number is assigned when ``response.created`` is actually sent, so it matches what the client saw,
even when a response's queued events are dropped. A resumed session (``?resume=``) goes on counting
over all its connections; a ``response.created`` sent again after a resume is counted once. Every other event stays JSON and unchanged; only
``response.output_audio.delta`` is replaced by these frames.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from pydantic import Field

from app.sessions.server_events import ResponseCreated, ServerEvent

HEADER_BYTES = 2
_REMEMBERED_RESPONSES = 16  # frames only ever belong to the last response or two


class OutputAudioPacket(ServerEvent):
    """One encoded packet of a response's audio, sent as a binary frame (never as JSON)."""

    type: Literal["x.output_audio.packet"] = "x.output_audio.packet"
    response_id: str
    item_id: str
    output_index: int = 0
    packet: bytes = Field(exclude=True)

    def payload(self, dialect: Any = "ga") -> None:
        """Not a JSON event: without a :class:`BinaryFramer` in the way it is simply not sent."""
        return None


def frame(response_number: int, output_index: int, packet: bytes) -> bytes:
    """The binary frame of one packet."""
    return bytes((response_number % 256, output_index)) + packet


def parse_frame(data: bytes) -> tuple[int, int, bytes]:
    """(response number, output index, packet) of a binary frame; raises ValueError if too short."""
    if len(data) <= HEADER_BYTES:
        raise ValueError(
            f"a binary audio frame has a {HEADER_BYTES}-byte header and a packet; got {len(data)}"
        )
    return data[0], data[1], data[HEADER_BYTES:]


class BinaryFramer:
    """Sits between a session's outgoing queue and the socket: numbers responses as their
    ``response.created`` goes out, and turns :class:`OutputAudioPacket` events into binary frames."""

    def __init__(self) -> None:
        self._created = 0
        self._numbers: OrderedDict[str, int] = OrderedDict()

    def wrap(
        self, send: Callable[[ServerEvent | bytes], Awaitable[None]]
    ) -> Callable[[ServerEvent], Awaitable[None]]:
        """A send callable for events, writing packets as binary frames through ``send``."""

        async def send_event(event: ServerEvent) -> None:
            if isinstance(event, OutputAudioPacket):
                number = self._numbers.get(event.response_id)
                if number is not None:  # no response.created went out: neither does its audio
                    await send(frame(number, event.output_index, event.packet))
                return
            if isinstance(event, ResponseCreated) and event.response.id not in self._numbers:
                # Numbered once: a response.created sent again after a resume keeps its number.
                self._numbers[event.response.id] = self._created % 256
                self._created += 1
                while len(self._numbers) > _REMEMBERED_RESPONSES:
                    self._numbers.popitem(last=False)
            await send(event)

        return send_event
