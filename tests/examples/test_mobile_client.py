"""examples/mobile_client.py, run as its users run it, against a live server on the tiny model.

Two spoken questions on one connection: each is answered, the answers are saved as WAVs as long as
the packets received, and the per-turn figures (latency, bytes) are printed and plausible.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import LiveServer
from tests.network_blip import BlipProxy
from tests.routes.conftest import SHORT_ANSWER_TOKENS, forced_state
from tests.routes.resume_client import record_made_audio

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BITRATE = 16000


def test_the_mobile_client_talks_opus_and_reports_each_turn(
    start_server: Callable[..., LiveServer], spoken_wav: Path, tmp_path: Path
) -> None:
    server = start_server(max_answer_tokens=SHORT_ANSWER_TOKENS, top_k=1)
    command = [
        sys.executable,
        str(ROOT / "examples" / "mobile_client.py"),
        str(spoken_wav),
        str(spoken_wav),
        "--url",
        server.ws_url,
        "--out",
        str(tmp_path / "answer.wav"),
        "--bitrate",
        str(BITRATE),
        "--json",
    ]
    with forced_state(server, "listen"):  # turns end by the VAD's silence fallback
        result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    server.stop()
    assert result.returncode == 0, result.stderr
    turns = json.loads(result.stdout)
    assert len(turns) == 2
    with wave.open(str(spoken_wav)) as question:
        question_s = question.getnframes() / question.getframerate()
    for number, turn in enumerate(turns, start=1):
        assert turn["status"] == "completed", turn
        assert turn["answer_text"], turn
        assert Path(turn["answer_file"]).name == f"answer-{number}.wav"
        with wave.open(turn["answer_file"]) as answer:
            answer_s = answer.getnframes() / answer.getframerate()
        assert answer_s == pytest.approx(turn["packets_received"] * 0.020) and answer_s > 0.1
        assert 0 < turn["latency_s"] < 10
        assert abs(turn["question_s"] - question_s) < 0.01
        # The client sent the question and then silence at BITRATE (Opus spends far less on silence);
        # what it received is the answer's packets plus the JSON events.
        speech_bytes = question_s * BITRATE / 8
        assert 0.5 * speech_bytes < turn["bytes_sent"] < 3 * speech_bytes + 10_000, turn
        assert turn["bytes_received"] > turn["packets_received"] * 3, turn
    assert "server error" not in result.stderr


def test_the_mobile_client_takes_its_session_back_after_a_network_blip(
    start_server: Callable[..., LiveServer], spoken_wav: Path, tmp_path: Path, monkeypatch
) -> None:
    """The network drops mid-answer (an RST, no close frame) and stays away for half a second: the client
    resumes its session, its answer arrives whole (as long as the audio the engine made, no gap, nothing
    twice), and its next turn is answered on the same session."""
    made = record_made_audio(monkeypatch)
    server = start_server(max_answer_tokens=SHORT_ANSWER_TOKENS, top_k=1)
    with BlipProxy(server.settings.port) as proxy, forced_state(server, "listen"):
        url = server.ws_url.replace(f":{server.settings.port}/", f":{proxy.port}/")
        command = [
            sys.executable,
            str(ROOT / "examples" / "mobile_client.py"),
            str(spoken_wav),
            str(spoken_wav),
        ]
        command += ["--url", url, "--out", str(tmp_path / "answer.wav"), "--json"]
        client = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
        )
        deadline = time.monotonic() + 60
        while not any(sum(len(p) for p in pieces) >= 0.6 * 24000 for pieces in made.pieces.values()):
            assert time.monotonic() < deadline and client.poll() is None, "no answer began"
            time.sleep(0.02)
        assert proxy.blip(down_s=0.5) == 1
        stdout, stderr = client.communicate(timeout=120)
    assert client.returncode == 0, stderr
    turns = json.loads(stdout)
    assert [turn["status"] for turn in turns] == ["completed", "completed"], turns
    assert [turn["resumes"] for turn in turns] == [1, 0], turns
    assert proxy.refused >= 1  # it dialled while the network was away, and again
    assert server.state.metrics.sessions_resumed == 1
    first = turns[0]
    made_s = sum(len(p) for p in made.pieces[first["response_id"]]) / 24000
    assert abs(first["answer_s"] - made_s) <= 0.04, (first["answer_s"], made_s)  # 20 ms packets
    assert "dropped" in stderr
