"""Who may connect from a browser: the `Origin` allow-list (cross-site WebSocket hijacking defence).

A browser attaches `Origin` to every WebSocket handshake and cross-site POST, and it happily lets a
page on any site reach a server on the user's loopback or LAN. So a request that carries an
`Origin` is served only when that origin is allowed: the server's own host name (the page it
serves), or an entry of `FREEZE_OMNI_ALLOWED_ORIGINS`. A request without `Origin` does not come
from a web page (the SDK, curl, a mobile app) and is served; API keys, if set, still apply.

Entries: `*` (any origin), `host` (any scheme and port: the default `localhost,127.0.0.1,[::1]`),
`scheme://host` (any port) or `scheme://host:port` (exactly that origin).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

ORIGIN_REFUSED_CODE = "origin_not_allowed"


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int | None


def _parse(value: str) -> _Origin | None:
    """An origin (`scheme://host[:port]`), or None for `null` and anything malformed."""
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname:
        return None
    return _Origin(parts.scheme.lower(), parts.hostname.lower(), port)


def _host_of(host_header: str) -> str:
    """The host name of a `Host` header (`name`, `name:port`, `[v6]:port`), lowercased."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _entry_matches(entry: str, origin: _Origin) -> bool:
    entry = entry.strip().lower()
    if "://" not in entry:  # a bare host name: any scheme, any port
        return _host_of(entry) == origin.host
    wanted = _parse(entry)
    if wanted is None or wanted.scheme != origin.scheme or wanted.host != origin.host:
        return False
    return wanted.port is None or wanted.port == origin.port


def origin_allowed(origin_header: str | None, host_header: str | None, allowed: list[str]) -> bool:
    """Whether a request with this `Origin` (None: no header) to this `Host` may be served."""
    if origin_header is None:
        return True  # not a browser page: nothing to defend against here
    if "*" in allowed:
        return True
    origin = _parse(origin_header)
    if origin is None:  # "null" (file:// pages, sandboxed frames) or garbage
        return False
    # Our own page. Host names only: a proxy may drop the port from Host (nginx's $host does).
    if host_header and _host_of(host_header) == origin.host:
        return True
    return any(_entry_matches(entry, origin) for entry in allowed)


def refusal_message(origin_header: str) -> str:
    """What a refused client (and its developer) reads."""
    return (
        f"origin {origin_header[:200]!r} may not use this server: add it to FREEZE_OMNI_ALLOWED_ORIGINS "
        "(comma-separated, or * for any)"
    )
