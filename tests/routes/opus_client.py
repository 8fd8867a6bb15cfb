"""A Realtime test client that speaks Opus: raw packets in binary frames, written here with PyAV's libopus
directly (not the server's codec module), so the tests check the wire format, not our own code against
itself.

Answer frames are `[response number][output index][packet]` (see app/sessions/binary_frames.py): the
client numbers the `response.created` events it receives, from 0, and files each frame under that
response's id.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import av
import numpy as np
import websockets

from tests.routes.conftest import RealtimeClient, Received

OPUS_FORMAT = {"type": "audio/x-opus"}
PACKET_S = 0.020
DECODE_RATE = 48000
# A quiet room between utterances. Quieter than the -64..-50 dBFS a real microphone gives, because the
# server's VAD today keeps a turn open in that band once speech has been heard (its silence fallback
# never fires; reported), and these tests end turns by that fallback.
NOISE_FLOOR_DBFS = -70.0


def noise_floor(seconds: float, rate: int = 24000, seed: int = 0) -> np.ndarray:
    """White noise at `NOISE_FLOOR_DBFS` (RMS), float32."""
    rms = 10 ** (NOISE_FLOOR_DBFS / 20)
    return (np.random.default_rng(seed).standard_normal(int(seconds * rate)) * rms).astype(np.float32)


def opus_packets(samples: np.ndarray, rate: int = 24000, bitrate: int = 24000) -> list[bytes]:
    """Mono float32 speech as raw 20 ms Opus packets, as a phone's encoder would make them."""
    encoder = av.codec.CodecContext.create("libopus", "w")
    encoder.sample_rate = rate
    encoder.layout = "mono"
    encoder.format = "s16"
    encoder.bit_rate = bitrate
    encoder.time_base = Fraction(1, rate)
    encoder.options = {"frame_duration": "20"}
    encoder.open()
    step = int(rate * PACKET_S)
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    pcm = np.concatenate([pcm, np.zeros(-len(pcm) % step, dtype=np.int16)])
    packets: list[bytes] = []
    for start in range(0, len(pcm), step):
        frame = av.AudioFrame.from_ndarray(pcm[None, start : start + step], format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        packets += [bytes(p) for p in encoder.encode(frame)]
    return packets + [bytes(p) for p in encoder.encode(None)]


def decode_packets(packets: list[bytes]) -> np.ndarray:
    """Raw Opus packets to float32 mono at 48 kHz (a fresh decoder: one stream)."""
    decoder = av.codec.CodecContext.create("opus", "r")
    decoder.sample_rate = DECODE_RATE
    decoder.layout = "mono"
    decoder.open()
    pieces = [frame.to_ndarray().reshape(-1) for p in packets for frame in decoder.decode(av.Packet(p))]
    if not pieces:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32)


@dataclass
class AudioFrame:
    """One binary frame of answer audio, filed under its response."""

    response_id: str | None  # None: no response.created numbered like this one had arrived
    output_index: int
    packet: bytes
    at: float


@dataclass
class OpusClient(RealtimeClient):
    """`RealtimeClient` that also takes binary frames; JSON events go to `log` as before."""

    frames: list[AudioFrame] = field(default_factory=list)
    bytes_sent: int = 0
    _created: list[str] = field(default_factory=list)

    async def _receive(self, timeout: float) -> None:
        # Read until one JSON event arrives: callers count events, and frames are not events.
        deadline = time.perf_counter() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.recv(), max(0.0, deadline - time.perf_counter()))
            now = time.perf_counter()
            if isinstance(raw, bytes):
                number, index, packet = raw[0], raw[1], raw[2:]
                owners = [rid for n, rid in enumerate(self._created) if n % 256 == number]
                self.frames.append(AudioFrame(owners[-1] if owners else None, index, packet, now))
                continue
            event = json.loads(raw)
            if event["type"] == "response.created":
                self._created.append(event["response"]["id"])
            self.log.append(Received(event, now))
            return

    def packets(self, response_id: str) -> list[bytes]:
        """The Opus packets of one response, in order."""
        return [f.packet for f in self.frames if f.response_id == response_id]

    async def send_packets(self, packets: list[bytes], paced: bool = True) -> None:
        """One binary frame per packet, each no earlier than real time allows (unless not `paced`)."""
        started = time.perf_counter()
        for index, packet in enumerate(packets):
            await self.ws.send(packet)
            self.bytes_sent += len(packet)
            if paced:
                await asyncio.sleep(max(0.0, started + (index + 1) * PACKET_S - time.perf_counter()))


@asynccontextmanager
async def opus_client(url: str, session: dict[str, Any] | None = None) -> AsyncIterator[OpusClient]:
    """Connect, wait for `session.created`, send `session` (a GA session object) if given and wait for
    its `session.updated`; yields the client."""
    async with websockets.connect(url, proxy=None, max_size=None, open_timeout=10) as ws:
        client = OpusClient(ws)
        await client.wait_for("session.created", timeout=10)
        if session is not None:
            await client.send({"type": "session.update", "session": {"type": "realtime", **session}})
            await client.wait_for("session.updated", timeout=10)
        yield client


def opus_session(input_opus: bool = True, output_opus: bool = True, bitrate: int | None = None) -> dict:
    """The `audio` part of a GA session object choosing Opus for either side."""
    output_format: dict[str, Any] = dict(OPUS_FORMAT) if output_opus else {"type": "audio/pcm", "rate": 24000}
    if output_opus and bitrate is not None:
        output_format["bitrate"] = bitrate
    input_format = OPUS_FORMAT if input_opus else {"type": "audio/pcm", "rate": 24000}
    return {"audio": {"input": {"format": input_format}, "output": {"format": output_format}}}
