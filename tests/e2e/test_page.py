"""The browser page, driven in headless Chromium against a live server on the tiny model.

Chromium's fake microphone loops a WAV: the spoken question, then silence, so the server's VAD
hears a turn end and answers. The page records what happened in `window.__*` globals (state
transitions, audio deltas, first-audio latencies, barge-in stop latency), which the tests read.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.browser import FAKE_MIC_RATE, chromium_with_mic, wait_connected

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SILENCE_AFTER_QUESTION_S = 2.5
BARGE_IN_STOP_LIMIT_MS = 200

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fake_mic_wav(spoken_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The question then silence, as a 16-bit 48 kHz WAV for `--use-file-for-fake-audio-capture`."""
    from app.model.wav import read_wav, resample, write_wav

    samples, rate = read_wav(spoken_wav)
    speech = resample(samples, rate, FAKE_MIC_RATE)
    silence = np.zeros(int(SILENCE_AFTER_QUESTION_S * FAKE_MIC_RATE), dtype=np.float32)
    path = tmp_path_factory.mktemp("fake_mic") / "question_then_silence.wav"
    write_wav(path, np.concatenate([speech, silence]), FAKE_MIC_RATE)
    return path


@pytest.fixture(scope="module")
def browser(fake_mic_wav: Path):
    """Debian's Chromium, headless, with a fake microphone that speaks `fake_mic_wav` in a loop."""
    with chromium_with_mic(fake_mic_wav) as browser:
        yield browser


