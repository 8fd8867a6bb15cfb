"""What each wire format costs a session: bytes on the socket per session-second, both ways, and the CPU
that Opus adds. Used by bench_server.py (`--formats N`); see benchmarks/README.md.

Each format runs N real-time client sessions against the same server, one after the other, with the
same questions and the same conversation shape as the rest of bench_server.py (a microphone that
never stops: speech, then silence; server VAD ends each turn; an answer is cut at `--answer-seconds`).
Every byte of every WebSocket message is counted, JSON events included: what a phone's data plan pays
(before TLS and TCP/IP headers). The formats:

- pcm16 JSON: 24 kHz pcm16 in base64 `input_audio_buffer.append` events; answers as base64 deltas.
- pcm16 binary: the same audio as raw binary frames in; answers still base64 deltas (the protocol's).
- G.711 u-law: 8 kHz u-law as raw binary frames in; answers as base64 u-law deltas.
- Opus: our `audio/x-opus`, 20 ms packets in binary frames both ways, at the server's default bitrate.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.sessions.audio_formats import encode_pcm16, encode_ulaw, resample
from app.sessions.opus_codec import DEFAULT_OPUS_BITRATE, OpusInputConverter, OpusPacketEncoder
from app.sessions.session_config import AudioFormat


@dataclass(frozen=True)
class WireFormat:
    """One way for a client to move its audio."""

    name: str
    session_format: dict[str, Any]  # the GA format object, both ways
    binary_in: bool
    rate: int  # the client's microphone rate for this format
    piece_s: float  # audio per message from the microphone
    out_seconds_per_byte: float  # for the answer cap: seconds of audio in one delta byte (0: packets)


FORMATS = [
    WireFormat("pcm16 JSON", {"type": "audio/pcm", "rate": 24000}, False, 24000, 0.1, 1 / 48000),
    WireFormat("pcm16 binary", {"type": "audio/pcm", "rate": 24000}, True, 24000, 0.1, 1 / 48000),
    WireFormat("G.711 u-law", {"type": "audio/pcmu"}, True, 8000, 0.1, 1 / 8000),
    WireFormat("Opus", {"type": "audio/x-opus"}, True, 24000, 0.02, 0.0),
]


@dataclass
class Traffic:
    """One format's run: bytes each way, session-seconds, CPU."""

    name: str
    sessions: int
    session_seconds: float = 0.0
    bytes_in: int = 0  # client -> server
    bytes_out: int = 0  # server -> client
    turns: int = 0
    answered: int = 0
    answer_seconds: float = 0.0  # answer audio received
    wall_s: float = 0.0
    server_cpu: float | None = None  # cores (CPU seconds per wall second) of the server process
    errors: list[str] = field(default_factory=list)

    def kbit_per_session_second(self, direction: str) -> float:
        total = self.bytes_in if direction == "in" else self.bytes_out
        return 8 * total / max(self.session_seconds, 1e-9) / 1000

    def out_kbit_per_answer_second(self) -> float:
        """Server -> client per second of answer received: steadier than per session-second, which
        depends on how long the answers happened to be."""
        return 8 * self.bytes_out / max(self.answer_seconds, 1e-9) / 1000


class Encoder:
    """The client's side of a format: 24 kHz float32 in, messages out."""

    def __init__(self, fmt: WireFormat) -> None:
        self.fmt = fmt
        self.opus = OpusPacketEncoder() if fmt.name == "Opus" else None

    def message(self, samples_24k: np.ndarray) -> str | bytes:
        if self.opus is not None:
            return b"".join(self.opus.encode(samples_24k))
        if self.fmt.rate == 8000:
            data = encode_ulaw(resample(samples_24k, 24000, 8000))
        else:
            data = encode_pcm16(samples_24k)
        if self.fmt.binary_in:
            return data
        return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(data).decode()})


