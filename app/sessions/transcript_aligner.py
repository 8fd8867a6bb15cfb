"""When each word of an answer's transcript may go out: no earlier than the audio that speaks it.

The engine hands over each speech segment's text just before that segment's audio. Within a segment we
place each word in proportion to its characters (speech takes about as long per character across a
sentence) and release it once the audio up to the word's end has been sent. A segment's length is known
only when the next one (or the end of the answer) begins, so until then its words wait: the transcript
may lag the audio a little, never lead it. Pure logic: no asyncio, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_WORD = re.compile(r"\s*\S+")


def split_words(text: str) -> list[str]:
    """`text` as words, each with the whitespace before it; trailing whitespace joins the last word."""
    words = _WORD.findall(text)
    rest = text[sum(len(w) for w in words) :]
    if words:
        words[-1] += rest
    elif rest:
        words = [rest]
    return words


@dataclass
class _Segment:
    words: list[str]
    start_ms: float
    end_ms: float | None = None
    released: int = 0  # words already handed out

    def word_end_ms(self, index: int, end_ms: float | None = None) -> float:
        """Where word `index` ends in the audio (with the segment's end, or `end_ms` in its place)."""
        end = self.end_ms if self.end_ms is not None else end_ms
        assert end is not None
        total = sum(len(w) for w in self.words) or 1
        upto = sum(len(w) for w in self.words[: index + 1])
        return self.start_ms + (end - self.start_ms) * upto / total


@dataclass
class TranscriptAligner:
    """Segments of text placed on the answer's audio timeline (milliseconds from its first sample)."""

    _segments: list[_Segment] = field(default_factory=list)

    def add_segment(self, text: str, audio_at_ms: float) -> None:
        """A segment whose audio starts at `audio_at_ms` (which also ends the previous segment)."""
        self.end_audio(audio_at_ms)
        words = split_words(text)
        if words:
            self._segments.append(_Segment(words, audio_at_ms))

    def end_audio(self, audio_at_ms: float) -> None:
        """The audio of the open segment ends at `audio_at_ms`."""
        if self._segments and self._segments[-1].end_ms is None:
            self._segments[-1].end_ms = audio_at_ms

    def due(self, audio_sent_ms: float) -> str:
        """The words not yet released whose audio has been sent up to `audio_sent_ms`, in order."""
        out: list[str] = []
        for segment in self._segments:
            if segment.end_ms is None:
                break
            while segment.released < len(segment.words) and segment.word_end_ms(segment.released) <= (
                audio_sent_ms + 1e-6
            ):
                out.append(segment.words[segment.released])
                segment.released += 1
            if segment.released < len(segment.words):
                break
        return "".join(out)

    def text_upto(self, audio_ms: float, open_end_ms: float) -> str:
        """The words whose audio ends by `audio_ms`, released or not: what a listener heard up to there.

        A segment still open is taken to end at `open_end_ms` (the audio made so far), the best guess
        available while its speech is still being made.
        """
        out: list[str] = []
        for segment in self._segments:
            for index, word in enumerate(segment.words):
                if segment.word_end_ms(index, open_end_ms) > audio_ms + 1e-6:
                    return "".join(out)
                out.append(word)
        return "".join(out)

    def rest(self) -> str:
        """Every word not yet released (the answer's audio has all been sent)."""
        out = []
        for segment in self._segments:
            out.extend(segment.words[segment.released :])
            segment.released = len(segment.words)
        return "".join(out)
