"""The browser page, driven in headless Chromium against a live server on the tiny model.

Chromium's fake microphone loops a WAV: the spoken question, then silence, so the server's VAD
hears a turn end and answers. The page records what happened in `window.__*` globals (state
transitions, audio deltas, first-audio latencies, barge-in stop latency), which the tests read.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.browser import FAKE_MIC_RATE, chromium_with_mic, wait_connected
from tests.network_blip import BlipProxy
from tests.routes.resume_client import LONG_PROMPTS

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
        # The fake microphone speaks over the answer: the server pauses it (speech_started), which
        # silences the page at once; then the state head takes the turn and the server cancels it.
        page.check("#mic")
        page.wait_for_function("window.__lastStopLatencyMs !== null", timeout=30_000)
        page.wait_for_function(
            "document.querySelector('#log').innerText.includes('interrupted')", timeout=30_000
        )

    stop = page.evaluate("window.__lastStop")
    latency_ms = page.evaluate("window.__lastStopLatencyMs")
    call_ms = page.evaluate("window.__lastStopCallMs")
    assert stop["sources"] > 0, "the cancel came when nothing was scheduled: the test proves nothing"
    assert stop["wasSounding"], "the answer was not audible when the cancel came"
    assert latency_ms < BARGE_IN_STOP_LIMIT_MS, f"playback went silent {latency_ms:.1f} ms after the pause"
    assert "interrupted" in page.inner_text("#log")
    screenshot(page, "barge-in.png")
    print(f"\nbarge-in: stop() {call_ms:.1f} ms, silent {latency_ms:.1f} ms after speech_started")


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
    (connection,) = server.state.sessions  # the page names its session, so a balancer can spread pages
    assert re.fullmatch(r"page-[0-9a-f]{24}", connection.session_key), connection.session_key

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
        ({"max_message_bytes": 1024}, True, "too large"),  # the first pcm16 append is over: close 1009
    ],
    ids=["idle-1000", "too-big-1009"],
)
def test_closes_are_explained(start_server, page, settings: dict, microphone: bool, expected: str) -> None:
    server = start_server(**settings)
    page.goto(server.base_url + "/?audio=pcm16")  # in Opus no message comes near 1 KiB
    page.set_checked("#mic", microphone)
    page.click("#connect")
    page.wait_for_function(
        f"document.querySelector('#notice').textContent.includes({expected!r})", timeout=20_000
    )
    assert page.inner_text("#connect") == "Connect"


# -- Opus through WebCodecs -----------------------------------------------------------------------------------
# Counts what the page's socket sends and receives, by kind (the page's own handlers still run).
COUNT_FRAMES = """
(() => {
  const Native = window.WebSocket;
  window.__frames = { sentBinary: 0, sentAppends: 0, receivedBinary: 0, receivedDeltas: 0 };
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (message) => {
        if (typeof message.data !== "string") window.__frames.receivedBinary += 1;
        else if (message.data.includes('"response.output_audio.delta"')) window.__frames.receivedDeltas += 1;
      });
    }
    send(data) {
      if (typeof data !== "string") window.__frames.sentBinary += 1;
      else if (data.includes('"input_audio_buffer.append"')) window.__frames.sentAppends += 1;
      super.send(data);
    }
  };
})();
"""
NO_WEBCODECS = "delete window.AudioEncoder; delete window.AudioDecoder;"
# A server without our extension: the page's session.update names a format this server does not know.
OLD_SERVER = """
(() => {
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    if (typeof data === "string") data = data.replaceAll("audio/x-opus", "audio/x-unknown");
    return send.call(this, data);
  };
})();
"""


def spoken_answer_plays(page) -> None:
    """Until the fake microphone's question has been answered and the answer scheduled for playback."""
    page.wait_for_function(
        "window.__stateLog.map(e => e.state).join(' ').match(/listening.*thinking.*speaking/)",
        timeout=40_000,
    )
    page.wait_for_function(
        "window.__audio.secondsScheduled > 0.2 && window.__firstAudioLatenciesMs.length > 0"
    )


def test_the_page_talks_opus_through_webcodecs(start_server, browser) -> None:
    server = start_server()
    context = browser.new_context()
    context.add_init_script(COUNT_FRAMES)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.base_url + "/")
    page.click("#connect")
    wait_connected(page)
    spoken_answer_plays(page)

    frames, audio = page.evaluate("[window.__frames, window.__audio]")  # one snapshot
    shown = page.inner_text("#audio-format")
    assert page.evaluate("window.__audioFormat") == "opus"
    assert shown.startswith("Audio: Opus"), shown
    # The microphone went out as Opus packets (binary frames) and the answer came back as such.
    assert frames["sentBinary"] > 25 and frames["sentAppends"] == 0, frames
    assert frames["receivedBinary"] > 0 and frames["receivedDeltas"] == 0, frames
    assert audio["packetsSent"] == frames["sentBinary"], (audio, frames)
    assert audio["packetsReceived"] == frames["receivedBinary"], (audio, frames)
    # The packets received were decoded and scheduled, 20 ms each (the last few may still be decoding).
    received_s = 0.020 * audio["packetsReceived"]
    assert received_s - 0.2 <= audio["secondsScheduled"] <= received_s + 0.001, audio
    screenshot(page, "opus.png")
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
    print(f"\nOpus page: {shown}; frames {frames}; audio {audio}")