async def format_session(
    url: str,
    headers: dict[str, str],
    fmt: WireFormat,
    questions: list[np.ndarray],
    first: int,
    start_at: float,
    args: Any,
    traffic: Traffic,
) -> None:
    """One client in one format: the microphone streams all the time; each question gets its answer."""
    import websockets

    await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
    async with websockets.connect(url, additional_headers=headers, proxy=None, max_size=None) as ws:
        opened = time.perf_counter()
        json.loads(await ws.recv())  # session.created
        audio = {"input": {"format": fmt.session_format}, "output": {"format": fmt.session_format}}
        text = json.dumps({"type": "session.update", "session": {"type": "realtime", "audio": audio}})
        await ws.send(text)
        traffic.bytes_in += len(text)
        speech: list[np.ndarray] = []
        encoder = Encoder(fmt)
        step = int(24000 * fmt.piece_s)

        async def microphone() -> None:
            sent = 0
            began = time.perf_counter()
            pending = np.zeros(0, dtype=np.float32)
            while True:
                if len(pending) < step and speech:
                    pending = np.concatenate([pending, speech.pop(0)])
                piece = pending[:step]
                pending = pending[step:]
                piece = np.concatenate([piece, np.zeros(step - len(piece), dtype=np.float32)])
                message = encoder.message(piece)
                if message:
                    await ws.send(message)
                    traffic.bytes_in += len(message)
                sent += 1
                await asyncio.sleep(max(0.0, began + sent * fmt.piece_s - time.perf_counter()))

        mic = asyncio.create_task(microphone())
        try:
            for index in range(args.turns):
                traffic.turns += 1
                speech.append(questions[(first + index) % len(questions)])
                if await _answer(ws, fmt, args, traffic):
                    traffic.answered += 1
                await asyncio.sleep(args.pause)
        finally:
            mic.cancel()
            await asyncio.gather(mic, return_exceptions=True)
            traffic.session_seconds += time.perf_counter() - opened


async def _answer(ws: Any, fmt: WireFormat, args: Any, traffic: Traffic) -> bool:
    """Read until the turn's response is done, cancelling it after `--answer-seconds` of audio."""
    deadline = time.perf_counter() + args.turn_timeout + 10
    audio_s = 0.0
    capped = False
    while time.perf_counter() < deadline:
        try:
            raw = await asyncio.wait_for(ws.recv(), deadline - time.perf_counter())
        except TimeoutError:
            break
        traffic.bytes_out += len(raw.encode() if isinstance(raw, str) else raw)
        if isinstance(raw, bytes):
            audio_s += 0.020  # one Opus packet
            traffic.answer_seconds += 0.020
        else:
            event = json.loads(raw)
            kind = event["type"]
            if kind == "response.output_audio.delta":
                seconds = len(base64.b64decode(event["delta"])) * fmt.out_seconds_per_byte
                audio_s += seconds
                traffic.answer_seconds += seconds
            elif kind == "response.done":
                return event["response"]["status"] in ("completed", "cancelled")
            elif kind == "error" and event["error"]["code"] != "response_cancel_not_active":
                traffic.errors.append(event["error"]["code"])
        if not capped and audio_s >= args.answer_seconds:
            capped = True
            text = json.dumps({"type": "response.cancel"})
            await ws.send(text)
            traffic.bytes_in += len(text)
    return False


async def run_format(
    url: str, headers: dict[str, str], fmt: WireFormat, questions: list[np.ndarray], count: int, args: Any
) -> Traffic:
    traffic = Traffic(fmt.name, count)
    begin = time.perf_counter() + 0.3
    tasks = [
        format_session(url, headers, fmt, questions, 3 * i, begin + i * args.stagger / count, args, traffic)
        for i in range(count)
    ]
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, BaseException):
            traffic.errors.append(f"{type(result).__name__}: {result}"[:120])
    traffic.wall_s = time.perf_counter() - begin
    return traffic


