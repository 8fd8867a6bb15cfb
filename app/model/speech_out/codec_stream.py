"""Streaming codec decoding as the published server does it, split into logic and a small driver.

`CodecChunker` is one reply's bookkeeping and holds no model: speech tokens go in one at a time,
it says which token windows are ready to decode (`ready_windows`), and turns each window's decoded
audio into packets to send (`feed`). An engine can therefore batch the generator calls of many
sessions (`decode_windows`); `decode_stream` runs the whole thing for one token stream.

Published rules reproduced here (llm2TTS.run, find_min_sum_index, server.py decoder()):
- each text segment is its own token stream (the TTS decoder runs once per segment), decoded in
  overlapping windows: the first holds C + Pd tokens and gives its first C tokens' audio; each
  later one holds Pd + C + Pd tokens and gives its middle C; the last 2 * Pd tokens are kept as
  the next window's context; at the segment's end the rest is decoded, trimming only the left Pd
  (or nothing, if it is the segment's first decode);
- C and the seam threshold are the "first" values for the reply's first segment, the later values
  afterwards;
- every decoded piece but a segment's last is cut at a quiet point (`find_seam`), and audio is
  held back until such a point exists;
- optionally, leading samples with |x| <= 0.03 are dropped from the reply's first packet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.model.speech_out.codec import CodecDecoder

LEADING_SILENCE_THRESHOLD = 0.03


@dataclass
class ServerConfig:
    """The published `server.json`: streaming codec and speech-decoder sampling parameters.

    Field names are the file's keys; unknown keys are kept in `extra` and written back.
    """

    decoder_first_chunk_size: int = 20
    decoder_chunk_size: int = 40
    decoder_chunk_overlap_size: int = 10
    decoder_N: int = 2401
    decoder_seg_threshold_first_pack: float = 0.1
    decoder_seg_threshold: float = 0.015
    decoder_top_k: int = 2
    decoder_penalty_window_size: int = -1
    decoder_penalty: float = 1.1
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ServerConfig:
        """Build from the parsed `server.json`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in d.items() if k in known}, extra={k: v for k, v in d.items() if k not in known}
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ServerConfig:
        """Read a `server.json` file."""
        return cls.from_json(json.loads(Path(path).read_text()))

    def to_json(self) -> dict[str, Any]:
        """The complete `server.json` content."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return {**out, **self.extra}


@dataclass(frozen=True)
class DecodeWindow:
    """Token ids to decode in one generator call, and what to keep of the result.

    `index` orders the windows of one chunker; audio must come back through `CodecChunker.feed`
    under that index. Of the decoded `len(token_ids) * samples_per_token` samples the chunker keeps
    `keep` samples from `trim_start` (all the rest when `keep` is None).
    """

    index: int
    token_ids: tuple[int, ...]
    trim_start: int
    keep: int | None
    final: bool
    seam_threshold: float


@dataclass(frozen=True)
class Seam:
    """Where `find_seam` would cut a piece: before sample `cut`, scored by the mean |x| of the
    quietest window, which starts at `window_start`."""

    cut: int
    window_start: int
    mean_abs: float


def find_seam(piece: np.ndarray, window: int) -> Seam | None:
    """Find the quiet point to cut `piece` at, as the published `find_min_sum_index` does.

    Sliding sums of |x| over `window` samples, for windows starting from `len // 2 - window // 2`
    on; the quietest window wins, and the cut goes at the smallest |x| inside it. Quirk kept on
    purpose: the published code searches for that sample from the window's start up to
    `window + offset` samples on (offset = how far past the search start the window begins), not
    just within the window. Returns None when the piece is shorter than the window (the published
    code fails there; we simply find no seam).
    """
    length = len(piece)
    if length < window:
        return None
    magnitude = np.abs(piece.astype(np.float64))
    cumulative = np.concatenate([[0.0], np.cumsum(magnitude)])
    sums = cumulative[window:] - cumulative[:-window]
    search_start = length // 2 - window // 2
    offset = int(np.argmin(sums[search_start:]))
    window_start = search_start + offset
    search_end = min(length, window_start + window + offset)
    cut = window_start + int(np.argmin(magnitude[window_start:search_end]))
    return Seam(cut=cut, window_start=window_start, mean_abs=float(sums[window_start] / window))


def strip_leading_silence(packet: np.ndarray, threshold: float = LEADING_SILENCE_THRESHOLD) -> np.ndarray:
    """Drop the samples before the first one with |x| > threshold.

    Quirk kept on purpose: a packet with no such sample is returned whole, as the published server
    does (its search raises and it sends the packet untouched).
    """
    loud = np.flatnonzero(np.abs(packet) > threshold)
    return packet[loud[0] :] if len(loud) else packet


@dataclass
class _Segment:
    chunk_size: int
    seam_threshold: float
    tokens: list[int] = field(default_factory=list)
    decoded_once: bool = False


class CodecChunker:
    """One reply's streaming codec state: tokens in, decode windows out, audio packets back.

    Use: `push` each speech token; `end_segment` when a text segment's tokens are complete;
    take `ready_windows`, decode them (in any order, batched with other sessions' windows if you
    like) and hand each result to `feed`, which returns the float packets now ready to send, in
    order. `reset` starts a new reply and makes results of older windows be ignored.
    """

    def __init__(
        self,
        config: ServerConfig,
        samples_per_token: int,
        *,
        trim_leading_silence: bool = False,
        leading_silence_threshold: float = LEADING_SILENCE_THRESHOLD,
    ) -> None:
        if config.decoder_chunk_overlap_size < 1:
            raise ValueError("decoder_chunk_overlap_size must be at least 1")
        if config.decoder_first_chunk_size < config.decoder_chunk_overlap_size:
            # The published code would skip audio here: its second window's left trim would
            # start past the end of the first window's output.
            raise ValueError("decoder_first_chunk_size must be at least decoder_chunk_overlap_size")
        if config.decoder_chunk_size < 1 or config.decoder_N < 1:
            raise ValueError("decoder_chunk_size and decoder_N must be positive")
        self.config = config
        self.samples_per_token = samples_per_token
        self.trim_leading_silence = trim_leading_silence
        self.leading_silence_threshold = leading_silence_threshold
        self._next_index = 0
        self.reset()

    def reset(self) -> None:
        """Start a new reply: drop all tokens, windows and held audio; first-segment rules again."""
        self._segment: _Segment | None = None
        self._reply_has_tokens = False
        self._queued: list[DecodeWindow] = []
        self._outstanding: dict[int, DecodeWindow] = {}
        self._decoded: dict[int, tuple[DecodeWindow, np.ndarray]] = {}
        self._next_to_emit = self._next_index
        self._carry = np.zeros(0, dtype=np.float32)
        self._packets_sent = 0

    @property
    def idle(self) -> bool:
        """True when no window waits to be handed out, decoded or turned into packets."""
        return not (self._queued or self._outstanding or self._decoded)

    @property
    def held_samples(self) -> int:
        """Decoded samples held back until a quiet seam (or the segment's end) lets them out."""
        return len(self._carry) + sum(len(audio) for _, audio in self._decoded.values())

    def push(self, token_id: int) -> None:
        """Add one speech token of the current segment (opening a segment if none is open)."""
        segment = self._segment or self._open_segment()
        segment.tokens.append(int(token_id))
        self._reply_has_tokens = True
        overlap = self.config.decoder_chunk_overlap_size
        left = overlap if segment.decoded_once else 0
        if len(segment.tokens) == left + segment.chunk_size + overlap:
            self._queue(segment, left, keep=segment.chunk_size * self.samples_per_token, final=False)
            segment.tokens = segment.tokens[-2 * overlap :]
            segment.decoded_once = True

    def extend(self, token_ids: Iterable[int]) -> None:
        """`push` each of several tokens."""
        for token_id in token_ids:
            self.push(token_id)

    def end_segment(self) -> None:
        """Close the current text segment's token stream: its remaining tokens form a final window."""
        segment, self._segment = self._segment, None
        if segment is None or not segment.tokens:
            return
        left = self.config.decoder_chunk_overlap_size if segment.decoded_once else 0
        self._queue(segment, left, keep=None, final=True)

    def tokens_to_next_window(self) -> int:
        """Tokens still to push before the next window is ready (no more audio comes before it, unless
        the segment ends first): a scheduler's deadline, as a window holds up to 1.5 s of audio."""
        config = self.config
        segment = self._segment
        if segment is None:  # the next segment's first window
            chunk = config.decoder_chunk_size if self._reply_has_tokens else config.decoder_first_chunk_size
            return chunk + config.decoder_chunk_overlap_size
        left = config.decoder_chunk_overlap_size if segment.decoded_once else 0
        return left + segment.chunk_size + config.decoder_chunk_overlap_size - len(segment.tokens)

    def ready_windows(self) -> list[DecodeWindow]:
        """Hand out the windows that became ready since the last call, oldest first."""
        windows, self._queued = self._queued, []
        self._outstanding.update((w.index, w) for w in windows)
        return windows

    def feed(self, index: int, audio: np.ndarray) -> list[np.ndarray]:
        """Give the decoded audio of window `index`; returns the packets ready to send, in order.

        Audio for a window from before the last `reset` is ignored.
        """
        if index < self._next_to_emit:
            return []
        window = self._outstanding.pop(index, None)
        if window is None:
            raise KeyError(f"window {index} was not handed out or was already fed")
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
        expected = len(window.token_ids) * self.samples_per_token
        if len(audio) != expected:
            raise ValueError(f"window {index} decodes to {expected} samples, got {len(audio)}")
        self._decoded[index] = (window, audio)
        packets: list[np.ndarray] = []
        while self._next_to_emit in self._decoded:
            window, audio = self._decoded.pop(self._next_to_emit)
            self._next_to_emit += 1
            end = None if window.keep is None else window.trim_start + window.keep
            packets.extend(self._smooth(audio[window.trim_start : end], window))
        return packets

    def _open_segment(self) -> _Segment:
        # Published: the first-segment values apply while the reply has sent no packet; a segment
        # with any token always ends in a packet, so "no earlier segment had tokens" is the same
        # test, and it does not depend on how far decoding has got.
        config = self.config
        if self._reply_has_tokens:
            self._segment = _Segment(config.decoder_chunk_size, config.decoder_seg_threshold)
        else:
            self._segment = _Segment(config.decoder_first_chunk_size, config.decoder_seg_threshold_first_pack)
        return self._segment

    def _queue(self, segment: _Segment, left: int, keep: int | None, final: bool) -> None:
        window = DecodeWindow(
            index=self._next_index,
            token_ids=tuple(segment.tokens),
            trim_start=left * self.samples_per_token,
            keep=keep,
            final=final,
            seam_threshold=segment.seam_threshold,
        )
        self._next_index += 1
        self._queued.append(window)

    def _smooth(self, piece: np.ndarray, window: DecodeWindow) -> list[np.ndarray]:
        if window.final:
            out, self._carry = np.concatenate([self._carry, piece]), np.zeros(0, dtype=np.float32)
            return self._send(out)
        seam = find_seam(piece, self.config.decoder_N)
        if seam is None or not seam.mean_abs < window.seam_threshold:
            self._carry = np.concatenate([self._carry, piece])
            return []
        out = np.concatenate([self._carry, piece[: seam.cut]])
        self._carry = piece[seam.cut :].copy()
        return self._send(out)

    def _send(self, packet: np.ndarray) -> list[np.ndarray]:
        if self.trim_leading_silence and self._packets_sent == 0:
            packet = strip_leading_silence(packet, self.leading_silence_threshold)
        if len(packet) == 0:
            return []
        self._packets_sent += 1
        return [packet]


@torch.inference_mode()
def decode_windows(codec: CodecDecoder, windows: Sequence[DecodeWindow]) -> list[np.ndarray]:
    """Decode windows (from any sessions) with one generator call per distinct window length.

    Returns each window's full decoded audio (float32, untrimmed), in the order given.
    """
    device = next(codec.parameters()).device
    by_length: dict[int, list[int]] = {}
    for position, window in enumerate(windows):
        by_length.setdefault(len(window.token_ids), []).append(position)
    results: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * len(windows)
    for positions in by_length.values():
        ids = torch.tensor([windows[p].token_ids for p in positions], dtype=torch.long, device=device)
        audio = codec(ids).float().cpu().numpy()
        for row, position in enumerate(positions):
            results[position] = audio[row]
    return results


def decode_stream(
    codec: CodecDecoder,
    token_ids: Sequence[int],
    config: ServerConfig,
    *,
    segment_ends: Sequence[int] = (),
    trim_leading_silence: bool = False,
) -> list[np.ndarray]:
    """Stream one reply's tokens through a `CodecChunker` and `codec`; returns the packets.

    `segment_ends` are token counts at which a text segment ends (the stream's end always does).
    Tokens arrive one at a time and each ready window is decoded at once, as the published server
    does.
    """
    chunker = CodecChunker(config, codec.samples_per_token, trim_leading_silence=trim_leading_silence)
    ends = set(segment_ends)
    packets: list[np.ndarray] = []

    def drain() -> None:
        windows = chunker.ready_windows()
        for window, audio in zip(windows, decode_windows(codec, windows), strict=True):
            packets.extend(chunker.feed(window.index, audio))

    for count, token_id in enumerate(token_ids, start=1):
        chunker.push(token_id)
        if count in ends:
            chunker.end_segment()
        drain()
    chunker.end_segment()
    drain()
    return packets
