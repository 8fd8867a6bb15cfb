"""API keys: `Authorization: Bearer <key>`, or the `openai-insecure-api-key.<key>` subprotocol browsers use."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers

SUBPROTOCOL_PREFIX = "openai-insecure-api-key."


def presented_key(headers: Headers, subprotocols: list[str] | None = None) -> str | None:
    """The key a client sent, if any."""
    authorization = headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    for protocol in subprotocols or []:
        if protocol.startswith(SUBPROTOCOL_PREFIX):
            return protocol[len(SUBPROTOCOL_PREFIX) :]
    return None


def key_is_valid(key: str | None, allowed: list[str]) -> bool:
    """True when no keys are configured, or the key matches one (constant-time)."""
    if not allowed:
        return True
    if not key:
        return False
    return any(hmac.compare_digest(key.encode(), candidate.encode()) for candidate in allowed)


def error_body(code: str, message: str, error_type: str = "invalid_request_error") -> dict:
    """The JSON error shape shared by REST answers and WebSocket denials."""
    return {"error": {"type": error_type, "code": code, "message": message}}
