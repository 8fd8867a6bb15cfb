"""WebSocket connections with a bounded send buffer, so "sent" means "on its way to the client".

Left alone, Linux grows a loopback or LAN socket's send buffer to megabytes: a client that stops
reading would then swallow minutes of answer audio into kernel memory before any send of ours
blocks, which defeats both the real-time pacing of answers and the detection of clients that stopped
reading (`FREEZE_OMNI_MAX_OUTBOUND_SECONDS`). We cap the kernel send buffer and the transport's
write buffer of each WebSocket connection at `FREEZE_OMNI_WS_SEND_BUFFER_BYTES`.

This subclasses uvicorn's default WebSocket protocol (the websockets sans-I/O one); with a uvicorn
that lacks it the server keeps uvicorn's own choice and says so in the log.
"""

from __future__ import annotations

import asyncio
import logging
import socket

log = logging.getLogger(__name__)


def bounded_websocket_protocol(send_buffer_bytes: int) -> type[asyncio.Protocol] | str:
    """uvicorn's `ws` protocol class, capping each connection's send buffers; "auto" if unavailable."""
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

    return BoundedSendWebSocketProtocol
