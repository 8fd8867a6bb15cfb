"""WebSocket `/v1/realtime`: authenticate, admit, then hand every message to a `RealtimeSession`.

Refusals follow what clients expect: a bad key is an HTTP 401 at the handshake; a full server
(or one still loading its model) accepts, sends an `error` event and closes with 1013 ("try again
later"), which the official SDK retries. Clients that send `OpenAI-Beta: realtime=v1` get the beta
event names; everyone else gets the current (GA) names.

Behind a load balancer: a client may name its session (`?session=KEY`, see `routing`), and
`session.created` says which key and which process it got. A draining process (SIGTERM) refuses
new sessions with 1013 and tells each live one, with an `error` of code `server_shutting_down`,
to reconnect with its key (the balancer then picks a live process) before closing it with 1001.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.engine.errors import CapacityError
from app.routes.auth import error_body, presented_key
from app.routes.deps import INVALID_KEY_MESSAGE, KeyChecked, OriginChecked, Server
from app.routes.origin import ORIGIN_REFUSED_CODE, refusal_message
from app.routes.routing import (
    EXTENSION_FIELD,
    SESSION_KEY_PARAM,
    SessionKeyError,
    created_extension,
    new_session_key,
    parse_session_key,
)
from app.server_state import ServerState
from app.sessions.close_codes import CloseCode
from app.sessions.events import ErrorDetail, ErrorEvent, ServerEvent
from app.sessions.realtime import RealtimeSession
from app.socket_buffers import LAST_WORD

log = logging.getLogger(__name__)
router = APIRouter()


class _Socket:
    """Send and close that tolerate a peer that has already gone.

    `created_extension` is added to `session.created` (an extension object OpenAI clients ignore).
    """

    def __init__(self, websocket: WebSocket, dialect: str, created_extension: dict[str, Any]) -> None:
        self.websocket = websocket
        self.dialect = dialect
        self.created_extension = created_extension
        self.closed = False
        self._sending = asyncio.Lock()  # the session's sender and a drain notice may send at once

    async def send(
        self, event: ServerEvent | bytes, extension: dict[str, Any] | None = None, last_word: bool = False
    ) -> None:
        if self.closed:
            return
        if isinstance(event, bytes):  # a binary audio frame (app.sessions.binary_frames)
            message: dict[str, Any] = {"type": "websocket.send", "bytes": event}
        else:
            if extension is None and event.type == "session.created":
                extension = self.created_extension
            payload = event.payload(self.dialect)
            if payload is None:  # no such event in this dialect
                return
            if extension is not None:
                payload[EXTENSION_FIELD] = extension
            message = {"type": "websocket.send", "text": json.dumps(payload, separators=(",", ":"))}
        if last_word:
            message[LAST_WORD] = True
        try:
            async with self._sending:
                await self.websocket.send(message)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True

    async def close(self, code: int, reason: str, notice: ServerEvent | None = None) -> None:
        """Close with `code`; `notice` (an error saying why) goes just before the close frame, and
        neither waits for a client that reads nothing (see `app.socket_buffers`)."""
        if self.closed:
            return
        if notice is not None:
            await self.send(notice, last_word=True)
            if self.closed:
                return
        self.closed = True
        try:
            if self.websocket.application_state != WebSocketState.DISCONNECTED:
                await self.websocket.close(code, reason[:120])
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client left first


class _LiveConnection:
    """A served session as the server state sees it: what a draining process says goodbye to."""

    def __init__(self, session: RealtimeSession, socket: _Socket, session_key: str) -> None:
        self.session = session
        self.socket = socket
        self.session_key = session_key

    @property
    def live_tasks(self) -> int:
        """The session's running tasks (none must outlive it)."""
        return self.session.live_tasks

    async def shutdown(self, code: int, reason: str, grace_s: float = 0.0) -> None:
        """Tell the client to reconnect elsewhere (with its key), then end the session with `code`."""
        notice = ErrorDetail(
            type="server_error",
            code="server_shutting_down",
            message="this server is shutting down: reconnect with the same ?session= key "
            "to continue on another one",
        )
        hint = {"reconnect": True, "session_key": self.session_key}
        await self.socket.send(ErrorEvent(error=notice), extension=hint)
        await self.session.shutdown(code, reason, grace_s=grace_s)

    async def fail(self, code: str, message: str) -> None:
        """The server cannot go on: `error` (server_error) with a reconnect hint, then close 1011."""
        notice = ErrorDetail(type="server_error", code=code, message=message)
        hint = {"reconnect": True, "session_key": self.session_key}
        await self.socket.send(ErrorEvent(error=notice), extension=hint)
        await self.session.shutdown(CloseCode.INTERNAL_ERROR, "server error", grace_s=1.0)


