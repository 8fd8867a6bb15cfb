"""Resume on one real server, through a real WebSocket client: a client whose connection drops mid-answer
comes back with its token and gets its session (same conversation, the rest of the answer, and what the
dead connection swallowed, nothing twice); a resume while the old connection still looks alive takes
over; tokens that are unknown, used, expired or another key's get `session_not_found` and a fresh
session; parked sessions keep their places."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import LiveServer
from tests.routes.conftest import (
    RealtimeClient,
    answers_text,
    playback,
    run,
    send_text_turn,
    text_turn,
    transcript,
)
from tests.routes.resume_client import (
    LONG_PROMPTS,
    MadeAudio,
    close_quietly,
    connect,
    drop,
    extension,
    received,
    resume_url,
    start_answer,
)

KEYS = ("key-a", "key-b", "key-c")
GRACE_S = 1.5
AUDIO_AHEAD_S = 0.5


def auth(key: str) -> dict[str, Any]:
    return {"additional_headers": {"Authorization": f"Bearer {key}"}}


@pytest.fixture(scope="module")
def resume_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """Answers of about four seconds (greedy), three API keys of two sessions each, a short grace time."""
    return start_server(
        max_answer_tokens=16,
        top_k=1,
        api_keys=list(KEYS),
        max_sessions_per_key=2,
        resume_grace_s=GRACE_S,
        audio_ahead_s=AUDIO_AHEAD_S,
    )


def engine_session(server: LiveServer, session_key: str):
    (held,) = [s for s in server.state.sessions if s.session_key == session_key]
    return held


def conversation(server: LiveServer, session_key: str) -> list[tuple[str, str]]:
    ref = engine_session(server, session_key).session.ref
    return ref.engine.conversation_text(ref.session_id)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.perf_counter() + timeout
    while not condition():
        assert time.perf_counter() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_a_dropped_client_resumes_its_session_and_its_answer_goes_on_without_a_gap(
    resume_server: LiveServer, made_audio: MadeAudio
) -> None:
    url = resume_server.ws_url

    async def main() -> dict[str, Any]:
        first = await connect(f"{url}?session=drop-1", **auth("key-a"))
        hello = await text_turn(first, "Hello!")
        engine_id = engine_session(resume_server, "drop-1").session.session_id
        response_id = await start_answer(first, audio_ms=400)
        count = received(first)
        drop(first)
        await wait_until(lambda: resume_server.state.resumable.parked == 1)
        made_at_drop = len(made_audio.pieces[response_id])
        await asyncio.sleep(0.6)  # the client is away; the answer goes on generating
        made_while_away = len(made_audio.pieces[response_id]) - made_at_drop
        second = await connect(
            resume_url(url, "drop-1", extension(first)["resume_token"], count), **auth("key-a")
        )
        try:
            done = await second.wait_for("response.done", timeout=30)
            later = await text_turn(second, "And then?")
            return {
                "first": first,
                "second": second,
                "hello": hello,
                "count": count,
                "made_while_away": made_while_away,
                "response_id": response_id,
                "done": done,
                "later": later,
                "same_engine_session": engine_session(resume_server, "drop-1").session.session_id
                == engine_id,
                "conversation": conversation(resume_server, "drop-1"),
            }
        finally:
            await close_quietly(second)

    result = run(main())
    first, second, response_id = result["first"], result["second"], result["response_id"]
    resumed = extension(second)
    assert resumed["resumed"] is True and resumed["received"] == result["count"]
    assert resumed["resume_token"] != extension(first)["resume_token"]  # a new token with each resume
    assert (
        second.events("session.created")[0]["session"]["id"]
        == first.events("session.created")[0]["session"]["id"]
    )
    assert result["same_engine_session"]
    assert result["made_while_away"] > 0  # the engine went on making the answer while the client was away
    assert not second.events("error")
    # The answer's audio: what came before the drop and what came after join into exactly what the engine made.
    before, after = first.audio(response_id), second.audio(response_id)
    assert before and after
    assert before + after == made_audio.wire_bytes(response_id)
    assert result["done"]["response"]["id"] == response_id
    assert result["done"]["response"]["status"] == "completed"
    # Sent again paced: the resumed connection never ran far ahead of real time.
    assert playback(second, response_id).max_lead_s < AUDIO_AHEAD_S + 0.3
    # The conversation went on: the next answer's prompt held both earlier turns.
    assert result["later"]["response"]["status"] == "completed"
    heard = [transcript(done) for done in first.events("response.done") + second.events("response.done")]
    assert len(heard) >= 3
    assert result["conversation"] == [("answer", text) for text in heard]


def test_a_resume_while_the_old_connection_looks_alive_takes_over_and_closes_it(
    resume_server: LiveServer, made_audio: MadeAudio
) -> None:
    """The old TCP connection was never noticed dead (the client just stopped reading): the resume wins,
    the old connection is closed with 4001, and what it swallowed is sent again on the new one."""
    url = resume_server.ws_url

    async def main() -> dict[str, Any]:
        first = await connect(f"{url}?session=stale-1", **auth("key-b"))
        response_id = await start_answer(first, audio_ms=300)
        count = received(first)  # the client stops reading here; the server goes on writing to it
        await asyncio.sleep(0.5)
        second = await connect(
            resume_url(url, "stale-1", extension(first)["resume_token"], count), **auth("key-b")
        )
        try:
            closed = await first.wait_closed(timeout=15)
            done = await second.wait_for("response.done", timeout=30)
            return {
                "first": first,
                "second": second,
                "count": count,
                "closed": closed,
                "done": done,
                "rid": response_id,
            }
        finally:
            await close_quietly(second)

    result = run(main())
    first, second, response_id, count = result["first"], result["second"], result["rid"], result["count"]
    assert result["closed"].rcvd is not None and result["closed"].rcvd.code == 4001
    assert result["done"]["response"]["status"] == "completed"
    # What the client had read when it gave up on the old connection, then the new connection's audio.
    heard_before = b"".join(
        base64.b64decode(r.event["delta"])
        for r in first.log[: count + 1]
        if r.event["type"] == "response.output_audio.delta" and r.event["response_id"] == response_id
    )
    assert heard_before + second.audio(response_id) == made_audio.wire_bytes(response_id)


def test_without_a_count_the_stream_goes_on_from_what_the_server_had_not_yet_written(
    resume_server: LiveServer,
) -> None:
    """A client that does not count (`received` left out) gets the same session and every message the
    server had not yet written; whatever a dead connection swallowed is lost to it (documented)."""
    url = resume_server.ws_url

    async def main() -> tuple[RealtimeClient, RealtimeClient, dict]:
        first = await connect(f"{url}?session=nocount-1", **auth("key-c"))
        await start_answer(first, audio_ms=200)
        drop(first)
        await wait_until(lambda: resume_server.state.resumable.parked >= 1)
        second = await connect(
            resume_url(url, "nocount-1", extension(first)["resume_token"]), **auth("key-c")
        )
        try:
            return first, second, await second.wait_for("response.done", timeout=30)
        finally:
            await close_quietly(second)

    first, second, done = run(main())
    assert extension(second)["resumed"] is True
    assert done["response"]["status"] == "completed"
    assert not second.events("error")


@pytest.mark.parametrize("case", ["unknown", "reused", "expired", "other_key"])
def test_a_token_that_finds_no_session_gets_session_not_found_and_a_fresh_session(
    resume_server: LiveServer, case: str
) -> None:
    url = resume_server.ws_url

    async def main() -> dict[str, Any]:
        opened: list[RealtimeClient] = []
        try:
            owner = await connect(f"{url}?session=lost-{case}", **auth("key-a"))
            opened.append(owner)
            token, key = extension(owner)["resume_token"], "key-a"
            if case == "unknown":
                token = "rt_" + "x" * 32
            else:
                drop(owner)
                await wait_until(lambda: not engine_session(resume_server, f"lost-{case}").link.attached)
            if case == "reused":
                back = await connect(resume_url(url, f"lost-{case}", token), **auth("key-a"))
                opened.append(back)
                assert extension(back)["resumed"] is True
            if case == "expired":
                await asyncio.sleep(GRACE_S + 0.5)
            if case == "other_key":
                key = "key-b"
            fresh = await connect(resume_url(url, f"lost-{case}", token), **auth(key))
            opened.append(fresh)
            await fresh.wait_for("error")
            result = {"owner": owner, "fresh": fresh}
            if case == "other_key":  # the owner still gets its own session back (within its grace time)
                back = await connect(resume_url(url, f"lost-{case}", token), **auth("key-a"))
                opened.append(back)
                result["owner_back"] = back
            result["delta"] = await answers_text(fresh, "Hello!")
            return result
        finally:
            await close_quietly(*opened)

    result = run(main())
    owner, fresh = result["owner"], result["fresh"]
    (error,) = fresh.events("error")
    assert error["error"]["code"] == "session_not_found"
    assert error["error"]["param"] == "resume"
    # A client that came back too late is told so (how late, and the grace time); the others are not.
    assert ("the session expired" in error["error"]["message"]) == (case == "expired"), error
    if case == "expired":
        assert f"kept {GRACE_S:g} s" in error["error"]["message"]
    assert fresh.types()[0] == "session.created"  # a fresh session, never someone else's
    assert "resumed" not in extension(fresh)
    assert (
        fresh.events("session.created")[0]["session"]["id"]
        != owner.events("session.created")[0]["session"]["id"]
    )
    assert result["delta"]["type"] == "response.output_audio.delta"  # and it works
    if case == "other_key":
        assert extension(result["owner_back"])["resumed"] is True


def test_parked_sessions_keep_their_places_and_are_freed_after_the_grace_time(
    resume_server: LiveServer,
) -> None:
    """A parked session counts against its key's limit (2 here) and holds its engine place until the grace
    time is over; resuming it takes no new place."""
    url = resume_server.ws_url
    engine = resume_server.state.pool.engines[0]

    async def main() -> dict[str, Any]:
        await wait_until(lambda: engine.load == 0, timeout=GRACE_S + 10)
        one = await connect(f"{url}?session=place-1", **auth("key-c"))
        two = await connect(f"{url}?session=place-2", **auth("key-c"))
        drop(two)
        await wait_until(lambda: resume_server.state.resumable.parked == 1)
        load_parked = engine.load
        third = await connect(f"{url}?session=place-3", **auth("key-c"))
        refused = await third.wait_closed()
        back = await connect(resume_url(url, "place-2", extension(two)["resume_token"]), **auth("key-c"))
        drop(back)
        await wait_until(lambda: resume_server.state.resumable.parked == 1)
        await wait_until(lambda: engine.load == 1, timeout=GRACE_S + 5)
        await close_quietly(one)
        return {"third": third, "refused": refused, "back": back, "load_parked": load_parked}

    result = run(main())
    assert result["load_parked"] == 2
    (error,) = result["third"].events("error")
    assert error["error"]["code"] == "key_session_limit"
    assert isinstance(result["refused"], ConnectionClosed) and result["refused"].rcvd.code == 1013
    assert extension(result["back"])["resumed"] is True
    assert resume_server.state.resumable.parked == 0


@pytest.mark.parametrize(("value", "says"), [("lots", "whole number"), ("-1", "whole number")])
def test_a_bad_received_count_is_an_error_and_the_server_goes_on(
    resume_server: LiveServer, value: str, says: str
) -> None:
    url = resume_server.ws_url

    async def main() -> tuple[RealtimeClient, ConnectionClosed, dict]:
        bad = await connect(f"{url}?session=bad-count&resume=rt_x&received={value}", **auth("key-b"))
        closed = await bad.wait_closed()
        good = await connect(f"{url}?session=bad-count", **auth("key-b"))
        try:
            return bad, closed, await answers_text(good, "Hello!")
        finally:
            await close_quietly(good)

    bad, closed, delta = run(main())
    (error,) = bad.events("error")
    assert error["error"]["code"] == "invalid_value" and error["error"]["param"] == "received"
    assert says in error["error"]["message"]
    assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert delta["type"] == "response.output_audio.delta"


def test_a_count_beyond_what_was_sent_is_an_error_and_the_resume_goes_on(resume_server: LiveServer) -> None:
    url = resume_server.ws_url

    async def main() -> RealtimeClient:
        first = await connect(f"{url}?session=big-count", **auth("key-b"))
        drop(first)
        await wait_until(lambda: not engine_session(resume_server, "big-count").link.attached)
        back = await connect(
            resume_url(url, "big-count", extension(first)["resume_token"], 10**6), **auth("key-b")
        )
        try:
            await back.wait_for("error")
            await answers_text(back, "Hello!")
            return back
        finally:
            await close_quietly(back)

    back = run(main())
    assert extension(back)["resumed"] is True
    (error,) = back.events("error")
    assert error["error"]["code"] == "invalid_value" and error["error"]["param"] == "received"


def test_draining_ends_parked_sessions_at_once_and_live_ones_are_told(
    start_server: Callable[..., LiveServer],
) -> None:
    """SIGTERM's drain: a live session gets its reconnect notice and 1001; a parked one has nobody to tell
    and is ended at once (not after its 30 s of grace), so the shutdown is not held up."""
    server = start_server(resume_grace_s=30.0, shutdown_grace_s=1.0)

    async def main() -> dict[str, Any]:
        live = await connect(f"{server.ws_url}?session=staying")
        away = await connect(f"{server.ws_url}?session=away")
        drop(away)
        await wait_until(lambda: server.state.resumable.parked == 1)
        started = time.perf_counter()
        stopping = asyncio.create_task(asyncio.to_thread(server.stop))
        closed = await live.wait_closed(timeout=20)
        await stopping
        return {"live": live, "closed": closed, "stop_s": time.perf_counter() - started}

    result = run(main())
    (notice,) = result["live"].events("error")
    assert notice["error"]["code"] == "server_shutting_down"
    assert result["closed"].rcvd is not None and result["closed"].rcvd.code == 1001
    assert result["stop_s"] < 10
    assert server.state.resumable.parked == 0 and not server.state.sessions


def test_two_resumes_racing_with_one_token_one_wins_and_the_other_gets_a_fresh_session(
    resume_server: LiveServer,
) -> None:
    url = resume_server.ws_url

    async def main() -> tuple[RealtimeClient, list[RealtimeClient]]:
        first = await connect(f"{url}?session=race-1", **auth("key-b"))
        drop(first)
        await wait_until(lambda: not engine_session(resume_server, "race-1").link.attached)
        again = resume_url(url, "race-1", extension(first)["resume_token"], received(first))
        racers = await asyncio.gather(connect(again, **auth("key-b")), connect(again, **auth("key-b")))
        try:
            await asyncio.sleep(0.3)  # the loser's error follows its session.created
            for racer in racers:
                await racer.collect_for(0.1)
            return first, list(racers)
        finally:
            await close_quietly(*racers)

    first, racers = run(main())
    won = [r for r in racers if extension(r).get("resumed")]
    lost = [r for r in racers if not extension(r).get("resumed")]
    assert len(won) == 1 and len(lost) == 1
    assert (
        won[0].events("session.created")[0]["session"]["id"]
        == first.events("session.created")[0]["session"]["id"]
    )
    assert [e["error"]["code"] for e in lost[0].events("error")] == ["session_not_found"]


def test_the_idle_timeout_stands_still_while_a_session_is_parked(
    start_server: Callable[..., LiveServer],
) -> None:
    """Away for longer than the idle timeout (but within the grace time): the session is still there, and
    its idle clock starts again at the resume."""
    server = start_server(idle_timeout_s=1.0, resume_grace_s=4.0, max_answer_tokens=4)

    async def main() -> tuple[RealtimeClient, dict]:
        first = await connect(f"{server.ws_url}?session=idle-1")
        drop(first)
        await wait_until(lambda: server.state.resumable.parked == 1)
        await asyncio.sleep(2.0)
        back = await connect(
            resume_url(server.ws_url, "idle-1", extension(first)["resume_token"], received(first))
        )
        try:
            return back, await answers_text(back, "Hello!")
        finally:
            await close_quietly(back)

    back, delta = run(main())
    assert extension(back)["resumed"] is True
    assert not back.events("error")
    assert delta["type"] == "response.output_audio.delta"


def test_the_maximum_session_length_counts_across_resumes(start_server: Callable[..., LiveServer]) -> None:
    """A resume does not restart the session's clock: it ends FREEZE_OMNI_MAX_SESSION_SECONDS after it
    began, whatever connection carries it then."""
    server = start_server(max_session_seconds=3.0, resume_grace_s=5.0, max_answer_tokens=4)

    async def main() -> tuple[RealtimeClient, ConnectionClosed, float]:
        started = time.perf_counter()
        first = await connect(f"{server.ws_url}?session=old-1")
        drop(first)
        await wait_until(lambda: server.state.resumable.parked == 1)
        await asyncio.sleep(1.0)
        back = await connect(
            resume_url(server.ws_url, "old-1", extension(first)["resume_token"], received(first))
        )
        closed = await back.wait_closed(timeout=10)
        return back, closed, time.perf_counter() - started

    back, closed, lasted = run(main())
    assert extension(back)["resumed"] is True
    assert [e["error"]["code"] for e in back.events("error")] == ["session_expired"]
    assert closed.rcvd is not None and closed.rcvd.code == 1000
    assert 3.0 <= lasted < 5.0


def test_an_opus_answer_resumes_packet_for_packet(resume_server: LiveServer, made_audio: MadeAudio) -> None:
    """Binary frames count as messages too, and a response keeps its frame number across the resume: the
    packets before the drop and after it are exactly the packets of the engine's audio."""
    from app.sessions.opus_codec import OpusOutputConverter
    from tests.routes.opus_client import OpusClient, opus_session

    url = resume_server.ws_url
    session = {"type": "realtime", **opus_session(input_opus=False)}

    async def opus_connect(address: str) -> OpusClient:
        ws = await websockets.connect(address, proxy=None, max_size=None, open_timeout=10, **auth("key-a"))
        client = OpusClient(ws)
        await client.wait_for("session.created")
        return client

    async def main() -> dict[str, Any]:
        first = await opus_connect(f"{url}?session=opus-1")
        await first.send({"type": "session.update", "session": session})
        await first.wait_for("session.updated")
        wire = engine_session(resume_server, "opus-1").session.config.output_format.wire
        for prompt in LONG_PROMPTS:  # an answer long enough to drop in the middle of
            finished = len(first.events("response.done"))
            await send_text_turn(first, prompt)
            response_id = (await first.wait_for("response.created"))["response"]["id"]

            def over(before: int = finished) -> bool:
                return len(first.events("response.done")) > before

            await first.pump(lambda rid=response_id: len(first.packets(rid)) >= 15 or over(), timeout=30)
            if not over():
                break
            await first.wait_for("response.done")
        count = len(first.log) - 1 + len(first.frames)  # every message but session.created
        drop(first)
        await wait_until(lambda: resume_server.state.resumable.parked >= 1)
        second = OpusClient(await websockets.connect(
            resume_url(url, "opus-1", extension(first)["resume_token"], count),
            proxy=None, max_size=None, open_timeout=10, **auth("key-a"),
        ))  # fmt: skip
        second._created = list(first._created)  # the client goes on numbering response.created
        try:
            await second.wait_for("response.done", timeout=30)
            return {"first": first, "second": second, "rid": response_id, "wire": wire}
        finally:
            await close_quietly(second)

    result = run(main())
    first, second, response_id = result["first"], result["second"], result["rid"]
    assert extension(second)["resumed"] is True
    converter = OpusOutputConverter(result["wire"])
    made = [p for piece in made_audio.pieces[response_id] for p in converter.push(piece)] + converter.flush()
    before, after = first.packets(response_id), second.packets(response_id)
    assert before and after
    assert before + after == made
