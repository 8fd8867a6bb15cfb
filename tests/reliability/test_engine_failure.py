"""A process whose engine loop dies says so: `/readyz` 503, each client an `error` and close 1011, and a
non-zero exit so an orchestrator restarts it. A real `freeze-omni serve` subprocess on the tiny model,
with the fault injected through the test-only hook `FREEZE_OMNI_TEST_FAIL_ENGINE_AFTER_STEPS`."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import websockets

from app.engine.fault_injection import FAIL_AFTER_STEPS_ENV
from tests.conftest import free_port, freeze_omni_command
from tests.routes.conftest import RealtimeClient, realtime_client, run, send_text_turn

ROOT = Path(__file__).resolve().parents[2]
FAIL_AFTER_STEPS = 15
FAILED_EXIT_DELAY_S = 5.0  # generous: a loaded machine must still reach the server within it


class ReadinessLog:
    """Polls /readyz every 10 ms in a thread; keeps each distinct answer (status code, body status)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[tuple[int, str]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self._stop.is_set():
                self._record(client)
                time.sleep(0.01)

    def ask(self) -> None:
        """One more look, from the caller's thread."""
        with httpx.Client(timeout=2) as client:
            self._record(client)

    def _record(self, client: httpx.Client) -> None:
        try:
            response = client.get(self.url)
            answer = (response.status_code, response.json().get("status", ""))
        except (httpx.HTTPError, ValueError):
            answer = (0, "unreachable")
        with self._lock:
            if not self.seen or self.seen[-1] != answer:
                self.seen.append(answer)

    def __enter__(self) -> ReadinessLog:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.seen and time.monotonic() < deadline:  # the first answer, before the test acts
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def test_dead_engine_loop_fails_readiness_closes_1011_and_exits_nonzero(
    tiny_model_dir, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        FAIL_AFTER_STEPS_ENV: str(FAIL_AFTER_STEPS),
        "FREEZE_OMNI_FAILED_EXIT_DELAY_S": str(FAILED_EXIT_DELAY_S),
    }
    env.pop("FREEZE_OMNI_API_KEYS", None)
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file:
        process = subprocess.Popen(
            [
                freeze_omni_command(),
                "serve",
                "--port",
                str(port),
                "--model-path",
                str(tiny_model_dir.model_path),
                "--llm-path",
                str(tiny_model_dir.llm_path),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert process.poll() is None, log_path.read_text()
                time.sleep(0.1)
            else:
                pytest.fail(f"the server did not become ready:\n{log_path.read_text()}")

            async def session() -> tuple[dict, int, dict, int]:
                async with realtime_client(f"ws://127.0.0.1:{port}/v1/realtime") as client:
                    await send_text_turn(client, "Hello.")
                    error = await client.wait_for("error", timeout=60)
                    closed = await client.wait_closed(timeout=30)
                # Within the exit delay the server still listens: it says why, to a probe and to a client.
                readiness.ask()
                async with websockets.connect(f"ws://127.0.0.1:{port}/v1/realtime", proxy=None) as ws:
                    late = RealtimeClient(ws)
                    late_error = await late.wait_for("error", timeout=10)
                    late_closed = await late.wait_closed(timeout=10)
                return error, closed.rcvd.code, late_error, late_closed.rcvd.code

            with ReadinessLog(f"{base}/readyz") as readiness:
                error, close_code, late_error, late_close_code = run(session())
                exit_code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    output = log_path.read_text()
    assert error["error"]["type"] == "server_error"
    assert error["error"]["code"] == "engine_failed"
    assert close_code == 1011
    assert (503, "failed") in readiness.seen, readiness.seen
    assert readiness.seen[0] == (200, "ready")
    assert late_error["error"]["code"] == "server_not_ready", late_error
    assert "restarting" in late_error["error"]["message"]
    assert late_close_code == 1013
    assert exit_code != 0, output
    assert "InjectedEngineFault" in output and "exiting: the server cannot serve" in output
