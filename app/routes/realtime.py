"""WebSocket `/v1/realtime`: authenticate, admit, then hand every message to a `RealtimeSession`.

Refusals follow what clients expect: a bad key is an HTTP 401 at the handshake; a full server
(or one still loading its model) accepts, sends an `error` event and closes with 1013 ("try again
later"), which the official SDK retries. Clients that send `OpenAI-Beta: realtime=v1` get the beta
event names; everyone else gets the current (GA) names.

Behind a load balancer: a client may name its session (`?session=KEY`, see `routing`), and
`session.created` says which key and which process it got. A draining process (SIGTERM) refuses
new sessions with 1013 and tells each live one, with an `error` of code `server_shutting_down`,
to reconnect with its key (the balancer then picks a live process) before closing it with 1001.

Resume: `session.created` also carries a resume token. A connection that drops without a close
frame parks its session for `FREEZE_OMNI_RESUME_GRACE_S`; `?session=KEY&resume=TOKEN[&received=N]`
gets it back (see `app.sessions.resumable`). An unknown, used, expired or other key's token gets an
`error` of code `session_not_found` and a fresh session; for a token whose session expired within the
last grace time, the error's message says so (the client came back too late).
"""

from __future__ import annotations

import asyncio
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
    RECEIVED_PARAM,
    RESUME_PARAM,
    SESSION_KEY_PARAM,
    SessionKeyError,
    new_session_key,
    parse_received,
    parse_session_key,
)
from app.server_state import ServerState
from app.sessions.close_codes import CloseCode
from app.sessions.events import ErrorDetail, ErrorEvent
from app.sessions.realtime import RealtimeSession
from app.sessions.resumable import ResumableSession
from app.sessions.sent_log import SentLog
from app.sessions.session_link import SessionLink

log = logging.getLogger(__name__)
router = APIRouter()
SESSION_NOT_FOUND = (
    "no session to resume with this token here: it is unknown, already used, expired "
    "(FREEZE_OMNI_RESUME_GRACE_S) or another API key's; this is a new session"
)


def expired_message(grace_s: float, late_s: float) -> str:
    """The refusal of a resume that came after its session's grace time (it was ended meanwhile)."""
    return (
        f"the session expired {late_s:.1f} s before this resume: it was kept {grace_s:g} s after its "
        "connection was lost (FREEZE_OMNI_RESUME_GRACE_S); this is a new session"
    )


class _Socket:
    """One accepted WebSocket: writes and a close that tolerate a peer that has already gone."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.closed = False
        self._sending = asyncio.Lock()  # the session's sender and a drain notice may send at once

    async def send_message(self, message: dict[str, Any]) -> bool:
        if self.closed:
            return False
        try:
            async with self._sending:
                await self.websocket.send(message)
            return True
        except (WebSocketDisconnect, RuntimeError, OSError):
            self.closed = True
            return False

    async def close(self, code: int, reason: str) -> None:
        """Close with `code`, without waiting for a client that reads nothing (see `app.socket_buffers`)."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.websocket.application_state != WebSocketState.DISCONNECTED:
                await self.websocket.close(code, reason[:120])
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass  # the client left first


