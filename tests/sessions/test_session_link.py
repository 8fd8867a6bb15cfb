"""The session link on its own, with in-memory connections: what is numbered, what a resume sends again
and in which order, a count the log no longer covers, and a write stuck on a connection that a resume
takes over."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from app.sessions.events import ErrorDetail, ErrorEvent, SessionConfig, SessionCreated
from app.sessions.outbound import Outbound
from app.sessions.sent_log import SentLog
from app.sessions.session_link import SessionLink


class MemoryConnection:
    """Keeps what it is sent; `stuck` makes every write wait forever (a peer that stopped reading)."""

    def __init__(self, stuck: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.stuck = stuck
        self.closed: tuple[int, str] | None = None

    async def send_message(self, message: dict[str, Any]) -> bool:
        if self.stuck:
            await asyncio.Event().wait()
        self.messages.append(message)
        return True

    async def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def types(self) -> list[str]:
        return [json.loads(m["text"])["type"] if "text" in m else "binary" for m in self.messages]


def error(n: int) -> ErrorEvent:
    return ErrorEvent(error=ErrorDetail(code=f"e{n}", message=str(n)))


def codes(connection: MemoryConnection) -> list[str]:
    return [
        json.loads(m["text"])["error"]["code"]
        for m in connection.messages
        if "text" in m and "error" in m["text"]
    ]


async def linked(log: SentLog, connection: MemoryConnection) -> tuple[SessionLink, Outbound, asyncio.Task]:
    link = SessionLink(connection, "ga", log)
    outbound = Outbound(link.send)
    link.outbound = outbound
    return link, outbound, asyncio.create_task(outbound.run())


def test_a_resume_sends_again_what_the_client_missed_in_order_then_goes_on() -> None:
    async def main() -> tuple[MemoryConnection, MemoryConnection, Any]:
        first = MemoryConnection()
        link, outbound, sender = await linked(SentLog(60), first)
        outbound.put(SessionCreated(session=SessionConfig()))
        for n in range(1, 6):
            outbound.put(error(n))
        await outbound.drain(1)
        link.detach()
        outbound.put(error(6))  # while parked: queued, not sent
        await asyncio.sleep(0.05)
        second = MemoryConnection()
        point = await link.attach(second, 3, SessionCreated(session=SessionConfig()))
        await outbound.drain(1)
        outbound.close()
        await sender
        return first, second, point

    first, second, point = asyncio.run(main())
    assert codes(first) == ["e1", "e2", "e3", "e4", "e5"]  # session.created is not numbered
    assert second.types()[0] == "session.created"
    greeting = json.loads(second.messages[0]["text"])["freeze_omni"]
    assert greeting["resumed"] is True and greeting["received"] == 3 and greeting["replayed"] == 2
    assert codes(second) == ["e4", "e5", "e6"]  # nothing twice, nothing lost
    assert (point.received, point.replayed, point.problem) == (3, 2, None)


def test_a_count_older_than_what_is_kept_resumes_from_the_oldest_kept_and_says_so() -> None:
    now = [0.0]

    async def main() -> tuple[MemoryConnection, Any]:
        link, outbound, sender = await linked(SentLog(10, clock=lambda: now[0]), MemoryConnection())
        outbound.put(error(1))
        await outbound.drain(1)
        now[0] = 20.0
        outbound.put(error(2))
        await outbound.drain(1)
        link.detach()
        second = MemoryConnection()
        point = await link.attach(second, 0, SessionCreated(session=SessionConfig()))
        await outbound.drain(1)
        outbound.close()
        await sender
        return second, point

    second, point = asyncio.run(main())
    assert point.received == 1 and point.problem is not None and point.problem[0] == "resume_incomplete"
    assert "no longer kept" in point.problem[1]
    assert codes(second) == ["e2"]


def test_a_count_beyond_what_was_sent_goes_on_from_what_the_server_wrote() -> None:
    async def main() -> Any:
        link, outbound, sender = await linked(SentLog(60), MemoryConnection())
        outbound.put(error(1))
        await outbound.drain(1)
        link.detach()
        point = await link.attach(MemoryConnection(), 7, SessionCreated(session=SessionConfig()))
        outbound.close()
        await sender
        return point

    point = asyncio.run(main())
    assert point.received == 1 and point.problem is not None and point.problem[0] == "invalid_value"


def test_a_write_stuck_on_a_connection_a_resume_takes_over_is_abandoned_and_sent_again() -> None:
    async def main() -> tuple[MemoryConnection, Any]:
        stuck = MemoryConnection(stuck=True)
        link, outbound, sender = await linked(SentLog(60), stuck)
        outbound.put(error(1))
        await asyncio.sleep(0.05)  # the sender now waits on the stuck connection
        assert link.log.last_seq == 1 and link.log.written == 0
        old = link.detach()
        assert old is stuck
        second = MemoryConnection()
        point = await link.attach(second, 0, SessionCreated(session=SessionConfig()))
        await outbound.drain(1)
        alive = not sender.done()
        outbound.close()
        await sender
        return second, (point, alive)

    second, (point, alive) = asyncio.run(main())
    assert alive  # the abandoned write did not end the sender
    assert point.replayed == 1
    assert codes(second) == ["e1"]
