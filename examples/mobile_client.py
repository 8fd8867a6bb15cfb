#!/usr/bin/env python3
"""A reference mobile-style client for the Freeze-Omni server: Opus both ways over `/v1/realtime`.

It does what a phone app does on a weak link: asks for Opus in `session.update` (our `audio/x-opus`
extension), sends the microphone as raw 20 ms Opus packets, one binary WebSocket frame each, in real
time (here the "microphone" is a WAV file, then silence while the answer plays), lets the server's
VAD decide when the user has finished, and plays the answer (here: saves it as a WAV). Per turn it
prints the latency (end of the question to the first answer packet) and the bytes sent and received.

When the network blips (the connection ends without a close frame) it takes its session back, as the
server's README describes ("Resume after a network blip"): it reconnects with the session's resume
token and the count of messages it received, and the server sends again exactly what was lost. What
the microphone said while the network was away is lost, as on a phone call.

    pip install websockets av numpy
    python examples/mobile_client.py question.wav --out answer.wav
    python examples/mobile_client.py q1.wav q2.wav --url ws://host:8000/v1/realtime --api-key KEY --bitrate 16000

Answer frames are `[response number][output index][Opus packet]`: the response number counts the
`response.created` events from 0 (modulo 256); see the server's README ("Opus"). Copy freely.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import sys
import time
import wave
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import websockets

RATE = 24000  # what we encode at (libopus takes 8/12/16/24/48 kHz)
PACKET_S = 0.020
PACKET_SAMPLES = int(RATE * PACKET_S)
DECODE_RATE = 48000  # Opus decoders produce 48 kHz
RESUME_FIRST_S = 0.25  # after a drop: dial again at once, then 0.25 s, 0.5 s ... 4 s apart
RESUME_MAX_S = 4.0


@dataclass
class Turn:
    """One question and its answer, as this client saw them."""

    question: str
    question_s: float
    answer_file: str = ""
    answer_text: str = ""
    answer_s: float = 0.0
    status: str = ""
    response_id: str = ""
    latency_s: float | None = None  # end of the question's audio -> first answer packet
    bytes_sent: int = 0  # Opus packets and JSON events we sent during the turn
    bytes_received: int = 0  # frames and JSON events we received during the turn
    packets_received: int = 0
    resumes: int = 0  # times the connection dropped during the turn and the session was taken back


class Link:
    """One session over one connection or, after network blips, several: what crosses, counted both
    ways, and what it takes to resume (the token and the count of messages received)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.session_key = "mobile-" + secrets.token_hex(8)
        self.url, self.headers = url, headers
        self.ws: websockets.ClientConnection | None = None
        self.sent = 0  # bytes
        self.received = 0  # bytes
        self.messages = 0  # messages received, the server's way of counting: all but each session.created
        self.resume_token: str | None = None
        self.grace_s = 0.0
        self.resumes = 0

    def _url(self, resume: bool) -> str:
        query = f"session={self.session_key}"
        if resume:
            query += f"&resume={self.resume_token}&received={self.messages}"
        return f"{self.url}{'&' if '?' in self.url else '?'}{query}"

    async def dial(self, resume: bool = False) -> dict:
        """Connect; returns the connection's `session.created`."""
        self.ws = await websockets.connect(
            self._url(resume), additional_headers=self.headers, max_size=None, proxy=None, open_timeout=10
        )
        created = json.loads(await self.ws.recv())
        if created["type"] != "session.created":
            raise SystemExit(f"the server refused the session: {created}")
        extension = created.get("freeze_omni", {})
        self.resume_token, self.grace_s = extension.get("resume_token"), extension.get("resume_grace_s", 0.0)
        if resume and extension.get("resumed"):
            self.resumes += 1
            self.messages = extension["received"]
        elif resume:
            raise SystemExit("the server could not take the session back (its grace time ran out?)")
        return created

    async def resume(self) -> None:
        """The connection dropped: dial again with the token until the server's grace time is over."""
        if not self.resume_token:
            raise SystemExit("the connection dropped, and the server offers no resume")
        print("the connection dropped; taking the session back", file=sys.stderr)
        deadline, delay = time.perf_counter() + self.grace_s, 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.dial(resume=True)
                return
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):  # still away
                delay = min(RESUME_MAX_S, max(RESUME_FIRST_S, 2 * delay))
                if time.perf_counter() + delay >= deadline:
                    raise SystemExit(
                        "the network stayed down longer than the server keeps a session"
                    ) from None

    async def send(self, message: str | bytes) -> None:
        """Send; while the network is away (a resume under way) the message is lost, like live audio."""
        try:
            await self.ws.send(message)
        except websockets.ConnectionClosed:
            return
        self.sent += len(message.encode() if isinstance(message, str) else message)

    async def messages_in(self):
        """Every message of the session, across drops and resumes."""
        while True:
            try:
                async for message in self.ws:
                    self.messages += 1
                    self.received += len(message)
                    yield message
                return  # closed with a close frame: the session is over
            except websockets.ConnectionClosedError as closed:
                if closed.rcvd is not None:
                    raise  # the server closed it, with a code: not a blip
                await self.resume()


