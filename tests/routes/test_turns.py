"""`POST /v1/turns`: a WAV question in, a playable WAV answer (or JSON) out; bad uploads get 4xx JSON errors."""

from __future__ import annotations

import base64
import io
import wave
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.routes.conftest import API_KEY, MAX_UPLOAD_SECONDS, pcm16

TIMEOUT = 60.0


def wav_file(samples: np.ndarray, rate: int) -> bytes:
    """Mono 16-bit WAV bytes."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm16(samples))
    return buffer.getvalue()


def read_answer(data: bytes) -> np.ndarray:
    """Parse an answer WAV, checking it is 24 kHz mono 16-bit and not empty; returns float samples."""
    with wave.open(io.BytesIO(data), "rb") as answer:
        assert (answer.getframerate(), answer.getnchannels(), answer.getsampwidth()) == (24000, 1, 2)
        frames = answer.readframes(answer.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    assert len(samples) > 0
    assert float(np.sqrt(np.mean(samples**2))) > 1e-3
    return samples


def post_turn(server: LiveServer, **request: object) -> httpx.Response:
    """POST /v1/turns with httpx."""
    return httpx.post(f"{server.base_url}/v1/turns", timeout=TIMEOUT, **request)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    """A JSON error of the shared shape."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]


@pytest.fixture(scope="module")
def question_bytes(spoken_wav: Path) -> bytes:
    """The spoken question's WAV file as uploaded (22050 Hz, as espeak-ng writes it)."""
    return spoken_wav.read_bytes()


def test_wav_body_gets_a_wav_answer(realtime_server: LiveServer, question_bytes: bytes) -> None:
    """The raw body is a WAV file; the answer is a playable 24 kHz mono pcm16 WAV."""
    response = post_turn(realtime_server, content=question_bytes, headers={"Content-Type": "audio/wav"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-answer-status"] == "completed"
    read_answer(response.content)


def test_multipart_upload_gets_a_wav_answer(realtime_server: LiveServer, question_bytes: bytes) -> None:
    """The WAV as a form file, as `curl -F file=@question.wav` sends it."""
    response = post_turn(realtime_server, files={"file": ("question.wav", question_bytes, "audio/wav")})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    read_answer(response.content)


def test_json_answer_has_text_audio_and_timings(realtime_server: LiveServer, question_bytes: bytes) -> None:
    """Accept: application/json: the text, the WAV as base64, and where the time went."""
    response = post_turn(
        realtime_server,
        content=question_bytes,
        headers={"Content-Type": "audio/wav", "Accept": "application/json"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["text"], str) and body["text"].strip()
    assert body["status"] == "completed"
    assert body["sample_rate"] == 24000
    samples = read_answer(base64.b64decode(body["audio_wav_base64"]))
    timings = body["timings"]
    assert {"listen_s", "answer_s", "total_s", "input_s", "output_s"} <= set(timings)
    assert timings["input_s"] == pytest.approx(1.46, abs=0.3)  # the question's length
    assert timings["output_s"] == pytest.approx(len(samples) / 24000, abs=0.01)
    assert 0 < timings["listen_s"] <= timings["total_s"]


def test_not_audio_is_415(realtime_server: LiveServer) -> None:
    """Bytes that are no WAV file."""
    response = post_turn(realtime_server, content=b"this is not a wav file at all" * 10)
    assert_error(response, 415, "unsupported_audio")


def test_too_long_is_413(realtime_server: LiveServer) -> None:
    """A WAV longer than max_upload_seconds."""
    seconds = MAX_UPLOAD_SECONDS + 1.0
    tone = 0.3 * np.sin(2 * np.pi * 220 * np.arange(int(16000 * seconds)) / 16000)
    response = post_turn(realtime_server, content=wav_file(tone, 16000))
    assert_error(response, 413, "audio_too_long")


@pytest.mark.parametrize(
    ("body", "code"),
    [(b"", "empty_upload"), (wav_file(np.zeros(0), 16000), "empty_audio")],
    ids=["no_body", "no_samples"],
)
def test_empty_is_400(realtime_server: LiveServer, body: bytes, code: str) -> None:
    """No body at all, or a WAV with no samples."""
    assert_error(post_turn(realtime_server, content=body), 400, code)


def test_empty_multipart_is_400(realtime_server: LiveServer) -> None:
    """A form whose file is empty."""
    response = post_turn(realtime_server, files={"file": ("question.wav", b"", "audio/wav")})
    assert_error(response, 400, "empty_upload")


def test_keyed_server_wants_the_key(keyed_server: LiveServer, question_bytes: bytes) -> None:
    """No key: 401 with WWW-Authenticate; a wrong one too; the right bearer token gets the answer."""
    missing = post_turn(keyed_server, content=question_bytes)
    assert_error(missing, 401, "invalid_api_key")
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = post_turn(keyed_server, content=question_bytes, headers={"Authorization": "Bearer nope"})
    assert_error(wrong, 401, "invalid_api_key")
    good = post_turn(keyed_server, content=question_bytes, headers={"Authorization": f"Bearer {API_KEY}"})
    assert good.status_code == 200, good.text
    read_answer(good.content)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_get_405_json(realtime_server: LiveServer, method: str) -> None:
    """Not the page's 404: a JSON 405 that names the method and the one that works."""
    response = httpx.request(method, f"{realtime_server.base_url}/v1/turns", timeout=TIMEOUT)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"
    assert method in response.json()["error"]["message"]
