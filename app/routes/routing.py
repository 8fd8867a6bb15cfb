"""What a load balancer in front of many processes needs from one: a session key and a process name.

A client may choose its session key (`/v1/realtime?session=KEY`); a balancer hashes on it (nginx
`hash $arg_session consistent`, ingress-nginx `upstream-hash-by`) so that every connection with
that key reaches the same process. Keys are limited to the URL's unreserved characters: they then
need no percent-encoding, so a balancer hashing the raw query value and our parsed value agree.
`session.created` reports the key and the process in an extension object that OpenAI clients ignore.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

SESSION_KEY_PARAM = "session"
EXTENSION_FIELD = "freeze_omni"  # the extension object on session.created (and on shutdown errors)
_KEY_CHARS = re.compile(r"[A-Za-z0-9._~-]+")


class SessionKeyError(ValueError):
    """A `?session=` value we refuse; the message says what a valid key looks like."""


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


def new_session_key() -> str:
    """A key for a client that chose none: random, URL-safe."""
    return f"key_{secrets.token_hex(12)}"


def created_extension(session_key: str, instance_id: str) -> dict[str, Any]:
    """The extension object of `session.created`."""
    return {"session_key": session_key, "instance_id": instance_id}
