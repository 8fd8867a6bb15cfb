"""The shipped nginx config in front of two real server processes, on loopback: sessions spread over both,
a session key always reaches the same process, `kill -9` of one leaves the other untouched and sends new
sessions to the live one, and SIGTERM drains (a reconnect hint, 1001, and a reconnect that lands on the
live process)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.deploy.fleet import SHUTDOWN_GRACE_S, Fleet
from tests.routes.conftest import RealtimeClient, answers_text, run, text_turn

pytestmark = pytest.mark.slow

CLOSE_GOING_AWAY = 1001
CLOSE_TRY_AGAIN = 1013


async def open_session(url: str, attempts: int = 1) -> RealtimeClient:
    """A session through nginx, after its `session.created`. With `attempts` > 1, a refusal with 1013 is
    retried after 0.25 s, 0.5 s, 1 s ... as the official SDK does."""
    delay = 0.25
    for attempt in range(attempts):
        ws = await websockets.connect(url, proxy=None, max_size=None, open_timeout=10)
        client = RealtimeClient(ws)
        first = await client.next_event(timeout=10)
        if first["type"] == "session.created":
            return client
        closed = await client.wait_closed()
        if closed.rcvd is None or closed.rcvd.code != CLOSE_TRY_AGAIN or attempt == attempts - 1:
            raise AssertionError(f"session refused: {first}, close {closed.rcvd}")
        await asyncio.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def served_by(client: RealtimeClient) -> str:
    return client.events("session.created")[0]["freeze_omni"]["instance_id"]


async def open_many(url: str, keys: list[str]) -> dict[str, RealtimeClient]:
    clients = await asyncio.gather(*(open_session(f"{url}?session={key}") for key in keys))
    return dict(zip(keys, clients, strict=True))


async def close_all(clients: list[RealtimeClient]) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.ws.close()


def by_process(clients: dict[str, RealtimeClient]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = defaultdict(list)
    for key, client in clients.items():
        groups[served_by(client)].append(key)
    return groups


def test_twenty_sessions_spread_over_both_processes_and_each_is_served(fleet: Fleet) -> None:
    keys = [f"user-{n:02d}" for n in range(20)]

    async def main() -> tuple[dict[str, list[str]], list[dict[str, Any]], dict[str, str]]:
        clients = await open_many(fleet.nginx.ws_url, keys)
        try:
            deltas = await asyncio.gather(*(answers_text(c, "Hello!", timeout=60) for c in clients.values()))
            reported = {
                k: c.events("session.created")[0]["freeze_omni"]["session_key"] for k, c in clients.items()
            }
            return by_process(clients), deltas, reported
        finally:
            await close_all(list(clients.values()))

    groups, deltas, reported = run(main())
    print({name: len(group) for name, group in groups.items()})
    assert set(groups) == {"engine-a", "engine-b"}, fleet.logs()
    assert sum(len(g) for g in groups.values()) == 20
    assert all(d["type"] == "response.output_audio.delta" for d in deltas)
    assert reported == {k: k for k in keys}


def test_the_same_key_always_reaches_the_same_process(fleet: Fleet) -> None:
    keys = [f"device-{n}" for n in range(8)]

    async def served(key: str) -> str:
        client = await open_session(f"{fleet.nginx.ws_url}?session={key}")
        await close_all([client])
        return served_by(client)

    async def main() -> list[dict[str, str]]:
        rounds = []
        for _ in range(3):  # one after another, then all at once
            rounds.append({key: await served(key) for key in keys})
        concurrent = await asyncio.gather(*(served(key) for key in keys))
        rounds.append(dict(zip(keys, concurrent, strict=True)))
        return rounds

    rounds = run(main())
    assert all(r == rounds[0] for r in rounds), rounds
    assert set(rounds[0].values()) == {"engine-a", "engine-b"}, rounds[0]  # 8 keys: both are used


def test_kill_9_of_one_process_leaves_the_other_untouched(fleet_factory: Callable[[], Fleet]) -> None:
    fleet = fleet_factory()
    url = fleet.nginx.ws_url

    async def main() -> dict[str, Any]:
        clients = await open_many(url, [f"k-{n:02d}" for n in range(10)])
        groups = by_process(clients)
        assert set(groups) == {"engine-a", "engine-b"}, groups
        doomed = [clients[k] for k in groups["engine-a"]]
        survivors = [clients[k] for k in groups["engine-b"]]
        talking = survivors[0]
        try:
            await answers_text(talking, "Hello!")  # an answer is streaming when the other process dies
            fleet.engines["engine-a"].process.kill()
            closes = await asyncio.gather(*(c.wait_closed(timeout=10) for c in doomed))
            done = await talking.wait_for("response.done", timeout=60)
            later = await asyncio.gather(*(text_turn(c, "How are you?") for c in survivors))
            moved = [await open_session(f"{url}?session={key}") for key in groups["engine-a"]]
            clients.update({f"moved-{n}": c for n, c in enumerate(moved)})
            moved_answers = await asyncio.gather(*(answers_text(c, "Hello!") for c in moved))
            return {
                "closes": closes,
                "done": done,
                "later": later,
                "survivors": survivors,
                "moved": moved,
                "moved_answers": moved_answers,
                "exit": fleet.engines["engine-a"].wait(10),
            }
        finally:
            await close_all(list(clients.values()))

    result = run(main())
    assert result["exit"] == -signal.SIGKILL
    assert all(isinstance(c, ConnectionClosed) for c in result["closes"])  # each client saw its close
    assert result["done"]["response"]["status"] == "completed", fleet.logs()
    assert all(d["response"]["status"] == "completed" for d in result["later"])
    assert not any(c.events("error") for c in result["survivors"])
    assert {served_by(c) for c in result["moved"]} == {"engine-b"}
    assert all(a["type"] == "response.output_audio.delta" for a in result["moved_answers"])


def test_sigterm_drains_and_a_reconnect_lands_on_the_live_process(fleet_factory: Callable[[], Fleet]) -> None:
    fleet = fleet_factory()
    url = fleet.nginx.ws_url
    draining = fleet.engines["engine-a"]

    async def main() -> dict[str, Any]:
        clients = await open_many(url, [f"t-{n:02d}" for n in range(10)])
        groups = by_process(clients)
        assert set(groups) == {"engine-a", "engine-b"}, groups
        leaving = [clients[k] for k in groups["engine-a"]]
        staying = [clients[k] for k in groups["engine-b"]]
        try:
            await answers_text(leaving[0], "Hello!")  # one answer is streaming when SIGTERM arrives
            sent_at = time.perf_counter()
            draining.signal(signal.SIGTERM)
            closes = await asyncio.gather(*(c.wait_closed(timeout=SHUTDOWN_GRACE_S + 10) for c in leaving))
            closed_after = max(c.log[-1].at for c in leaving) - sent_at
            exit_code = await asyncio.to_thread(draining.wait, SHUTDOWN_GRACE_S + 20)
            back = [await open_session(f"{url}?session={key}", attempts=6) for key in groups["engine-a"]]
            clients.update({f"back-{n}": c for n, c in enumerate(back)})
            answers = await asyncio.gather(*(answers_text(c, "Hello!") for c in back))
            later = await asyncio.gather(*(text_turn(c, "How are you?") for c in staying))
            return {
                "closes": closes,
                "closed_after": closed_after,
                "exit": exit_code,
                "leaving": leaving,
                "staying": staying,
                "back": back,
                "answers": answers,
                "later": later,
            }
        finally:
            await close_all(list(clients.values()))

    result = run(main())
    print(f"SIGTERM to the last goodbye: {result['closed_after']:.2f} s")
    # uvicorn ends a clean shutdown by re-raising the signal it caught: exit status 128 + SIGTERM
    assert result["exit"] == -signal.SIGTERM, draining.log()
    assert "Application shutdown complete" in draining.log()
    for client, closed in zip(result["leaving"], result["closes"], strict=True):
        assert closed.rcvd is not None and closed.rcvd.code == CLOSE_GOING_AWAY, fleet.logs()
        (notice,) = client.events("error")  # the reconnect hint, before the close
        assert notice["error"]["code"] == "server_shutting_down"
        key = client.events("session.created")[0]["freeze_omni"]["session_key"]
        assert notice["freeze_omni"] == {"reconnect": True, "session_key": key}
    talking = result["leaving"][0]
    print("the answering client's last events:", talking.types()[-6:])
    (done,) = talking.events("response.done")  # its answer is closed for the client before 1001
    assert done["response"]["status"] in ("cancelled", "completed")
    assert result["closed_after"] < SHUTDOWN_GRACE_S + 1.0
    assert {served_by(c) for c in result["back"]} == {"engine-b"}
    assert all(a["type"] == "response.output_audio.delta" for a in result["answers"])
    assert all(d["response"]["status"] == "completed" for d in result["later"])
    assert not any(c.events("error") for c in result["staying"])
    assert "draining: refusing new sessions" in draining.log()


def test_rest_turns_and_the_page_pass_through_nginx(fleet: Fleet, spoken_wav: Path) -> None:
    """Uploads go through the proxy (under its body limit) and turns spread round-robin (no key)."""
    base = f"http://127.0.0.1:{fleet.nginx.port}"
    page = httpx.get(base + "/", timeout=10)
    assert page.status_code == 200 and "<html" in page.text.lower()
    answers = [
        httpx.post(
            base + "/v1/turns",
            content=spoken_wav.read_bytes(),
            headers={"Content-Type": "audio/wav", "Accept": "application/json"},
            timeout=60,
        )
        for _ in range(2)
    ]
    for answer in answers:
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "completed"
    deadline = time.monotonic() + 5  # nginx logs a request just after it has answered it
    while (
        len(upstreams := re.findall(r'"POST /v1/turns HTTP/1.1" 200 upstream=(\S+)', fleet.nginx.log())) < 2
    ):
        assert time.monotonic() < deadline, fleet.nginx.log()
        time.sleep(0.05)
    assert len(set(upstreams[-2:])) == 2, upstreams  # one turn on each process
