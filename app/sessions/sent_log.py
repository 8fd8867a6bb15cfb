"""The numbered messages a resumable session has sent, kept a while so a resumed client gets what it missed.

A dead TCP connection swallows what was written to it: the server cannot know what the client got.
So the client says (`received=N` on resume: how many messages it has received in this session, every
text and binary message except `session.created`), and the messages after that are sent again.
Numbering: the n-th message the session writes (n from 1) is message n, whichever connection carried
it. Messages are kept for `keep_s` seconds after they were written (enough to outlast the time a dead
connection takes to be noticed, ping interval plus ping timeout).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from app.sessions.events import ServerEvent


@dataclass(frozen=True)
class SentMessage:
    """One message of the session's stream, with what pacing needs to send it again."""

    seq: int
    event: ServerEvent | bytes  # a JSON event, or a binary frame as written
    response_id: str | None  # the response whose lane it left from (None: the control lane)
    audio_seconds: float  # playback seconds of answer audio it carries
    audio_offset_s: float  # seconds of its response's audio sent before it
    sent_at: float


class ReplayGapError(LookupError):
    """Messages the client asks for are no longer kept (or were never sent)."""


class SentLog:
    """Messages numbered from 1, the recent ones kept; `written` counts those a socket accepted."""

    def __init__(self, keep_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_s = keep_s
        self._clock = clock
        self._messages: deque[SentMessage] = deque()
        self.last_seq = 0  # the number of the last message recorded
        self.written = 0  # the number of the last message a socket took (the server's view of "sent")

    def record(
        self,
        event: ServerEvent | bytes,
        response_id: str | None = None,
        audio_seconds: float = 0.0,
        audio_offset_s: float = 0.0,
    ) -> SentMessage:
        """Number the next message and keep it."""
        now = self._clock()
        self.last_seq += 1
        message = SentMessage(self.last_seq, event, response_id, audio_seconds, audio_offset_s, now)
        self._messages.append(message)
        self._forget_before(now - self.keep_s)
        return message

    def mark_written(self, seq: int) -> None:
        """A socket accepted message `seq` (it may still be lost on a connection that died)."""
        self.written = max(self.written, seq)

    @property
    def oldest_kept(self) -> int:
        """The number of the oldest message still kept (`last_seq + 1` when none is)."""
        return self._messages[0].seq if self._messages else self.last_seq + 1

    def after(self, received: int) -> list[SentMessage]:
        """The messages after the first `received`; raises ReplayGapError if some are not kept."""
        if received < 0 or received > self.last_seq:
            raise ReplayGapError(f"received={received}: this session has sent {self.last_seq} message(s)")
        self._forget_before(self._clock() - self.keep_s)
        if received + 1 < self.oldest_kept:
            raise ReplayGapError(
                f"messages {received + 1} to {self.oldest_kept - 1} are no longer kept "
                f"(they are kept for {self.keep_s:g} s)"
            )
        return [m for m in self._messages if m.seq > received]

    def rewind(self, received: int) -> None:
        """Forget the messages after `received`: they are about to be sent again, under the same numbers."""
        while self._messages and self._messages[-1].seq > received:
            self._messages.pop()
        self.last_seq = min(self.last_seq, max(received, 0))
        self.written = min(self.written, self.last_seq)

    def __len__(self) -> int:
        return len(self._messages)

    def _forget_before(self, cutoff: float) -> None:
        while self._messages and self._messages[0].sent_at < cutoff:
            self._messages.popleft()
