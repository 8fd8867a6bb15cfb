"""WebSocket connections with a bounded send buffer, so "sent" means "on its way to the client".

Left alone, Linux grows a loopback or LAN socket's send buffer to megabytes: a client that stops
reading would then swallow minutes of answer audio into kernel memory before any send of ours
blocks, which defeats both the real-time pacing of answers and the detection of clients that stopped
reading (`FREEZE_OMNI_MAX_OUTBOUND_SECONDS`). We cap the kernel send buffer and the transport's
write buffer of each WebSocket connection at `FREEZE_OMNI_WS_SEND_BUFFER_BYTES`.

The close handshake is bounded too (`FREEZE_OMNI_WS_CLOSE_TIMEOUT_S`). uvicorn's close waits, like any
send, until the client has taken what is buffered, and after the close frame it ends the connection
with `transport.close()`, which also waits for the buffer to drain: a peer that never reads again
would hold the close, the connection and its file descriptor forever. Here a close frame that cannot
go out at once is queued behind the (bounded) buffer without waiting, and a peer that has not
answered it (or a keep-alive timeout) within the timeout is disconnected: TCP abort, buffer dropped.

A message sent with `LAST_WORD` set (the notice before a close, see `routes.realtime`) does not wait
either: it and the close frame queue behind what is buffered, so a client that reads again finds
them in order.

This subclasses uvicorn's default WebSocket protocol (the websockets sans-I/O one); with a uvicorn
that lacks it the server keeps uvicorn's own choice and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import socket

log = logging.getLogger(__name__)
LAST_WORD = "freeze_omni.last_word"  # key of an ASGI websocket.send event: queue it without waiting


def bounded_websocket_protocol(
    send_buffer_bytes: int, close_timeout_s: float = 5.0
) -> type[asyncio.Protocol] | str:
    """uvicorn's `ws` protocol class, capping each connection's send buffers and close handshake;
    "auto" if unavailable."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:  # pragma: no cover - an older or newer uvicorn
        log.warning("uvicorn has no websockets-sansio protocol: WebSocket send buffers are not capped")
        return "auto"

    class BoundedSendWebSocketProtocol(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
                except OSError as error:  # pragma: no cover - not a TCP socket
                    log.debug("cannot cap SO_SNDBUF: %s", error)
            if isinstance(transport, asyncio.WriteTransport):
                transport.set_write_buffer_limits(high=send_buffer_bytes)

        write_paused = False

        def pause_writing(self) -> None:
            self.write_paused = True
            super().pause_writing()

        def resume_writing(self) -> None:
            self.write_paused = False
            super().resume_writing()

        async def send(self, message) -> None:  # noqa: ANN001 - an ASGI send event
            closing = message["type"] == "websocket.close" and self.handshake_complete and not self.close_sent
            forced = closing or (message["type"] == "websocket.send" and message.get(LAST_WORD, False))
            if forced and self.handshake_complete and not self.disconnected:
                # One small message: it goes behind what is buffered even if the client reads nothing.
                self.writable.set()
            await super().send(message)
            if forced and self.write_paused and not self.disconnected:
                self.writable.clear()
            if closing and self.close_timer is not None:
                self.close_timer.cancel()
                self.close_timer = self.loop.call_later(close_timeout_s, self._disconnect)

        def keepalive_timeout(self) -> None:
            super().keepalive_timeout()
            self.loop.call_later(close_timeout_s, self._disconnect)

        def _disconnect(self) -> None:
            """The peer took neither our close nor what was queued before it: drop the TCP connection."""
            if not self.disconnected:
                log.info("WebSocket peer %s did not complete the close handshake: disconnecting", self.client)
                self.transport.abort()

    return BoundedSendWebSocketProtocol