@pytest.fixture
def page(browser):
    """A fresh page; fails the test on any uncaught JavaScript error."""
    context = browser.new_context(viewport={"width": 900, "height": 820})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def screenshot(page, name: str) -> Path:
    """Save a screenshot under tests/e2e/artifacts/ (a folder git ignores)."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / ".gitignore").write_text("*\n")  # keep the artifacts out of git
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def states(page) -> list[str]:
    return page.evaluate("window.__stateLog.map(entry => entry.state)")


def went_through(log: list[str], sequence: list[str]) -> bool:
    """Whether `sequence` occurs in `log` in order (other states may come between)."""
    remaining = iter(log)
    return all(state in remaining for state in sequence)


@contextmanager
def forced_answer(server) -> Iterator[None]:
    """Make the state head say "answer" at once (bias only), so speech over an answer barges in."""
    import torch

    bias = server.state.pool.engines[0].model.audio.predictor_head.bias
    saved = bias.detach().clone()
    with torch.no_grad():
        bias.zero_()
        bias[1] = 50.0
    try:
        yield
    finally:
        with torch.no_grad():
            bias.copy_(saved)


def test_spoken_turn_goes_listening_thinking_speaking(start_server, page) -> None:
    server = start_server()
    page.goto(server.base_url + "/")
    page.click("#connect")
    wait_connected(page)

    # The fake microphone asks its question; the VAD ends the turn; the answer plays.
    page.wait_for_function(
        "window.__stateLog.map(e => e.state).join(' ').match(/listening.*thinking.*speaking/)",
        timeout=40_000,
    )
    page.wait_for_function(
        "[...document.querySelectorAll('.assistant .text')].some(e => e.textContent.trim().length > 3)"
    )
    page.wait_for_function("window.__firstAudioLatenciesMs.length > 0")

    log = states(page)
    assert went_through(log, ["idle", "listening", "thinking", "speaking"]), log
    audio = page.evaluate("window.__audio")
    assert audio["deltas"] > 0 and audio["secondsScheduled"] > 0, audio
    assert page.locator(".user.spoken").count() >= 1
    assert "first audio" in page.inner_text("#log")
    latency_ms = page.evaluate("window.__firstAudioLatenciesMs[0]")
    assert 0 < latency_ms < 10_000, latency_ms

    # The capture worklet resamples to the declared 24 kHz: one second of wall time is one
    # second of audio sent (a wrong rate would make the server hear it faster or slower).
    sent_before, began = page.evaluate("window.__audio.secondsSent"), time.monotonic()
    time.sleep(2.0)
    sent_rate = (page.evaluate("window.__audio.secondsSent") - sent_before) / (time.monotonic() - began)
    assert 0.8 < sent_rate < 1.2, f"{sent_rate:.2f} s of audio sent per second"
    path = screenshot(page, "conversation.png")
    print(f"\nscreenshot: {path}; states: {log}; first audio {latency_ms:.0f} ms; audio {audio}")
    print(f"microphone: {sent_rate:.3f} s of audio sent per second")


def test_barge_in_stops_playback_within_200_ms(start_server, page) -> None:
    server = start_server(max_answer_tokens=3000)  # an answer long enough to talk over
    page.goto(server.base_url + "/")
    page.uncheck("#mic")  # quiet while the typed question gets its answer
    page.click("#connect")
    wait_connected(page)
    page.fill("#text", "Tell me a long story.")
    page.press("#text", "Enter")
    page.wait_for_function("window.__stateLog.some(e => e.state === 'speaking')", timeout=30_000)
    time.sleep(0.5)  # well into the answer

    with forced_answer(server):
        page.check("#mic")  # the fake microphone speaks over the answer: the server cancels it
        page.wait_for_function("window.__lastStopLatencyMs !== null", timeout=30_000)

    stop = page.evaluate("window.__lastStop")
    latency_ms = page.evaluate("window.__lastStopLatencyMs")
    call_ms = page.evaluate("window.__lastStopCallMs")
    assert stop["sources"] > 0, "the cancel came when nothing was scheduled: the test proves nothing"
    assert stop["wasSounding"], "the answer was not audible when the cancel came"
    assert latency_ms < BARGE_IN_STOP_LIMIT_MS, f"playback went silent {latency_ms:.1f} ms after the cancel"
    assert "interrupted" in page.inner_text("#log")
    screenshot(page, "barge-in.png")
    print(f"\nbarge-in: stop() {call_ms:.1f} ms, silent {latency_ms:.1f} ms after response.done")


def test_page_asks_for_the_api_key_the_server_requires(start_server, page) -> None:
    server = start_server(api_keys=["right-key"])
    page.goto(server.base_url + "/")
    assert page.is_hidden("#key-form")
    page.click("#connect")
    page.wait_for_selector("#key-form", state="visible")
    assert "API key" in page.inner_text("#notice")

    page.fill("#api-key", "wrong-key")  # refused at the handshake (HTTP 401)
    page.click("#key-form button")
    page.wait_for_function("document.querySelector('#notice').textContent.includes('refused')")
    assert page.is_visible("#key-form")
    screenshot(page, "api-key.png")

    page.fill("#api-key", "right-key")
    page.click("#key-form button")
    wait_connected(page)
    assert page.is_hidden("#key-form")

    server.stop()  # the server says goodbye with 1001
    page.wait_for_function("document.querySelector('#notice').textContent.includes('shutting down')")


def test_typed_key_then_connect_button_connects(start_server, page) -> None:
    """A user who types the key into the visible box and presses Connect (not "Use key") gets in."""
    server = start_server(api_keys=["right-key"])
    page.goto(server.base_url + "/")
    page.click("#connect")
    page.wait_for_selector("#key-form", state="visible")

    page.fill("#api-key", "right-key")
    page.click("#connect")
    wait_connected(page)
    assert page.is_hidden("#key-form")
    assert "needs an API key" not in page.inner_text("#notice")


def test_busy_server_retries_until_a_place_frees_up(start_server, page) -> None:
    from websockets.sync.client import connect

    server = start_server(max_sessions=1)
    with connect(server.ws_url) as holder:  # takes the only place
        holder.recv()  # session.created
        page.goto(server.base_url + "/")
        page.click("#connect")
        page.wait_for_function("document.querySelector('#notice').textContent.includes('retrying')")
        assert "busy" in page.inner_text("#notice").lower()
    wait_connected(page, timeout_ms=30_000)


@pytest.mark.parametrize(
    ("settings", "microphone", "expected"),
    [
        ({"idle_timeout_s": 1.0}, False, "idle timeout"),  # error idle_timeout, then close 1000
        ({"max_message_bytes": 1024}, True, "too large"),  # the first append is over: close 1009
    ],
    ids=["idle-1000", "too-big-1009"],
)
def test_closes_are_explained(start_server, page, settings: dict, microphone: bool, expected: str) -> None:
    server = start_server(**settings)
    page.goto(server.base_url + "/")
    page.set_checked("#mic", microphone)
    page.click("#connect")
    page.wait_for_function(
        f"document.querySelector('#notice').textContent.includes({expected!r})", timeout=20_000
    )
    assert page.inner_text("#connect") == "Connect"
