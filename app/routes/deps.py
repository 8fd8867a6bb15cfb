"""Dependencies the routes share: the running server's state and the API-key check.

Routes declare what they need as `Annotated` aliases (`Server`, `Authorized`) instead of each reading
`request.app.state` and checking keys by hand.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from app.routes.auth import error_body, key_is_valid, presented_key
from app.routes.origin import ORIGIN_REFUSED_CODE, origin_allowed, refusal_message
from app.server_state import ServerState

INVALID_KEY_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"


class ApiError(Exception):
    """A REST refusal: raised anywhere in a route or dependency, answered as `{"error": {...}}` JSON."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def response(self) -> JSONResponse:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        return JSONResponse(
            error_body(self.code, self.message, kind), status_code=self.status, headers=self.headers
        )


async def api_error_handler(_request: Request, error: Exception) -> JSONResponse:
    """Registered on the app for `ApiError`."""
    assert isinstance(error, ApiError)
    return error.response()


def server_state(connection: HTTPConnection) -> ServerState:
    """The app's `ServerState`, for HTTP requests and WebSockets alike."""
    return connection.app.state.server


Server = Annotated[ServerState, Depends(server_state)]


def websocket_key_is_valid(websocket: WebSocket, server: Server) -> bool:
    """Whether the WebSocket handshake carries a valid key (header or browser subprotocol)."""
    offered = list(websocket.scope.get("subprotocols") or [])
    return key_is_valid(presented_key(websocket.headers, offered), server.settings.api_keys)


def require_api_key(request: Request, server: Server) -> None:
    """Refuse a REST request without a valid key (401)."""
    if not key_is_valid(presented_key(request.headers), server.settings.api_keys):
        server.metrics.count_error("invalid_api_key")
        raise ApiError(401, "invalid_api_key", INVALID_KEY_MESSAGE, {"WWW-Authenticate": "Bearer"})


def websocket_origin_is_allowed(websocket: WebSocket, server: Server) -> bool:
    """Whether the handshake's `Origin` (if any) may open a session (see `app.routes.origin`)."""
    headers = websocket.headers
    return origin_allowed(headers.get("origin"), headers.get("host"), server.settings.allowed_origins)


def require_allowed_origin(request: Request, server: Server) -> None:
    """Refuse a REST request from a foreign web page (403)."""
    origin = request.headers.get("origin")
    if not origin_allowed(origin, request.headers.get("host"), server.settings.allowed_origins):
        server.metrics.count_error(ORIGIN_REFUSED_CODE)
        raise ApiError(403, ORIGIN_REFUSED_CODE, refusal_message(origin or ""))


Authorized = Depends(require_api_key)
AllowedOrigin = Depends(require_allowed_origin)
KeyChecked = Annotated[bool, Depends(websocket_key_is_valid)]
OriginChecked = Annotated[bool, Depends(websocket_origin_is_allowed)]
