"""The WebSocket close codes the server uses, in one place (RFC 6455 section 7.4.1)."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    """Why a session's socket was closed; clients (the official SDK among them) key on these."""

    NORMAL = 1000  # the session ended cleanly (e.g. idle timeout, after an `error` event)
    GOING_AWAY = 1001  # the server is shutting down
    POLICY_VIOLATION = 1008  # bad API key, when the handshake could not be refused with HTTP 401
    MESSAGE_TOO_BIG = 1009  # a message over FREEZE_OMNI_MAX_MESSAGE_BYTES
    INTERNAL_ERROR = 1011  # the session failed inside the server
    TRY_AGAIN_LATER = 1013  # at capacity or still loading: the official SDK retries
    CLIENT_TOO_SLOW = 4000  # the client stopped reading: more than FREEZE_OMNI_MAX_OUTBOUND_SECONDS behind
