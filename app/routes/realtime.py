"""WebSocket `/v1/realtime`: authenticate, admit, then hand every message to a `RealtimeSession`.

Refusals follow what clients expect: a bad key is an HTTP 401 at the handshake; a full server
(or one still loading its model) accepts, sends an `error` event and closes with 1013 ("try again
later"), which the official SDK retries. Clients that send `OpenAI-Beta: realtime=v1` get the beta
event names; everyone else gets the current (GA) names.
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect, WebSocketState

from app.engine.errors import CapacityError
from app.routes.auth import error_body
from app.routes.deps import INVALID_KEY_MESSAGE, KeyChecked, Server
from app.sessions.close_codes import CloseCode
from app.sessions.events import ErrorDetail, ErrorEvent, ServerEvent
from app.sessions.realtime import RealtimeSession

log = logging.getLogger(__name__)
router = APIRouter()


class _Socket:
    """Send and close that tolerate a peer that has already gone."""

    def __init__(self, websocket: WebSocket, dialect: str) -> None:
        self.websocket = websocket
        self.dialect = dialect
        self.closed = False

    async def send(self, event: ServerEvent) -> None:
        if self.closed:
            return
        text = event.to_json(self.dialect)
        if text is None:  # no such event in this dialect
            return
        try:
            await self.websocket.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True

    async def close(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.websocket.application_state != WebSocketState.DISCONNECTED:
                await self.websocket.close(code, reason[:120])
        except (RuntimeError, OSError):
            pass


async def _refuse_after_accept(socket: _Socket, code: int, error_code: str, message: str, kind: str) -> None:
    await socket.send(ErrorEvent(error=ErrorDetail(type=kind, code=error_code, message=message)))
    await socket.close(code, message)


@router.websocket("/v1/realtime")
async def realtime(websocket: WebSocket, server: Server, key_ok: KeyChecked) -> None:
    settings = server.settings
    offered = list(websocket.scope.get("subprotocols") or [])
    if not key_ok:
        server.metrics.count_error("invalid_api_key")
        body = error_body("invalid_api_key", INVALID_KEY_MESSAGE)
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(body, status_code=401))
        else:  # the server cannot answer the handshake with HTTP: close with "policy violation"
            await websocket.accept()
            await websocket.close(CloseCode.POLICY_VIOLATION, "invalid API key")
        return

    beta = "realtime=v1" in websocket.headers.get("openai-beta", "")
    await websocket.accept(subprotocol="realtime" if "realtime" in offered else None)
    socket = _Socket(websocket, "beta" if beta else "ga")
    if not server.ready:
        message = "the model is still loading" if server.load_error is None else "the model failed to load"
        await _refuse_after_accept(
            socket,
            CloseCode.TRY_AGAIN_LATER,
            "server_not_ready",
            f"{message}; try again later",
            "server_error",
        )
        return
    session = RealtimeSession(server.pool, settings, socket.send, socket.close, server.metrics)
    try:
        await session.open()
    except CapacityError as error:
        server.metrics.sessions_refused += 1
        await _refuse_after_accept(
            socket, CloseCode.TRY_AGAIN_LATER, "capacity_exceeded", str(error), "server_error"
        )
        await session.close()
        return
    server.sessions.add(session)
    try:
        while not socket.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
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
    except Exception:  # noqa: BLE001 - one broken session must not take the server down
        log.exception("realtime session failed")
        await _refuse_after_accept(
            socket, CloseCode.INTERNAL_ERROR, "internal_error", "internal server error", "server_error"
        )
    finally:
        server.sessions.discard(session)
        await session.close()
