"""The resume registry (tokens: unguessable, single use, bound to a key; parking with expiry) and the
sent log a resume replays from (numbering, what is kept, rewinding)."""

from __future__ import annotations

import asyncio

import pytest

from app.key_limits import KeySessionLimiter
from app.sessions.resume_registry import ResumeRegistry
from app.sessions.sent_log import ReplayGapError, SentLog


class Held:
    """A parked session as the registry sees it: records when it was ended."""

    def __init__(self) -> None:
        self.expired = asyncio.Event()

    async def expire(self) -> None:
        self.expired.set()


def test_a_token_is_single_use_and_a_new_one_replaces_it() -> None:
    registry = ResumeRegistry(grace_s=30)
    held = Held()
    first = registry.issue(held, "key-a")
    assert registry.claim(first, "key-a") is held
    assert registry.claim(first, "key-a") is None  # used
    second = registry.issue(held, "key-a")
    assert second != first
    assert registry.claim(first, "key-a") is None
    assert registry.claim(second, "key-a") is held


def test_tokens_are_unguessable_and_distinct() -> None:
    registry = ResumeRegistry(grace_s=30)
    tokens = {registry.issue(Held(), None) for _ in range(200)}
    assert len(tokens) == 200
    assert all(len(t) >= 32 for t in tokens)
    assert registry.claim("rt_" + "A" * 32, None) is None


def test_a_token_is_bound_to_the_key_that_made_the_session() -> None:
    registry = ResumeRegistry(grace_s=30)
    held = Held()
    token = registry.issue(held, "key-a")
    assert registry.claim(token, "key-b") is None
    assert registry.claim(token, None) is None
    assert registry.claim(token, "key-a") is held  # another key's attempt did not spend it
    open_server = Held()
    keyless = registry.issue(open_server, None)
    assert registry.claim(keyless, "key-a") is None
    assert registry.claim(keyless, None) is open_server


def test_a_parked_session_expires_after_the_grace_time_and_its_token_with_it() -> None:
    async def main() -> None:
        registry = ResumeRegistry(grace_s=0.2)
        held, other = Held(), Held()
        token = registry.issue(held, None)
        other_token = registry.issue(other, None)
        assert registry.park(held)
        assert registry.park(other)
        assert registry.parked == 2
        assert registry.claim(other_token, None) is other  # in time: taken off parking
        assert registry.parked == 1
        await asyncio.wait_for(held.expired.wait(), 2)
        assert not other.expired.is_set()
        assert registry.claim(token, None) is None
        assert registry.parked == 0

    asyncio.run(main())


def test_a_late_claim_finds_nothing_even_before_the_expiry_has_run() -> None:
    now = [100.0]

    async def main() -> None:
        registry = ResumeRegistry(grace_s=5, clock=lambda: now[0])
        held = Held()
        token = registry.issue(held, None)
        registry.park(held)
        now[0] += 5.0
        assert registry.claim(token, None) is None

    asyncio.run(main())


def test_resume_off_issues_tokens_but_parks_nothing() -> None:
    async def main() -> None:
        registry = ResumeRegistry(grace_s=0)
        held = Held()
        registry.issue(held, None)
        assert not registry.enabled
        assert not registry.park(held)

    asyncio.run(main())


def test_a_claimed_session_cannot_be_parked_until_it_has_a_new_token() -> None:
    """Between a claim and its new token the session belongs to the resuming connection."""

    async def main() -> None:
        registry = ResumeRegistry(grace_s=30)
        held = Held()
        token = registry.issue(held, None)
        registry.claim(token, None)
        assert not registry.park(held)
        registry.issue(held, None)
        assert registry.park(held)
        registry.forget(held)
        assert registry.parked == 0 and len(registry) == 0

    asyncio.run(main())


def test_two_claims_racing_with_one_token_one_wins() -> None:
    async def main() -> list[object]:
        registry = ResumeRegistry(grace_s=30)
        held = Held()
        token = registry.issue(held, "k")
        registry.park(held)

        async def claim() -> object:
            await asyncio.sleep(0)
            return registry.claim(token, "k")

        return await asyncio.gather(*(claim() for _ in range(5)))

    results = asyncio.run(main())
    assert sum(r is not None for r in results) == 1


def test_a_parked_session_keeps_its_key_place() -> None:
    """Capacity: the key's place is released only when the session ends, not when it is parked."""
    limiter = KeySessionLimiter(limit=1)
    assert limiter.acquire("k")  # the session's place, held across its connections
    assert not limiter.acquire("k")  # a second session of that key is refused meanwhile
    limiter.release("k")
    assert limiter.acquire("k")
    with limiter.hold("k") as admitted:
        assert not admitted


# -- the sent log -------------------------------------------------------------------------------------------
def test_messages_are_numbered_and_the_ones_after_a_count_are_given_back() -> None:
    log = SentLog(keep_s=60)
    for n in range(5):
        log.record(b"frame %d" % n, "resp", audio_seconds=0.02, audio_offset_s=0.02 * n)
    log.mark_written(3)
    assert [m.seq for m in log.after(2)] == [3, 4, 5]
    assert log.after(5) == []
    assert log.written == 3
    log.rewind(2)
    assert (log.last_seq, log.written, len(log)) == (2, 2, 2)
    assert log.record(b"again").seq == 3  # sent again under the same number


def test_a_count_beyond_what_was_sent_or_before_what_is_kept_is_a_gap() -> None:
    now = [0.0]
    log = SentLog(keep_s=10, clock=lambda: now[0])
    log.record(b"old")
    now[0] = 11.0
    log.record(b"new")
    assert [m.seq for m in log.after(1)] == [2]
    with pytest.raises(ReplayGapError, match="no longer kept"):
        log.after(0)
    with pytest.raises(ReplayGapError, match="has sent 2"):
        log.after(3)
    assert log.oldest_kept == 2


def test_a_claim_after_the_grace_time_is_told_it_expired_and_how_late() -> None:
    """A client that dials in time can reach a loaded server late: the refusal says so, before the
    expiry has run and for one grace time after it; after that (or for a token never issued) the
    token is just unknown."""
    now = [100.0]

    async def main() -> None:
        registry = ResumeRegistry(grace_s=0.2, clock=lambda: now[0])
        held = Held()
        token = registry.issue(held, None)
        registry.park(held)
        now[0] += 0.25  # late, and the loop's timer has not run yet: the expiry is on its way
        assert registry.claim(token, None) is None
        refusal = registry.refusal(token)
        assert refusal.expired and refusal.late_s == pytest.approx(0.05)
        await asyncio.wait_for(held.expired.wait(), 2)  # the timer runs (loop time)
        now[0] += 0.1
        refusal = registry.refusal(token)
        assert refusal.expired and refusal.late_s == pytest.approx(0.15)
        assert not registry.refusal("rt_" + "x" * 32).expired
        now[0] += 0.1  # forgotten one grace time after the expiry: the table stays bounded
        assert not registry.refusal(token).expired
        assert len(registry._expired) == 0

    asyncio.run(main())


def test_a_refusal_of_a_live_or_used_token_is_not_an_expiry() -> None:
    registry = ResumeRegistry(grace_s=3)
    held = Held()
    token = registry.issue(held, "key-a")
    assert registry.claim(token, "key-b") is None  # another key's: the session is alive
    assert not registry.refusal(token).expired
    assert registry.claim(token, "key-a") is held
    assert not registry.refusal(token).expired  # used
