"""Running the app under uvicorn, with a shutdown that says goodbye to every session (close 1001)."""

from __future__ import annotations

import asyncio
import sys

import uvicorn

from app.config import Settings
from app.main import create_app
from app.socket_buffers import bounded_websocket_protocol


class GracefulServer(uvicorn.Server):
    """On SIGTERM/SIGINT, drains (see `ServerState.drain`) before uvicorn closes the connections itself.

    The listening socket stays open while draining, so `/readyz` can answer 503 "draining" and new
    sessions get a clear 1013 rather than a refused connection.
    """

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        state = getattr(self.config.app.state, "server", None)
        if state is not None:
            state.on_fatal = self._exit_on_fatal

    def _exit_on_fatal(self) -> None:
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        state = getattr(self.config.app.state, "server", None)
        if state is not None:
            await state.drain()
        await super().shutdown(sockets=sockets)


def uvicorn_config(settings: Settings) -> uvicorn.Config:
    """The uvicorn settings that carry our limits (message size, shutdown grace)."""
    return uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        # Above our own limit, so the app can send its error event before closing with 1009;
        # uvicorn's own limit still stops anything absurdly large.
        ws_max_size=2 * settings.max_message_bytes,
        ssl_keyfile=str(settings.ssl_keyfile) if settings.ssl_keyfile else None,
        ssl_certfile=str(settings.ssl_certfile) if settings.ssl_certfile else None,
        ws=bounded_websocket_protocol(settings.ws_send_buffer_bytes, settings.ws_close_timeout_s),
        # Pings keep idle connections alive through proxies (60 s idle timeouts are common) and find
        # peers that vanished without a close.
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 1,
    )


def run_server(settings: Settings) -> None:
    scheme = "https" if settings.ssl_certfile else "http"
    print(
        f"serving on {scheme}://{settings.host}:{settings.port}  "
        "(page: /, realtime: ws /v1/realtime, REST: POST /v1/turns, /readyz, /metrics)",
        flush=True,
    )
    server = GracefulServer(uvicorn_config(settings))
    asyncio.run(server.serve())
    state = getattr(server.config.app.state, "server", None)
    if state is not None and state.fatal_error is not None:
        # Non-zero, so a supervisor (systemd, Kubernetes, compose) restarts the process.
        print(f"exiting: the server cannot serve ({state.fatal_error})", file=sys.stderr, flush=True)
        sys.exit(1)