async def _refuse_after_accept(socket: _Socket, code: int, error_code: str, message: str, kind: str) -> None:
    await socket.send(ErrorEvent(error=ErrorDetail(type=kind, code=error_code, message=message)))
    await socket.close(code, message)


async def _deny_handshake(websocket: WebSocket, status: int, code: str, message: str) -> None:
    """Refuse the handshake with an HTTP answer (or, where the server cannot, close with 1008)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(error_body(code, message), status_code=status))
    else:  # the server cannot answer the handshake with HTTP: close with "policy violation"
        await websocket.accept()
        await websocket.close(CloseCode.POLICY_VIOLATION, message[:120])


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket, server: Server, origin_ok: OriginChecked, key_ok: KeyChecked
) -> None:
    settings = server.settings
    offered = list(websocket.scope.get("subprotocols") or [])
    if not origin_ok:
        server.metrics.count_error(ORIGIN_REFUSED_CODE)
        message = refusal_message(websocket.headers.get("origin", ""))
        await _deny_handshake(websocket, 403, ORIGIN_REFUSED_CODE, message)
        return
    if not key_ok:
        server.metrics.count_error("invalid_api_key")
        await _deny_handshake(websocket, 401, "invalid_api_key", INVALID_KEY_MESSAGE)
        return

    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    try:
        chosen_key = parse_session_key(
            websocket.query_params.get(SESSION_KEY_PARAM), settings.session_key_max_chars
        )
    except SessionKeyError as error:
        server.metrics.count_error("invalid_session_key")
        socket = _Socket(websocket, "beta" if beta else "ga", {})
        await socket.send(
            ErrorEvent(error=ErrorDetail(code="invalid_session_key", message=str(error), param="session"))
        )
        await socket.close(CloseCode.POLICY_VIOLATION, "invalid session key")
        return
    session_key = chosen_key or new_session_key()
    extension = created_extension(session_key, server.instance_id)
    socket = _Socket(websocket, "beta" if beta else "ga", extension)
    if server.draining:
        server.metrics.sessions_refused += 1
        await _refuse_after_accept(
            socket,
            CloseCode.TRY_AGAIN_LATER,
            "server_shutting_down",
            "this server is shutting down; reconnect to reach another one",
            "server_error",
        )
        return
    if not server.ready:
        message = "the model is still loading"
        if server.load_error is not None:
            message = "the model failed to load"
        elif server.fatal_error is not None:
            message = "the server failed and is restarting"
        await _refuse_after_accept(
            socket,
            CloseCode.TRY_AGAIN_LATER,
            "server_not_ready",
            f"{message}; try again later",
            "server_error",
        )
        return
    key = presented_key(websocket.headers, offered) if settings.api_keys else None
    with server.key_sessions.hold(key) as admitted:
        if not admitted:
            server.metrics.sessions_refused += 1
            await _refuse_after_accept(
                socket,
                CloseCode.TRY_AGAIN_LATER,
                "key_session_limit",
                f"this API key already holds {settings.max_sessions_per_key} live session(s) "
                "(FREEZE_OMNI_MAX_SESSIONS_PER_KEY); close one or try again later",
                "invalid_request_error",
            )
            return
        await _serve(websocket, server, socket, session_key)


async def _serve(websocket: WebSocket, server: ServerState, socket: _Socket, session_key: str) -> None:
    """Open the session, pass it every message until either side ends it, then free it."""
    settings = server.settings
    session = RealtimeSession(
        server.pool, settings.session_settings(), socket.send, socket.close, server.metrics
    )
    try:
        await session.open()
    except CapacityError as error:
        server.metrics.sessions_refused += 1
        await _refuse_after_accept(
            socket, CloseCode.TRY_AGAIN_LATER, "capacity_exceeded", str(error), "server_error"
        )
        await session.close()
        return
    connection = _LiveConnection(session, socket, session_key)
    server.sessions.add(connection)
    if server.draining:  # the drain began while this session was opening: it missed the goodbyes
        await connection.shutdown(1001, "server shutting down", grace_s=settings.shutdown_grace_s)
    try:
        while not socket.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect" or socket.closed:
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            if len(raw) > settings.max_message_bytes:
                await _refuse_after_accept(
                    socket,
                    CloseCode.MESSAGE_TOO_BIG,
                    "message_too_large",
                    f"a message of {len(raw)} bytes exceeds the limit of {settings.max_message_bytes}",
                    "invalid_request_error",
                )
                break
            await session.handle_message(raw)
    except WebSocketDisconnect:
        pass
    except Exception as error:  # noqa: BLE001 - one broken session must not take the server down
        await session.abort("receive loop", error)
    finally:
        server.sessions.discard(connection)
        await session.close()