async def _refuse_after_accept(
    link: SessionLink, code: int, error_code: str, message: str, kind: str
) -> None:
    await link.send(ErrorEvent(error=ErrorDetail(type=kind, code=error_code, message=message)))
    await link.close(code, message)


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
    socket = _Socket(websocket)
    answer = SessionLink(socket, "beta" if beta else "ga")  # for refusals before a session exists
    query = websocket.query_params
    try:
        chosen_key = parse_session_key(query.get(SESSION_KEY_PARAM), settings.session_key_max_chars)
        received = parse_received(query.get(RECEIVED_PARAM))
    except SessionKeyError as error:
        server.metrics.count_error(error.code)
        detail = ErrorDetail(code=error.code, message=str(error), param=error.param)
        await answer.send(ErrorEvent(error=detail))
        await answer.close(CloseCode.POLICY_VIOLATION, f"invalid {error.param}")
        return
    session_key = chosen_key or new_session_key()
    if server.draining:
        server.metrics.sessions_refused += 1
        await _refuse_after_accept(
            answer,
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
            answer,
            CloseCode.TRY_AGAIN_LATER,
            "server_not_ready",
            f"{message}; try again later",
            "server_error",
        )
        return
    key = presented_key(websocket.headers, offered) if settings.api_keys else None
    token = query.get(RESUME_PARAM)
    if token:
        held = server.resumable.claim(token, key)
        if held is not None:
            assert isinstance(held, ResumableSession)
            await held.resume(socket, received)
            server.metrics.sessions_resumed += 1
            await _pump(websocket, server, socket, held)
            return
        server.metrics.count_error("session_not_found")
        refusal = server.resumable.refusal(token)
        not_found = SESSION_NOT_FOUND
        if refusal.expired:
            not_found = expired_message(server.resumable.grace_s, refusal.late_s)
            log.info("a resume came %.1f s after its session's grace time had ended", refusal.late_s)
    if not server.key_sessions.acquire(key):
        server.metrics.sessions_refused += 1
        await _refuse_after_accept(
            answer,
            CloseCode.TRY_AGAIN_LATER,
            "key_session_limit",
            f"this API key already holds {settings.max_sessions_per_key} live session(s) "
            "(FREEZE_OMNI_MAX_SESSIONS_PER_KEY); close one or try again later",
            "invalid_request_error",
        )
        return
    held = await _open(server, socket, answer.dialect, session_key, key)
    if held is None:
        return
    if token:  # after the new session's session.created
        detail = ErrorDetail(code="session_not_found", message=not_found, param=RESUME_PARAM)
        held.session.outbound.put(ErrorEvent(error=detail))
    await _pump(websocket, server, socket, held)


async def _open(
    server: ServerState, socket: _Socket, dialect: str, session_key: str, key: str | None
) -> ResumableSession | None:
    """A new session (its key place taken by the caller), or None when the engine refused it."""
    settings = server.settings
    resumable = server.resumable.enabled
    link = SessionLink(socket, dialect, SentLog(settings.resume_replay_s) if resumable else None)
    session = RealtimeSession(server.pool, settings.session_settings(), link.send, link.close, server.metrics)
    link.outbound = session.outbound

    def ended(held: ResumableSession) -> None:
        server.sessions.discard(held)
        server.key_sessions.release(key)
        if not server.sessions:
            server.memory.release_when_idle()

    held = ResumableSession(
        session, link, server.resumable, session_key, server.instance_id, key, on_ended=ended
    )
    try:
        await session.open()
    except CapacityError as error:
        server.metrics.sessions_refused += 1
        await _refuse_after_accept(
            link, CloseCode.TRY_AGAIN_LATER, "capacity_exceeded", str(error), "server_error"
        )
        await held.end()
        return None
    server.sessions.add(held)
    if server.draining:  # the drain began while this session was opening: it missed the goodbyes
        await held.shutdown(1001, "server shutting down", grace_s=settings.shutdown_grace_s)
    return held


async def _pump(websocket: WebSocket, server: ServerState, socket: _Socket, held: ResumableSession) -> None:
    """Pass the connection's messages to the session until either side ends it; then park or end it."""
    settings = server.settings
    close_code: int | None = None
    try:
        while not socket.closed and held.serves(socket):
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                close_code = message.get("code")
                break
            if socket.closed or not held.serves(socket):
                break  # a message that was on its way when a resume took the session over
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            if len(raw) > settings.max_message_bytes:
                await _refuse_after_accept(
                    held.link,
                    CloseCode.MESSAGE_TOO_BIG,
                    "message_too_large",
                    f"a message of {len(raw)} bytes exceeds the limit of {settings.max_message_bytes}",
                    "invalid_request_error",
                )
                break
            await held.session.handle_message(raw)
    except WebSocketDisconnect as disconnect:
        close_code = disconnect.code
    except Exception as error:  # noqa: BLE001 - one broken session must not take the server down
        await held.session.abort("receive loop", error)
    finally:
        await held.connection_lost(socket, close_code, can_park=not server.draining)
