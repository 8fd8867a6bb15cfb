"""When the answer text is cut into segments for the speech decoder, and how a segment is cleaned.

Two published rules, both ending a segment at sentence punctuation (`。：？！.?!` or a newline,
except a '.' after a digit):
- "server" (the released server, our default): only once at least 4 tokens have accumulated;
  commas and colons also end one for the first segment of a reply or after 20 tokens.
- "offline" (the released offline script): no minimum, no comma rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

SENTENCE_END = tuple("。：？！.?!\n")
SOFT_END = tuple(",，:")
TERMINAL = tuple("。？！.?!")
SERVER_SEGMENTATION = "server"
OFFLINE_SEGMENTATION = "offline"
SEGMENTATIONS = (SERVER_SEGMENTATION, OFFLINE_SEGMENTATION)


def post_process(text: str) -> str:
    """Normalise segment text before re-tokenising it for the speech decoder."""
    text = text.replace("、", "，")
    text = re.sub(r"[()（）]", ",", text)
    text = re.sub(r"[\n\t*_`~\\]", "", text)
    has_chinese = re.search(r"[\u4e00-\u9fff]", text) is not None
    text = re.sub(
        r"(^|\s)(\d+)\.(?!\d)", lambda m: f"{m.group(1)}{m.group(2)}{'：' if has_chinese else ':'}", text
    )
    # After the list markers, so that removing the space after "1." cannot hide the marker.
    text = re.sub(r"([.:：])\s+", r"\1", text)
    text = text.strip()
    if not text:
        return text
    if text[-1] in ",，;；:：":
        text = text[:-1]
    if not text.endswith(TERMINAL):
        text += "。"
    return text


@dataclass
class Segment:
    """A run of answer tokens to speak: their ids, their LLM hidden-state rows, and the text."""

    token_ids: list[int] = field(default_factory=list)
    hidden_rows: list = field(default_factory=list)
    text: str = ""


@dataclass
class Segmenter:
    """Accumulates (token, hidden, text piece) and says when a segment is complete.

    Text pieces come from an incremental detokeniser that already holds back partial UTF-8
    characters. The defaults are the released server's rule; `Segmenter.for_rule` builds either
    published rule. `soft_after_tokens` None means commas and colons never end a segment.
    `max_tokens` is our addition: a segment that finds no punctuation is cut there, which bounds
    the speech decoder's prefix and the wait for first audio.
    """

    min_tokens: int = 4
    soft_after_tokens: int | None = 20
    max_tokens: int | None = None
    current: Segment = field(default_factory=Segment)
    segments_emitted: int = 0

    @classmethod
    def for_rule(cls, rule: str, max_tokens: int | None = None) -> Segmenter:
        """The released server's rule ("server", with our `max_tokens` cap) or its offline
        script's ("offline": every sentence end cuts, commas never; no cap, as there)."""
        if rule == SERVER_SEGMENTATION:
            return cls(max_tokens=max_tokens)
        if rule == OFFLINE_SEGMENTATION:
            return cls(min_tokens=1, soft_after_tokens=None, max_tokens=None)
        raise ValueError(f"unknown segmentation {rule!r}; use one of {', '.join(SEGMENTATIONS)}")

    def push(self, token_id: int, hidden, piece: str) -> Segment | None:
        """Add one token; returns the finished segment when this token closes one."""
        self.current.token_ids.append(token_id)
        self.current.hidden_rows.append(hidden)
        self.current.text += piece
        count = len(self.current.token_ids)
        text = self.current.text
        if self.max_tokens is not None and count >= self.max_tokens:
            return self._cut()
        if count < self.min_tokens:
            return None
        if text.endswith(SENTENCE_END) and not re.search(r"\d\.$", text):
            return self._cut()
        if self.soft_after_tokens is None:
            return None
        soft_allowed = self.segments_emitted == 0 or count >= self.soft_after_tokens
        if soft_allowed and text.endswith(SOFT_END):
            return self._cut()
        return None

    def flush(self) -> Segment | None:
        """The rest of the reply, if any text remains."""
        if not self.current.token_ids or not self.current.text.strip():
            self.current = Segment()
            return None
        return self._cut()

    def _cut(self) -> Segment:
        segment, self.current = self.current, Segment()
        self.segments_emitted += 1
        return segment
