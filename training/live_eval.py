"""Issue 19's live figure: held-out questions asked over a real `/v1/realtime` WebSocket.

A real server (uvicorn on a loopback port, the default turn detection: server VAD with the state
head) runs the model; for each question a client opens its own connection and streams, at real-time
pace in 100 ms `input_audio_buffer.append`s of 24 kHz pcm16, a noise floor (never digital silence),
the question over that floor, and then the floor again until `response.done` arrives. The answer is
judged by exact text (the response's transcript). Questions cover every group of the domain
(greetings, arithmetic, colors, days, facts), in held-out voices, speeds and pitches, with seeds no
other measurement uses.

Usage: python -m training.live_eval [--model models/trained] [--count 25] [--out training/runs/live.json]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import socket
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

from app.model.fixtures.tiny import TinyPaths
from app.model.wav import resample
from training import domain
from training.common import MODEL_DIR, RUNS_DIR, setup_logging
from training.heldout_eval import voice_for
from training.synth import espeak, noise, place

log = logging.getLogger("live")

WIRE_RATE = 24000
APPEND_MS = 100
SEED = 290_000
LEAD_S, TRAIL_S = 0.8, 1.0  # floor before and after the question, then floor until the answer is done


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """The project's server in a thread of this process, as `serve` runs it."""

    def __init__(self, model: Path) -> None:
        from app.config import Settings
        from app.serving import GracefulServer, uvicorn_config

        paths = TinyPaths(model)
        self.settings = Settings(
            model_path=paths.model_path,
            llm_path=paths.llm_path,
            port=free_port(),
            seed=0,
            log_level="warning",
            admission_max_load=0.0,  # this measures answers, not the shared machine's load
        )
        self.server = GracefulServer(uvicorn_config(self.settings))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        base = f"http://127.0.0.1:{self.settings.port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                    if response.status == 200:
                        return f"ws://127.0.0.1:{self.settings.port}/v1/realtime"
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the server did not become ready in 120 s")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def question_wire(index: int, pair_index: int, floor_dbfs: float) -> tuple[bytes, bytes, float]:
    """(the question over the floor, one second more of floor, the question's end in seconds) as 24 kHz pcm16."""
    rng = np.random.default_rng(SEED + index)
    voice, speed, pitch = voice_for(700 + index)
    sound = espeak(domain.PAIRS[pair_index].question, voice, speed, pitch)
    placed = place(sound, rng, lead_s=LEAD_S, trail_s=TRAIL_S, snr_db=None)
    floor = 10 ** (floor_dbfs / 20)
    kind = ("white", "pink", "brown")[index % 3]
    samples = placed.samples + floor * noise(kind, len(placed.samples), rng)
    more = floor * noise(kind, 16000, rng)

    def pcm(x: np.ndarray) -> bytes:
        return (
            (np.clip(resample(x.astype(np.float32), 16000, WIRE_RATE), -1, 1) * 32767).astype("<i2").tobytes()
        )

    return pcm(samples), pcm(more), placed.end / 16000


async def ask(url: str, wire: bytes, floor: bytes, speech_end_s: float, timeout: float = 30.0) -> dict:
    """Stream the question and then the floor at real-time pace until `response.done`."""
    from websockets.asyncio.client import connect

    step = 2 * WIRE_RATE * APPEND_MS // 1000
    async with connect(url, max_size=None) as ws:
        started = time.perf_counter()
        done = asyncio.Event()

        async def send() -> None:
            sent = 0
            chunks = [wire[i : i + step] for i in range(0, len(wire), step)]
            floor_chunks = [floor[i : i + step] for i in range(0, len(floor) - step + 1, step)]
            while not done.is_set():
                piece = chunks[sent] if sent < len(chunks) else floor_chunks[sent % len(floor_chunks)]
                await ws.send(
                    json.dumps(
                        {"type": "input_audio_buffer.append", "audio": base64.b64encode(piece).decode()}
                    )
                )
                sent += 1
                due = started + sent * APPEND_MS / 1000
                await asyncio.sleep(max(0.0, due - time.perf_counter()))

        sender = asyncio.create_task(send())
        events: list[tuple[float, dict]] = []
        try:
            while True:
                left = started + len(wire) / (2 * WIRE_RATE) + timeout - time.perf_counter()
                event = json.loads(await asyncio.wait_for(ws.recv(), max(left, 0.01)))
                events.append((time.perf_counter() - started, event))
                if event["type"] == "response.done":
                    break
        except TimeoutError:
            pass
        finally:
            done.set()
            sender.cancel()
    final = next((e for _, e in reversed(events) if e["type"] == "response.done"), None)
    text = ""
    if final is not None:
        text = "".join(
            part.get("transcript") or ""
            for item in final["response"]["output"]
            for part in item.get("content", [])
        )
    first_audio = next((t for t, e in events if e["type"] == "response.output_audio.delta"), None)
    return {
        "text": text,
        "status": final["response"]["status"] if final else "no response",
        "responses": sum(e["type"] == "response.created" for _, e in events),
        "first_audio_after_end_s": None if first_audio is None else round(first_audio - speech_end_s, 3),
    }


async def run(url: str, count: int, floor_dbfs: float) -> list[dict]:
    picks = [i * len(domain.PAIRS) // count for i in range(count)]  # spread over every group
    out = []
    for index, pair_index in enumerate(picks):
        wire, floor, end_s = question_wire(index, pair_index, floor_dbfs)
        result = await ask(url, wire, floor, end_s)
        answer = domain.PAIRS[pair_index].answer
        result.update(
            question=domain.PAIRS[pair_index].question, expected=answer, exact=result["text"] == answer
        )
        log.info("%s -> %r%s", result["question"], result["text"], "" if result["exact"] else "  (WRONG)")
        out.append(result)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--count", type=int, default=25, help="questions (spread over the whole domain)")
    parser.add_argument("--floor-dbfs", type=float, default=-58.0, help="level of the noise floor")
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "live.json")
    args = parser.parse_args()
    setup_logging()
    began = time.perf_counter()
    with Server(args.model) as url:
        results = asyncio.run(run(url, args.count, args.floor_dbfs))
    figures = {
        "model": str(args.model),
        "count": len(results),
        "exact": sum(r["exact"] for r in results),
        "more_than_one_response": sum(r["responses"] > 1 for r in results),
        "seconds": round(time.perf_counter() - began, 1),
        "turns": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2))
    log.info("exact %d/%d over /v1/realtime", figures["exact"], figures["count"])


if __name__ == "__main__":
    main()