@pytest.mark.parametrize(
    ("script", "path", "reason"),
    [
        (NO_WEBCODECS, "/", "no WebCodecs Opus"),
        ("", "/?audio=pcm16", "asked for in the address"),
        (OLD_SERVER, "/", "the server refused Opus"),
    ],
    ids=["no-webcodecs", "asked", "refused"],
)
def test_the_page_falls_back_to_pcm16(start_server, browser, script: str, path: str, reason: str) -> None:
    server = start_server()
    context = browser.new_context()
    context.add_init_script(script + COUNT_FRAMES)  # the counter sees what the page really sends
    page = context.new_page()
    page.goto(server.base_url + path)
    page.click("#connect")
    wait_connected(page)
    spoken_answer_plays(page)

    frames = page.evaluate("window.__frames")
    assert page.evaluate("window.__audioFormat") == "pcm16"
    assert reason in page.inner_text("#audio-format")
    assert frames["sentAppends"] > 0 and frames["sentBinary"] == 0, frames
    assert frames["receivedDeltas"] > 0 and frames["receivedBinary"] == 0, frames
    context.close()


# -- a network blip -----------------------------------------------------------------------------------------
def test_the_page_takes_its_conversation_back_after_a_network_blip(start_server, page, monkeypatch) -> None:
    """The connection drops mid-answer (an RST, no close frame) and the network stays away for a second:
    the page dials again with its resume token and the count of what it received, the answer goes on
    from exactly where the drop cut it (every byte the engine made arrives once), and the conversation
    goes on afterwards."""
    from tests.routes.resume_client import record_made_audio

    made = record_made_audio(monkeypatch)
    server = start_server(max_answer_tokens=16, top_k=1)  # answers of about four seconds
    with BlipProxy(server.settings.port) as proxy:
        page.goto(proxy.base_url + "/?audio=pcm16")
        page.set_checked("#mic", False)  # typed turns only: the fake microphone would barge in
        page.click("#connect")
        wait_connected(page)
        response_id = long_answer_started(page, LONG_PROMPTS)
        answers_before = len(page.evaluate("window.__responsesDone"))
        assert proxy.blip(down_s=1.0) >= 1
        page.wait_for_function(
            "document.querySelector('#notice').textContent.includes('dropped')", timeout=5_000
        )
        page.wait_for_function("window.__resumes === 1", timeout=20_000)
        page.wait_for_function(f"window.__responsesDone.length === {answers_before + 1}", timeout=30_000)
        notice_after = page.inner_text("#notice")

        # The conversation goes on over the new connection.
        page.fill("#text", "And then?")
        page.press("#text", "Enter")
        page.wait_for_function(f"window.__responsesDone.length === {answers_before + 2}", timeout=30_000)
        done = page.evaluate("window.__responsesDone")[answers_before:]
        received = page.evaluate("window.__answerBytes")

    assert proxy.refused >= 1, "the page dialled while the network was down, and dialled again"
    assert done[0] == {"id": response_id, "status": "completed"}, done
    assert done[1]["status"] == "completed", done
    assert received[response_id] == len(made.wire_bytes(response_id)), "audio lost or doubled"
    assert "goes on" in notice_after, notice_after
    assert server.state.metrics.sessions_resumed == 1
    assert page.locator(".assistant").count() == answers_before + 2  # the resumed answer kept its bubble


def test_after_a_blip_longer_than_the_grace_time_the_page_starts_a_new_conversation_and_says_so(
    start_server, page
) -> None:
    server = start_server(max_answer_tokens=16, top_k=1, resume_grace_s=1.0)
    with BlipProxy(server.settings.port) as proxy:
        page.goto(proxy.base_url + "/?audio=pcm16")
        page.set_checked("#mic", False)
        page.click("#connect")
        wait_connected(page)
        long_answer_started(page, LONG_PROMPTS)
        proxy.blip(down_s=1.6)
        page.wait_for_function(
            "document.querySelector('#notice').textContent.includes('new one')", timeout=20_000
        )
        answers_before = len(page.evaluate("window.__responsesDone"))
        page.fill("#text", "Hello!")
        page.press("#text", "Enter")
        page.wait_for_function(f"window.__responsesDone.length === {answers_before + 1}", timeout=30_000)
        assert page.evaluate("window.__resumes") == 0
        assert page.evaluate("window.__responsesDone").pop()["status"] == "completed"
    assert server.state.metrics.sessions_resumed == 0


def long_answer_started(page, prompts: tuple[str, ...]) -> str:
    """Type prompts until an answer is still going after 0.4 s of its audio arrived; its response id.
    (The tiny model's answer length varies with the prompt, as in the resume tests.)"""
    for number, prompt in enumerate(prompts, start=1):
        page.fill("#text", prompt)
        page.press("#text", "Enter")
        page.wait_for_function(
            f"window.__responsesDone.length === {number} || "
            "Object.values(window.__answerBytes).some(bytes => bytes >= 0.4 * 48000)",
            timeout=30_000,
        )
        going = page.evaluate(
            "Object.keys(window.__answerBytes).filter(id => window.__answerBytes[id] >= 0.4 * 48000"
            " && !window.__responsesDone.some(done => done.id === id))"
        )
        if going:
            return going[0]
        page.wait_for_function(f"window.__responsesDone.length === {number}", timeout=30_000)
    raise AssertionError(f"no answer to {prompts} lasted 0.4 s")