# -- audio ------------------------------------------------------------------------------------------------
def read_wav_as_24k(path: Path) -> np.ndarray:
    """A 16-bit PCM WAV (any rate, mono or stereo) as mono int16 at 24 kHz."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: only 16-bit PCM WAV files are supported")
        channels, rate = wav.getnchannels(), wav.getframerate()
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2").reshape(-1, channels)
    frame = av.AudioFrame.from_ndarray(
        np.ascontiguousarray(pcm.reshape(1, -1)), format="s16", layout="stereo" if channels == 2 else "mono"
    )
    frame.sample_rate = rate
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    out = [f.to_ndarray().reshape(-1) for f in [*resampler.resample(frame), *resampler.resample(None)]]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


class Encoder:
    """Mono int16 at 24 kHz in, 20 ms Opus packets out (one continuous stream for the whole session)."""

    def __init__(self, bitrate: int) -> None:
        self.context = av.codec.CodecContext.create("libopus", "w")
        self.context.sample_rate = RATE
        self.context.layout = "mono"
        self.context.format = "s16"
        self.context.bit_rate = bitrate
        self.context.time_base = Fraction(1, RATE)
        self.context.options = {"frame_duration": "20", "application": "voip"}
        self.context.open()
        self.pts = 0

    def packet(self, samples: np.ndarray) -> bytes:
        """Encode exactly one 20 ms frame."""
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = RATE, self.pts
        self.pts += len(samples)
        return b"".join(bytes(p) for p in self.context.encode(frame))


def decode(packets: list[bytes]) -> np.ndarray:
    """One response's packets to int16 at 48 kHz (a fresh decoder per response, as the server encodes)."""
    decoder = av.codec.CodecContext.create("opus", "r")
    decoder.sample_rate, decoder.layout = DECODE_RATE, "mono"
    decoder.open()
    pieces = [f.to_ndarray().reshape(-1) for p in packets for f in decoder.decode(av.Packet(p))]
    samples = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    return (np.clip(samples, -1, 1) * 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(samples.astype("<i2").tobytes())


# -- the conversation -------------------------------------------------------------------------------------
class Conversation:
    """One connection: a sender that plays the 'microphone', a receiver that files answer frames."""

    def __init__(self, link: Link, bitrate: int) -> None:
        self.link = link
        self.encoder = Encoder(bitrate)
        self.silence = np.zeros(PACKET_SAMPLES, dtype=np.int16)
        self.responses: list[str] = []  # ids in response.created order: frame header byte 0 indexes it
        self.packets: dict[str, list[bytes]] = {}
        self.first_packet_at: dict[str, float] = {}
        self.done: asyncio.Queue[dict] = asyncio.Queue()
        self.clock = time.perf_counter()  # when the next packet is due

    async def send_audio(self, samples: np.ndarray) -> None:
        """Send samples as packets, each no earlier than real time allows (like a microphone)."""
        padded = np.concatenate([samples, np.zeros(-len(samples) % PACKET_SAMPLES, dtype=np.int16)])
        for start in range(0, len(padded), PACKET_SAMPLES):
            await asyncio.sleep(max(0.0, self.clock - time.perf_counter()))
            packet = self.encoder.packet(padded[start : start + PACKET_SAMPLES])
            if packet:  # an encoder may hold a frame back; never send an empty frame
                await self.link.send(packet)
            self.clock = max(self.clock, time.perf_counter() - 0.1) + PACKET_S

    async def silence_until(self, finished: asyncio.Future) -> None:
        """Keep the microphone open (silence) until the answer is over."""
        while not finished.done():
            await self.send_audio(self.silence)

    async def receive(self) -> None:
        async for message in self.link.messages_in():
            if isinstance(message, bytes):
                number, packet = message[0], message[2:]
                owners = [rid for n, rid in enumerate(self.responses) if n % 256 == number]
                if owners:
                    self.packets[owners[-1]].append(packet)
                    self.first_packet_at.setdefault(owners[-1], time.perf_counter())
                continue
            event = json.loads(message)
            if event["type"] == "response.created":
                self.responses.append(event["response"]["id"])
                self.packets[event["response"]["id"]] = []
            elif event["type"] == "response.done":
                await self.done.put(event)
            elif event["type"] == "error":
                print(f"server error: {event['error'].get('message')}", file=sys.stderr)

    async def turn(self, path: Path, out: Path, timeout_s: float) -> Turn:
        samples = read_wav_as_24k(path)
        turn = Turn(question=str(path), question_s=len(samples) / RATE)
        sent, received, resumes = self.link.sent, self.link.received, self.link.resumes
        await self.send_audio(samples)
        question_end = time.perf_counter()
        finished: asyncio.Future = asyncio.get_running_loop().create_future()
        microphone = asyncio.create_task(self.silence_until(finished))
        try:
            done = await asyncio.wait_for(self.done.get(), timeout_s)
        finally:
            finished.set_result(None)
            await microphone
        response = done["response"]
        packets = self.packets.get(response["id"], [])
        audio = decode(packets)
        write_wav(out, audio, DECODE_RATE)
        first = self.first_packet_at.get(response["id"])
        turn.answer_file, turn.status, turn.response_id = str(out), response["status"], response["id"]
        turn.answer_text = "".join(
            part.get("transcript") or "" for item in response.get("output", []) for part in item["content"]
        )
        turn.answer_s = len(audio) / DECODE_RATE
        turn.latency_s = None if first is None else first - question_end
        turn.bytes_sent, turn.bytes_received = self.link.sent - sent, self.link.received - received
        turn.packets_received = len(packets)
        turn.resumes = self.link.resumes - resumes
        return turn


async def converse(args: argparse.Namespace) -> list[Turn]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    link = Link(args.url, headers)
    await link.dial()
    try:
        opus = {"type": "audio/x-opus"}
        update = {"type": "realtime", "audio": {"input": {"format": opus}, "output": {"format": opus}}}
        update["audio"]["output"]["format"] = {**opus, "bitrate": args.bitrate}
        await link.send(json.dumps({"type": "session.update", "session": update}))
        updated = json.loads(await link.ws.recv())
        link.messages += 1
        if updated["type"] != "session.updated":
            raise SystemExit(f"the server did not take Opus: {updated}")
        conversation = Conversation(link, args.bitrate)
        receiver = asyncio.create_task(conversation.receive())
        turns = []
        try:
            for index, path in enumerate(args.wav):
                out = args.out if len(args.wav) == 1 else args.out.with_stem(f"{args.out.stem}-{index + 1}")
                turn = await conversation.turn(path, out, args.timeout)
                turns.append(turn)
                if not args.json:
                    print(describe(turn, index + 1))
        finally:
            receiver.cancel()
        return turns
    finally:
        await link.ws.close()


def describe(turn: Turn, number: int) -> str:
    latency = "no audio" if turn.latency_s is None else f"{turn.latency_s * 1000:.0f} ms"
    return (
        f"turn {number}: {turn.question} ({turn.question_s:.1f} s) -> {turn.status} {turn.answer_text!r}, "
        f"{turn.answer_s:.2f} s of audio in {turn.answer_file}; latency {latency}; "
        f"sent {turn.bytes_sent} B, received {turn.bytes_received} B ({turn.packets_received} packets)"
        + (f"; the connection dropped and was resumed {turn.resumes} time(s)" if turn.resumes else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("wav", type=Path, nargs="+", help="16-bit WAV questions, one turn each, in order")
    parser.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="the server's Realtime URL")
    parser.add_argument("--out", type=Path, default=Path("answer.wav"), help="answer WAV (-N added per turn)")
    parser.add_argument("--api-key", default=None, help="sent as 'Authorization: Bearer KEY'")
    parser.add_argument("--bitrate", type=int, default=24000, help="Opus bits per second, both ways")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    parser.add_argument("--json", action="store_true", help="print the turns as JSON instead")
    args = parser.parse_args()
    began = time.perf_counter()
    turns = asyncio.run(converse(args))
    if args.json:
        print(json.dumps([asdict(turn) for turn in turns], indent=2))
    else:
        elapsed = time.perf_counter() - began
        sent, received = sum(t.bytes_sent for t in turns), sum(t.bytes_received for t in turns)
        print(
            f"{len(turns)} turns in {elapsed:.1f} s: sent {sent} B ({8 * sent / elapsed / 1000:.1f} kbit/s), "
            f"received {received} B ({8 * received / elapsed / 1000:.1f} kbit/s)"
        )


if __name__ == "__main__":
    main()
