"""Resume tokens, and the sessions parked while their client reconnects.

Every resumable session has one live token at a time: unguessable (192 random bits), bound to the API
key that made the session, single-use. `claim` hands the session to the first caller with its token
and key (a second claim with the same token finds nothing), and the session gets a new token for its
next connection. A session whose connection was lost is parked: it keeps its engine place (its caches,
its answer still generating) and its key's place, so it counts in capacity, for `grace_s`; then it is
ended and its token forgotten. Tokens are looked up by their SHA-256, so lookups take no time that
depends on how much of a guess was right.

An expired token is remembered (its digest) for another `grace_s`, so that a client that comes back
late is told so (`refusal`) rather than that its token is unknown: on a loaded machine a reconnect
can reach the server after the grace time although the client dialled within it. At most the sessions
that can be parked within one grace time are remembered, so the table is bounded by capacity.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)
TOKEN_PREFIX = "rt_"


class Parkable(Protocol):
    """A session the registry can end when its grace time is over."""

    async def expire(self) -> None: ...


@dataclass
class _Entry:
    holder: Parkable
    api_key: str | None
    digest: str  # of the session's live token
    parked_until: float | None = None  # monotonic deadline while parked; None while a client holds it
    timer: asyncio.TimerHandle | None = None


class ResumeRegistry:
    """Tokens of resumable sessions and their parking; `grace_s` 0 turns resuming off."""

    def __init__(self, grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._by_digest: dict[str, _Entry] = {}
        self._by_holder: dict[int, _Entry] = {}
        self._expiring: set[asyncio.Task] = set()
        self._expired: dict[str, float] = {}  # digest -> when its session expired (kept for grace_s)

    @property
    def enabled(self) -> bool:
        return self.grace_s > 0

    @property
    def parked(self) -> int:
        """Sessions waiting for their client."""
        return sum(1 for e in self._by_holder.values() if e.parked_until is not None)

    def __len__(self) -> int:
        return len(self._by_holder)

    def issue(self, holder: Parkable, api_key: str | None) -> str:
        """A new token for `holder` (its previous one, if any, stops working)."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(24)
        entry = self._by_holder.get(id(holder))
        if entry is not None:
            self._by_digest.pop(entry.digest, None)
            entry.digest = _digest(token)
            entry.api_key = api_key
        else:
            entry = _Entry(holder, api_key, _digest(token))
            self._by_holder[id(holder)] = entry
        self._by_digest[entry.digest] = entry
        return token

    def claim(self, token: str, api_key: str | None) -> Parkable | None:
        """The session `token` resumes, taken off parking, or None (unknown, used, expired, other key).

        Another key's attempt leaves the token to its owner (a token seen by someone else cannot be
        used to take the session away, nor to spend its owner's resume).
        """
        entry = self._by_digest.get(_digest(token))
        if entry is None:
            return None
        if not _same_key(entry.api_key, api_key):
            return None
        if entry.parked_until is not None and self._clock() >= entry.parked_until:
            return None  # its expiry is on the way
        del self._by_digest[entry.digest]
        entry.digest = ""
        self._unpark(entry)
        return entry.holder

    def refusal(self, token: str) -> Refusal:
        """Why `claim` found nothing for `token`: its session expired `late_s` ago, or it is not known
        (never issued, already used, another key's, or expired longer ago than the grace time)."""
        self._forget_old_expiries()
        digest = _digest(token)
        entry = self._by_digest.get(digest)
        if entry is not None and entry.parked_until is not None and self._clock() >= entry.parked_until:
            return Refusal(expired=True, late_s=self._clock() - entry.parked_until)  # expiry on its way
        expired_at = self._expired.get(digest)
        if expired_at is not None:
            return Refusal(expired=True, late_s=self._clock() - expired_at)
        return Refusal(expired=False)

    def park(self, holder: Parkable) -> bool:
        """Keep `holder` for `grace_s`, then end it; False (nothing kept) if it has no token."""
        entry = self._by_holder.get(id(holder))
        if entry is None or not self.enabled or not entry.digest:
            return False
        self._unpark(entry)
        entry.parked_until = self._clock() + self.grace_s
        entry.timer = asyncio.get_running_loop().call_later(self.grace_s, self._expire, entry)
        return True

    def is_parked(self, holder: Parkable) -> bool:
        entry = self._by_holder.get(id(holder))
        return entry is not None and entry.parked_until is not None

    def forget(self, holder: Parkable) -> None:
        """The session ended: its token stops working."""
        entry = self._by_holder.pop(id(holder), None)
        if entry is not None:
            self._by_digest.pop(entry.digest, None)
            self._unpark(entry)

    def _unpark(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
        entry.timer = None
        entry.parked_until = None

    def _expire(self, entry: _Entry) -> None:
        if self._by_holder.get(id(entry.holder)) is not entry or entry.parked_until is None:
            return
        self._forget_old_expiries()
        self._expired[entry.digest] = entry.parked_until
        self.forget(entry.holder)
        log.info("a parked session was not resumed within %.1f s: ending it", self.grace_s)
        task = asyncio.create_task(_quietly(entry.holder.expire), name="resume-expired")
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    def _forget_old_expiries(self) -> None:
        """Drop expired digests older than the grace time (oldest first: the dict keeps expiry order)."""
        oldest_kept = self._clock() - self.grace_s
        while self._expired:
            digest, expired_at = next(iter(self._expired.items()))
            if expired_at >= oldest_kept:
                break
            del self._expired[digest]


@dataclass(frozen=True)
class Refusal:
    """Why a token found no session: `expired` (its session ended `late_s` before the claim) or not."""

    expired: bool
    late_s: float = 0.0


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _same_key(bound: str | None, presented: str | None) -> bool:
    if bound is None or presented is None:
        return bound is None and presented is None
    return hmac.compare_digest(bound.encode(), presented.encode())


async def _quietly(end: Callable[[], Awaitable[None]]) -> None:
    try:
        await end()
    except Exception:  # noqa: BLE001 - ending one parked session must not stop the others
        log.exception("ending a parked session failed")
