"""A network blip between a client and a live server, for tests of clients that resume.

`BlipProxy` forwards TCP from a loopback port to the server, byte for byte, on an event loop of its own.
`blip()` resets every connection through it (SO_LINGER 0: an RST, no close frame, as when a phone changes
networks) and, for `down_s`, resets new connections the moment they arrive, as a network that is
still away. Both ends see a connection lost without a close frame; the server parks the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time

from tests.conftest import free_port

CHUNK_BYTES = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST: no FIN, no close frame, whatever was unsent is lost."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already gone
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class BlipProxy:
    """`http://127.0.0.1:{port}` reaches the server at `target_port` until `blip()`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0  # accepted and forwarded
        self.refused = 0  # reset on arrival while the network was down
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._down_until = 0.0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="blip-proxy", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BlipProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def blip(self, down_s: float = 0.0) -> int:
        """Reset every open connection; keep the network down for `down_s`. Returns how many were cut."""
        return self._call(self._cut(down_s))

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def _close(self) -> None:
        await self._cut(0.0)
        if self._server is not None:
            self._server.close()
        forwarding = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in forwarding:
            task.cancel()
        await asyncio.gather(*forwarding, return_exceptions=True)

    async def _cut(self, down_s: float) -> int:
        self._down_until = time.monotonic() + down_s
        pairs, self._pairs = self._pairs, set()
        for client, upstream in pairs:
            _reset(client)
            _reset(upstream)
        return len(pairs)

    async def _forward(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        if time.monotonic() < self._down_until:
            self.refused += 1
            _reset(client)
            return
        upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.target_port)
        pair = (client, upstream)
        self._pairs.add(pair)
        self.connections += 1
        await asyncio.gather(
            self._pipe(client_reader, upstream), self._pipe(upstream_reader, client), return_exceptions=True
        )
        if pair in self._pairs:  # ended by either side, not by a blip: pass the FIN on
            self._pairs.discard(pair)
            for writer in pair:
                writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK_BYTES):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
