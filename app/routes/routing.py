"""What a load balancer in front of many processes needs from one: a session key and a process name.

A client may choose its session key (`/v1/realtime?session=KEY`); a balancer hashes on it (nginx
`hash $arg_session consistent`, ingress-nginx `upstream-hash-by`) so that every connection with
that key reaches the same process. Keys are limited to the URL's unreserved characters: they then
need no percent-encoding, so a balancer hashing the raw query value and our parsed value agree.
`session.created` reports the key and the process in an extension object that OpenAI clients ignore.

A reconnect that resumes its session adds `resume=TOKEN` (from that extension object) and, if the
client counts what it got, `received=N` (see `app.sessions.sent_log`).
"""

from __future__ import annotations

import re
import secrets

SESSION_KEY_PARAM = "session"
RESUME_PARAM = "resume"
RECEIVED_PARAM = "received"
_KEY_CHARS = re.compile(r"[A-Za-z0-9._~-]+")
_MAX_RECEIVED_DIGITS = 18


class SessionKeyError(ValueError):
    """A query parameter we refuse; the message says what a valid one looks like."""

    def __init__(
        self, message: str, code: str = "invalid_session_key", param: str = SESSION_KEY_PARAM
    ) -> None:
        super().__init__(message)
        self.code = code
        self.param = param


def parse_session_key(raw: str | None, max_chars: int) -> str | None:
    """The client's session key, or None when it gave none (an empty value counts as none)."""
    if not raw:
        return None
    if len(raw) > max_chars:
        raise SessionKeyError(f"the session key is {len(raw)} characters long; the limit is {max_chars}")
    if not _KEY_CHARS.fullmatch(raw):
        raise SessionKeyError(
            "the session key may hold only letters, digits and '-', '_', '.', '~' "
            "(URL-safe, so that a load balancer hashing it sees the same key)"
        )
    return raw


def parse_received(raw: str | None) -> int | None:
    """The resuming client's count of messages received, or None when it gave none."""
    if not raw:
        return None
    if not raw.isdigit() or len(raw) > _MAX_RECEIVED_DIGITS:
        raise SessionKeyError(
            f"received={raw[:40]!r}: it must be the number of messages (text and binary, except "
            "session.created) the client received in this session, a whole number from 0",
            code="invalid_value",
            param=RECEIVED_PARAM,
        )
    return int(raw)


def new_session_key() -> str:
    """A key for a client that chose none: random, URL-safe."""
    return f"key_{secrets.token_hex(12)}"