# -- the codec alone ------------------------------------------------------------------------------------------
def opus_codec_cost(speech_24k: np.ndarray, repeats: int = 5) -> dict[str, float]:
    """CPU milliseconds per audio second of the server's Opus work for one session: encoding answers
    (24 kHz, 20 ms packets) and decoding + resampling the microphone (to 16 kHz); and the bits per
    second libopus spends on speech, on a -60 dBFS noise floor and on digital silence."""
    bitrate = DEFAULT_OPUS_BITRATE
    seconds = len(speech_24k) / 24000
    encode_s = decode_s = 0.0
    packets: list[bytes] = []
    for _ in range(repeats):
        encoder = OpusPacketEncoder(bitrate)
        began = time.process_time()
        packets = [
            p
            for start in range(0, len(speech_24k), 2400)
            for p in encoder.encode(speech_24k[start : start + 2400])
        ]
        packets += encoder.flush()
        encode_s += time.process_time() - began
        decoder = OpusInputConverter(AudioFormat(type="audio/x-opus").wire, 16000)
        began = time.process_time()
        for packet in packets:
            decoder.push(packet)
        decode_s += time.process_time() - began
    rng = np.random.default_rng(0)
    floor = (rng.standard_normal(len(speech_24k)) * 10 ** (-60 / 20)).astype(np.float32)

    def kbit(samples: np.ndarray) -> float:
        encoder = OpusPacketEncoder(bitrate)
        size = sum(map(len, encoder.encode(samples) + encoder.flush()))
        return 8 * size / (len(samples) / 24000) / 1000

    return {
        "encode_ms_per_s": 1000 * encode_s / repeats / seconds,
        "decode_ms_per_s": 1000 * decode_s / repeats / seconds,
        "speech_kbit_s": kbit(speech_24k),
        "noise_floor_kbit_s": kbit(floor),
        "silence_kbit_s": kbit(np.zeros_like(speech_24k)),
    }


def print_formats(results: list[Traffic], codec: dict[str, float], count: int) -> None:
    """The table: kbit/s per session each way, against pcm16 JSON; then what Opus costs in CPU."""
    base = next((r for r in results if r.name == "pcm16 JSON"), None)
    base_total = (base.kbit_per_session_second("in") + base.kbit_per_session_second("out")) if base else None
    print(
        f"\nwire formats, N={count} sessions each (bytes of every WebSocket message, JSON events included):"
    )
    print("  kbit/s per session-second: in, out, total; out per second of answer audio; server CPU in cores")
    print("  format           in     out   total  vs pcm16 JSON  out/answer-s  answered  server CPU")
    for r in results:
        total = r.kbit_per_session_second("in") + r.kbit_per_session_second("out")
        ratio = f"{base_total / total:.1f}x less" if base_total and r is not base else "-"
        cpu = "-" if r.server_cpu is None else f"{r.server_cpu:.2f}"
        print(
            f"  {r.name:<13} {r.kbit_per_session_second('in'):>6.1f} {r.kbit_per_session_second('out'):>7.1f} "
            f"{total:>7.1f}  {ratio:>13}  {r.out_kbit_per_answer_second():>12.1f}  {r.answered:>4}/{r.turns:<4}"
            f"  {cpu:>10}" + (f"  errors: {sorted(set(r.errors))}" if r.errors else "")
        )
    print(
        f"Opus codec alone, one session: encoding answers {codec['encode_ms_per_s']:.1f} ms CPU per audio "
        f"second, decoding + resampling the microphone {codec['decode_ms_per_s']:.1f} ms; libopus at 24 kbit/s "
        f"spends {codec['speech_kbit_s']:.1f} kbit/s on speech, {codec['noise_floor_kbit_s']:.1f} on a -60 dBFS "
        f"noise floor, {codec['silence_kbit_s']:.1f} on digital silence"
    )
    opus = next((r for r in results if r.name == "Opus"), None)
    pcm = next((r for r in results if r.name == "pcm16 binary"), None)
    if opus and pcm and opus.server_cpu is not None and pcm.server_cpu is not None:
        per_session = (opus.server_cpu - pcm.server_cpu) / count
        print(
            f"Opus in the server at N={count}: {opus.server_cpu:.2f} cores against {pcm.server_cpu:.2f} for pcm16 "
            f"binary: {1000 * per_session:+.0f} ms CPU per session-second (noisy on a shared machine; the codec "
            f"alone, above, is the steadier figure)"
        )
