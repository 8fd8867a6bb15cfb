"""Resume through the shipped nginx config, in front of two real servers (in this process, so the test can
look at their engines): a client drops its TCP connection mid-answer and comes back with its token within
the grace time; the hash on its session key brings it to the same process, the conversation goes on, and
the audio before and after the drop joins into exactly the audio the engine made. Expired, reused and
other key's tokens get `session_not_found` and a working fresh session."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import LiveServer, live_server_on
from tests.deploy.fleet import Nginx
from tests.routes.conftest import RealtimeClient, answers_text, run, text_turn, transcript
from tests.routes.resume_client import (
    MadeAudio,
    close_quietly,
    connect,
    drop,
    extension,
    received,
    resume_url,
    start_answer,
)

pytestmark = pytest.mark.slow

KEYS = ("phone-key", "other-key")
GRACE_S = 2.0


@dataclass
class InProcessFleet:
    servers: dict[str, LiveServer]
    nginx: Nginx

    def served(self, client: RealtimeClient) -> LiveServer:
        return self.servers[extension(client)["instance_id"]]


@dataclass
class _Upstream:
    """What `Nginx` needs of an engine: its port."""

    port: int


@pytest.fixture(scope="module")
def fleet(tiny_model_dir) -> Iterator[InProcessFleet]:
    servers = {
        name: live_server_on(
            tiny_model_dir,
            instance_id=name,
            max_answer_tokens=16,
            top_k=1,
            api_keys=list(KEYS),
            resume_grace_s=GRACE_S,
        )
        for name in ("engine-a", "engine-b")
    }
    nginx = Nginx([_Upstream(s.settings.port) for s in servers.values()]).start()  # type: ignore[list-item]
    yield InProcessFleet(servers, nginx)
    nginx.stop()
    for server in servers.values():
        server.stop()


def auth(key: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


def engine_conversation(server: LiveServer, session_key: str) -> list[tuple[str, str]]:
    (held,) = [s for s in server.state.sessions if s.session_key == session_key]
    ref = held.session.ref
    return ref.engine.conversation_text(ref.session_id)


def test_a_client_that_drops_mid_answer_resumes_through_nginx_on_the_same_process(
    fleet: InProcessFleet, made_audio: MadeAudio
) -> None:
    url = fleet.nginx.ws_url

    async def main() -> dict[str, Any]:
        first = await connect(f"{url}?session=phone-1", **auth("phone-key"))
        await text_turn(first, "Hello!")
        response_id = await start_answer(first, audio_ms=400)
        count = received(first)
        drop(first)  # no close frame: nginx sees the client vanish and drops its upstream connection
        server = fleet.served(first)
        deadline = asyncio.get_running_loop().time() + 10
        while server.state.resumable.parked == 0:
            assert asyncio.get_running_loop().time() < deadline, "the session was never parked"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)
        token = extension(first)["resume_token"]
        reconnecting = time.perf_counter()
        second = await connect(resume_url(url, "phone-1", token, count), **auth("phone-key"))
        try:
            await second.pump(lambda: bool(second.audio(response_id)), timeout=30)
            first_audio_ms = 1000 * (second.audio_deltas(response_id)[0].at - reconnecting)
            print(
                f"resume through nginx: {extension(second)['replayed']} message(s) sent again; "
                f"the answer's audio again {first_audio_ms:.0f} ms after reconnecting"
            )
            done = await second.wait_for(
                "response.done", timeout=30, where=lambda e: e["response"]["id"] == response_id
            )
            later = await text_turn(second, "And then?")
            return {
                "first": first,
                "second": second,
                "rid": response_id,
                "done": done,
                "later": later,
                "conversation": engine_conversation(fleet.served(second), "phone-1"),
            }
        finally:
            await close_quietly(second)

    result = run(main())
    first, second, response_id = result["first"], result["second"], result["rid"]
    assert extension(second)["instance_id"] == extension(first)["instance_id"]  # the same process
    assert extension(second)["resumed"] is True
    assert not second.events("error")
    before, after = first.audio(response_id), second.audio(response_id)
    assert before and after
    assert before + after == made_audio.wire_bytes(response_id)  # nothing lost, nothing twice
    assert result["done"]["response"]["status"] == "completed"
    assert result["later"]["response"]["status"] == "completed"
    # The conversation went on: the engine's conversation holds every earlier answer, as heard.
    heard = [transcript(d) for d in first.events("response.done") + second.events("response.done")]
    assert result["conversation"] == [("answer", text) for text in heard]


@pytest.mark.parametrize("case", ["expired", "reused", "other_key"])
def test_a_resume_that_finds_nothing_through_nginx_gets_session_not_found_and_a_fresh_session(
    fleet: InProcessFleet, case: str
) -> None:
    url = fleet.nginx.ws_url
    session_key = f"blip-{case}"

    async def main() -> dict[str, Any]:
        opened: list[RealtimeClient] = []
        try:
            owner = await connect(f"{url}?session={session_key}", **auth("phone-key"))
            opened.append(owner)
            token, key = extension(owner)["resume_token"], "phone-key"
            drop(owner)
            await asyncio.sleep(0.3)
            if case == "reused":
                back = await connect(resume_url(url, session_key, token), **auth(key))
                opened.append(back)
                assert extension(back)["resumed"] is True
            if case == "expired":
                await asyncio.sleep(GRACE_S + 0.5)
            if case == "other_key":
                key = "other-key"
            fresh = await connect(resume_url(url, session_key, token), **auth(key))
            opened.append(fresh)
            await fresh.wait_for("error")
            return {"owner": owner, "fresh": fresh, "delta": await answers_text(fresh, "Hello!")}
        finally:
            await close_quietly(*opened)

    result = run(main())
    owner, fresh = result["owner"], result["fresh"]
    (error,) = fresh.events("error")
    assert error["error"]["code"] == "session_not_found"
    assert fresh.types()[0] == "session.created" and "resumed" not in extension(fresh)
    assert (
        fresh.events("session.created")[0]["session"]["id"]
        != owner.events("session.created")[0]["session"]["id"]
    )
    assert extension(fresh)["instance_id"] == extension(owner)["instance_id"]  # the key still hashes there
    assert result["delta"]["type"] == "response.output_audio.delta"
