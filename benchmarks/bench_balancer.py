"""What nginx in front of several processes costs and does: the shipped deploy/nginx config, Debian's nginx,
two `freeze-omni serve` processes on the tiny model, all on loopback.

    python benchmarks/bench_balancer.py
    python benchmarks/bench_balancer.py --round-trips 20000 --keys 400 --drain-sessions 16

Side by side in one run:
- one Realtime event's round trip (`input_audio_buffer.clear` -> `input_audio_buffer.cleared`, the
  cheapest event the server answers) straight to a process and through nginx, on one connection, and
  the CPU time nginx's worker spends per round trip;
- a session's set-up (connect -> `session.created`) straight and through nginx;
- how `--keys` random session keys spread over the two processes (consistent hashing);
- a drain: SIGTERM to one process holding `--drain-sessions` sessions: time until each client has its
  reconnect hint and 1001, until the process exits, and until every client is back on the other process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.model import make_tiny  # noqa: E402
from tests.deploy.fleet import Fleet, start_fleet, stop_fleet  # noqa: E402

CLOSE_TRY_AGAIN = 1013


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def nginx_worker(fleet: Fleet) -> int:
    """The pid of nginx's one worker process (the child of its master)."""
    master = fleet.nginx.process.pid
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if parent == master:
            return int(stat.parent.name)
    raise RuntimeError("nginx has no worker process")


async def connect(url: str) -> tuple[websockets.ClientConnection, dict]:
    ws = await websockets.connect(url, proxy=None, max_size=None)
    return ws, json.loads(await ws.recv())


async def round_trips(url: str, count: int) -> list[float]:
    ws, _ = await connect(url)
    times = []
    message = json.dumps({"type": "input_audio_buffer.clear"})
    for _ in range(count):
        started = time.perf_counter()
        await ws.send(message)
        while json.loads(await ws.recv())["type"] != "input_audio_buffer.cleared":
            pass
        times.append(time.perf_counter() - started)
    await ws.close()
    return times


async def set_ups(urls: list[str], count: int) -> list[list[float]]:
    """Session set-up times per URL, the URLs taking turns so that both see the same conditions."""
    times: list[list[float]] = [[] for _ in urls]
    for _ in range(count):
        for url, kept in zip(urls, times, strict=True):
            started = time.perf_counter()
            ws, created = await connect(f"{url}?session=setup-{secrets.token_hex(6)}")
            assert created["type"] == "session.created", created
            kept.append(time.perf_counter() - started)
            await ws.close()
    return times


async def spread(url: str, keys: int) -> Counter:
    served: Counter = Counter()
    for _ in range(keys):
        ws, created = await connect(f"{url}?session={secrets.token_hex(8)}")
        served[created["freeze_omni"]["instance_id"]] += 1
        await ws.close()
    return served


async def reconnect(url: str, key: str, refusals: Counter) -> str:
    """Reconnect with `key`, retrying a 1013 (a draining process) after 0.25 s, 0.5 s, ...; the process."""
    delay = 0.25
    for _ in range(8):
        ws, first = await connect(f"{url}?session={key}")
        if first["type"] == "session.created":
            await ws.close()
            return first["freeze_omni"]["instance_id"]
        refusals[first["error"]["code"]] += 1
        with_code = None
        try:
            await ws.recv()
        except websockets.ConnectionClosed as closed:
            with_code = closed.rcvd.code if closed.rcvd else None
        if with_code != CLOSE_TRY_AGAIN:
            raise RuntimeError(f"refused: {first} ({with_code})")
        await asyncio.sleep(delay)
        delay *= 2
    raise RuntimeError("no live process took the session")


async def drain(fleet: Fleet, sessions: int) -> dict[str, float]:
    url = fleet.nginx.ws_url
    leaving = fleet.engines["engine-a"]
    held = []
    key = 0
    while len(held) < sessions:  # keys that hash to engine-a
        ws, created = await connect(f"{url}?session=drain-{key}")
        if created["freeze_omni"]["instance_id"] == leaving.instance_id:
            held.append((f"drain-{key}", ws))
        else:
            await ws.close()
        key += 1

    async def goodbye(ws: websockets.ClientConnection) -> float:
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1001, closed
        return time.perf_counter()

    started = time.perf_counter()
    leaving.signal(signal.SIGTERM)
    closes = await asyncio.gather(*(goodbye(ws) for _, ws in held))
    refusals: Counter = Counter()
    landed = await asyncio.gather(*(reconnect(url, k, refusals) for k, _ in held))
    back = time.perf_counter()
    await asyncio.to_thread(leaving.wait, 60)
    exited = time.perf_counter()
    assert set(landed) == {"engine-b"}, landed
    return {
        "last goodbye (1001)": max(closes) - started,
        "all back on the live process": back - started,
        "process exited": exited - started,
        "reconnects refused with 1013": float(sum(refusals.values())),
    }


async def measure(fleet: Fleet, args: argparse.Namespace) -> None:
    direct = fleet.engines["engine-b"].base_url.replace("http://", "ws://") + "/v1/realtime"
    through = fleet.nginx.ws_url + "?session=bench"
    await round_trips(through, 50)  # warm both paths
    await round_trips(direct, 50)
    rtt_direct = await round_trips(direct, args.round_trips)
    worker = nginx_worker(fleet)
    cpu_before = cpu_seconds(worker)
    rtt_nginx = await round_trips(through, args.round_trips)
    nginx_cpu_ms = (cpu_seconds(worker) - cpu_before) / args.round_trips * 1000
    setup_direct, setup_nginx = await set_ups([direct, fleet.nginx.ws_url], args.set_ups)

    print(f"\n{'':34}{'direct':>10}{'nginx':>10}{'added':>10}")
    for name, a, b in [
        ("event round trip p50 (ms)", rtt_direct, rtt_nginx),
        ("event round trip p95 (ms)", rtt_direct, rtt_nginx),
        ("session set-up p50 (ms)", setup_direct, setup_nginx),
    ]:
        q = 0.95 if "p95" in name else 0.5
        da, db = percentile(a, q) * 1000, percentile(b, q) * 1000
        print(f"{name:34}{da:10.3f}{db:10.3f}{db - da:10.3f}")
    print(f"{'nginx worker CPU per round trip':34}{'':10}{nginx_cpu_ms:10.3f} ms")

    served = await spread(fleet.nginx.ws_url, args.keys)
    shares = ", ".join(f"{name} {count} ({count / args.keys:.0%})" for name, count in sorted(served.items()))
    print(f"\n{args.keys} random session keys: {shares}")

    timings = await drain(fleet, args.drain_sessions)
    print(f"\ndrain of {args.drain_sessions} idle sessions (SIGTERM to engine-a):")
    for name, value in timings.items():
        print(f"  {name:32}{value:8.0f}" if "refused" in name else f"  {name:32}{value:8.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--round-trips", type=int, default=5000, help="events per path (default 5000)")
    parser.add_argument("--set-ups", type=int, default=50, help="sessions opened per path (default 50)")
    parser.add_argument("--keys", type=int, default=200, help="random keys for the spread (default 200)")
    parser.add_argument("--drain-sessions", type=int, default=12, help="sessions drained (default 12)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-balancer-"))
    started = time.perf_counter()
    fleet = start_fleet(make_tiny(folder / "tiny"), folder)
    print(f"two engine processes and nginx ready in {time.perf_counter() - started:.1f} s")
    try:
        asyncio.run(measure(fleet, args))
    finally:
        stop_fleet(fleet)


if __name__ == "__main__":
    main()
