"""Who may connect: a foreign web page is refused (403) at the WebSocket handshake and on REST; the
server's own page, localhost pages, listed origins and clients without an `Origin` header are served."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from app.routes.origin import origin_allowed
from tests.conftest import LiveServer
from tests.routes.conftest import answers_text, realtime_client, run

FOREIGN = "https://evil.example.com"
DEFAULT_ALLOWED = ["localhost", "127.0.0.1", "[::1]"]


def refused_handshake(url: str, origin: str) -> httpx.Response:
    """Open a WebSocket with this Origin; it must be refused. Returns the HTTP answer."""

    async def main() -> None:
        async with websockets.connect(url, proxy=None, origin=origin):
            pass

    with pytest.raises(InvalidStatus) as refused:
        run(main())
    return refused.value.response


def served(url: str, origin: str | None) -> bool:
    """A session opens with this Origin (None: no header) and answers a typed turn."""

    async def main() -> bool:
        extra = {} if origin is None else {"origin": origin}
        async with realtime_client(url, **extra) as client:
            delta = await answers_text(client, "Hi.")
            return bool(delta["delta"])

    return run(main())


@pytest.fixture(scope="module")
def question_bytes(spoken_wav: Path) -> bytes:
    return spoken_wav.read_bytes()


@pytest.fixture(scope="module")
def listed_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """A server that lists its own origins: localhost is no longer allowed by default."""
    return start_server(
        max_answer_tokens=4, allowed_origins="https://app.example.com, http://tools.example.org:8080"
    )


# -- the rules --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("origin", "host", "allowed", "expected"),
    [
        (None, "127.0.0.1:8000", DEFAULT_ALLOWED, True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", DEFAULT_ALLOWED, True),
        ("http://localhost:5173", "127.0.0.1:8000", DEFAULT_ALLOWED, True),
        ("http://[::1]:9000", "127.0.0.1:8000", DEFAULT_ALLOWED, True),
        ("https://voice.lan", "voice.lan", DEFAULT_ALLOWED, True),  # behind a proxy that drops the port
        ("https://voice.lan:8443", "[fe80::1]:8000", DEFAULT_ALLOWED, False),
        (FOREIGN, "127.0.0.1:8000", DEFAULT_ALLOWED, False),
        ("null", "127.0.0.1:8000", DEFAULT_ALLOWED, False),
        ("not an origin", "127.0.0.1:8000", DEFAULT_ALLOWED, False),
        ("http://localhost.evil.com", "127.0.0.1:8000", DEFAULT_ALLOWED, False),
        (FOREIGN, "127.0.0.1:8000", ["*"], True),
        ("https://app.example.com", "x", ["https://app.example.com"], True),
        ("http://app.example.com", "x", ["https://app.example.com"], False),
        ("https://app.example.com:444", "x", ["https://app.example.com"], True),
        ("https://app.example.com:444", "x", ["https://app.example.com:443"], False),
        ("http://localhost:3000", "x", ["https://app.example.com"], False),
    ],
)
def test_origin_rules(origin: str | None, host: str, allowed: list[str], expected: bool) -> None:
    assert origin_allowed(origin, host, allowed) is expected


# -- WebSocket ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("origin", [FOREIGN, "null"])
def test_foreign_origin_is_refused_at_the_handshake(realtime_server: LiveServer, origin: str) -> None:
    response = refused_handshake(realtime_server.ws_url, origin)
    assert response.status_code == 403
    error = json.loads(response.body)["error"]
    assert error["code"] == "origin_not_allowed"
    assert "FREEZE_OMNI_ALLOWED_ORIGINS" in error["message"]


def test_foreign_origin_is_refused_before_the_key_is_checked(keyed_server: LiveServer) -> None:
    assert refused_handshake(keyed_server.ws_url, FOREIGN).status_code == 403


@pytest.mark.parametrize(
    "origin", [None, "own", "http://localhost:5173"], ids=["no_origin", "own", "localhost"]
)
def test_allowed_origins_are_served(realtime_server: LiveServer, origin: str | None) -> None:
    if origin == "own":
        origin = realtime_server.base_url
    assert served(realtime_server.ws_url, origin)


def test_listed_origins_replace_localhost(listed_server: LiveServer) -> None:
    assert served(listed_server.ws_url, "https://app.example.com")
    assert served(listed_server.ws_url, "http://tools.example.org:8080")
    assert served(listed_server.ws_url, listed_server.base_url)  # its own page, always
    assert refused_handshake(listed_server.ws_url, "http://tools.example.org:9090").status_code == 403
    assert refused_handshake(listed_server.ws_url, "http://localhost:5173").status_code == 403


# -- REST ---------------------------------------------------------------------------------------------------
def test_foreign_origin_is_refused_on_rest(realtime_server: LiveServer, question_bytes: bytes) -> None:
    response = httpx.post(
        f"{realtime_server.base_url}/v1/turns",
        content=question_bytes,
        headers={"Content-Type": "audio/wav", "Origin": FOREIGN},
        timeout=60,
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "origin_not_allowed"


@pytest.mark.parametrize("own", [True, False], ids=["own_origin", "no_origin"])
def test_own_page_and_curl_are_served_on_rest(
    realtime_server: LiveServer, question_bytes: bytes, own: bool
) -> None:
    headers = {"Content-Type": "audio/wav", "Accept": "application/json"}
    if own:
        headers["Origin"] = realtime_server.base_url
    response = httpx.post(
        f"{realtime_server.base_url}/v1/turns", content=question_bytes, headers=headers, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
