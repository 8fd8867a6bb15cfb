"""The trained model served live: held-out questions over `/v1/realtime`, and through the page.

The offline tests (test_trained_model.py) hear each whole recording and then answer. Here a real
server hears the same recordings at real-time pace with server VAD (the default turn detection):
the trained state head must end each turn by itself, and the answer must be the expected text,
spoken intelligibly by the same judge (pocketsphinx with the answer grammar, WER <= 10%).

The page test gives Chromium the question as its fake microphone and reads the transcript the page
shows. Headless Chromium's speaker cannot be recorded, so the audio judged there is what the page
received over its socket (every `response.output_audio.delta` it scheduled for playback), collected
by a tee around the page's WebSocket.

Requirements beyond the project's own: espeak-ng (apt), pocketsphinx==5.1.1 and jiwer (pip), and
for the page Debian's chromium (apt) with playwright (pip).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from app.config import Settings
from app.model.wav import resample, write_wav
from app.sessions.audio_formats import InputAudioConverter
from app.sessions.events import AudioFormat
from app.sessions.vad import SpeechStopped, VadGate, VadSettings
from tests.conftest import LiveServer
from tests.e2e.browser import FAKE_MIC_RATE, chromium_with_mic, wait_connected
from tests.routes.conftest import (
    APPEND_MS,
    WIRE_RATE,
    from_pcm16,
    pcm16,
    realtime_client,
    silence,
    stream_turn,
)
from training import domain
from training.asr import transcribe, word_error_rate
from training.heldout import Recording

pytestmark = pytest.mark.slow

MAX_WER = 0.10  # as test_trained_model.py
# Indexes into `held_out_questions` (TEST_PAIRS): a greeting, a sum, a color.
LIVE_QUESTIONS = [0, 3, 7]  # "Hello.", "What is two plus two?", "What color is the sky?"
PAGE_QUESTION = 3
SILENCE_AFTER_S = 1.5  # digital silence streamed after each recording (which ends in 1 s of noise)
TRAIL_S = 1.0  # the noisy silence `training.heldout` places after each question
HEAD_LIMIT_S = 0.5  # committed at most this long after the end of speech: the head, not the 500 ms fallback
PAGE_LEAD_S = 1.0  # fake-mic silence before the question, so it is all heard once the session is ready
PAGE_TRAIL_S = 4.0  # and after it, so the looping microphone does not ask again during the answer


# -- the Realtime WebSocket -------------------------------------------------------------------------------
@dataclass
class LiveTurn:
    """One held-out question asked over /v1/realtime, and what came back."""

    recording: Recording
    transcript_done: str | None  # response.output_audio_transcript.done
    transcript_deltas: str  # the concatenated response.output_audio_transcript.delta
    status: str  # response.done's status
    audio: np.ndarray  # the response's audio, float32 at 24 kHz
    heard: str  # what the judge heard in it
    committed_after_s: float  # input_audio_buffer.committed's arrival after the end of speech (wall clock)
    stopped_ms: int  # speech_stopped's audio_end_ms: the audio clock when the turn ended
    fallback_ms: int  # where the VAD's silence fallback would have ended the turn, same clock
    speech_end_ms: float  # the end of the question on that clock
    done_after_s: float  # response.done's arrival after the end of speech
    types: list[str]

    @property
    def describe(self) -> str:
        return (
            f"{self.recording.description}: text {self.transcript_done!r}, heard {self.heard!r}, "
            f"committed {self.committed_after_s * 1000:.0f} ms after speech "
            f"(audio clock {self.stopped_ms} ms; speech end {self.speech_end_ms:.0f}, "
            f"VAD fallback {self.fallback_ms}), response.done +{self.done_after_s:.2f} s"
        )


def _wire(recording: Recording) -> bytes:
    """The recording as 24 kHz pcm16, then `SILENCE_AFTER_S` of silence."""
    return pcm16(resample(recording.samples, 16000, WIRE_RATE)) + silence(SILENCE_AFTER_S)


def _fallback_ms(wire: bytes, settings: Settings) -> int:
    """Where the server's VAD alone would end the turn: the session's converter and gate on the same appends."""
    converter = InputAudioConverter(AudioFormat().wire, 16000)
    gate = VadGate(
        VadSettings(
            aggressiveness=settings.vad_aggressiveness,
            prefix_padding_ms=settings.vad_prefix_padding_ms,
            silence_duration_ms=settings.vad_silence_ms,
        )
    )
    step = 2 * WIRE_RATE * APPEND_MS // 1000
    for offset in range(0, len(wire), step):
        for event in gate.push(converter.push(wire[offset : offset + step])):
            if isinstance(event, SpeechStopped):
                return event.audio_end_ms
    raise AssertionError("the VAD never ends this turn: the test's audio is wrong")


async def _ask(server: LiveServer, recording: Recording) -> LiveTurn:
    wire = _wire(recording)
    speech_end_s = (len(recording.samples) - int(TRAIL_S * 16000)) / 16000
    async with realtime_client(server.ws_url) as client:
        started = time.perf_counter()  # the first append goes now; the rest at real-time pace
        done = await stream_turn(client, wire, silence_s=0.0, timeout=30.0)
        response_id = done["response"]["id"]
        committed = [r for r in client.log if r.event["type"] == "input_audio_buffer.committed"]
        stopped = client.events("input_audio_buffer.speech_stopped")
        assert committed and stopped, f"the turn never ended: {client.types()}"
        transcripts = client.events("response.output_audio_transcript.done")
        audio = from_pcm16(client.audio(response_id))
        return LiveTurn(
            recording=recording,
            transcript_done=transcripts[0]["transcript"] if transcripts else None,
            transcript_deltas="".join(
                e["delta"]
                for e in client.events("response.output_audio_transcript.delta")
                if e["response_id"] == response_id
            ),
            status=done["response"]["status"],
            audio=audio,
            heard=transcribe(audio, WIRE_RATE, domain.answers()) if len(audio) else "",
            committed_after_s=committed[0].at - started - speech_end_s,
            stopped_ms=stopped[0]["audio_end_ms"],
            fallback_ms=_fallback_ms(wire, server.settings),
            speech_end_ms=1000 * speech_end_s,
            done_after_s=client.log[-1].at - started - speech_end_s,
            types=client.types(),
        )


@pytest.fixture(scope="module")
def live_turns(trained_server: LiveServer, held_out_questions: list[Recording]) -> list[LiveTurn]:
    """Each of `LIVE_QUESTIONS` asked on its own connection, one after the other."""

    async def main() -> list[LiveTurn]:
        return [await _ask(trained_server, held_out_questions[i]) for i in LIVE_QUESTIONS]

    began = time.perf_counter()
    turns = asyncio.run(main())
    print(f"\n{len(turns)} live turns in {time.perf_counter() - began:.1f} s")
    for turn in turns:
        print("  " + turn.describe)
    return turns


def test_held_out_questions_over_realtime_get_the_expected_answer(live_turns: list[LiveTurn]) -> None:
    assert len({turn.recording.answer for turn in live_turns}) == len(LIVE_QUESTIONS)
    for turn in live_turns:
        assert turn.status == "completed", turn.describe
        assert turn.transcript_done == turn.recording.answer, turn.describe
        assert turn.transcript_deltas == turn.recording.answer, turn.describe
        assert len(turn.audio) > WIRE_RATE // 2, f"{turn.describe}: {len(turn.audio)} samples of audio"
    references = [turn.recording.answer for turn in live_turns]
    wer = word_error_rate(references, [turn.heard for turn in live_turns])
    assert wer <= MAX_WER, f"WER {wer:.1%}: " + "; ".join(turn.describe for turn in live_turns)


def test_the_state_head_ends_each_turn_before_the_vad_fallback(live_turns: list[LiveTurn]) -> None:
    for turn in live_turns:
        assert "input_audio_buffer.cleared" not in turn.types, turn.describe
        # On the audio clock: the turn ended before the VAD had heard the silence that ends it.
        assert turn.speech_end_ms <= turn.stopped_ms < turn.fallback_ms, turn.describe
        # On the wall clock: committed within half a second of the end of the question.
        assert 0 <= turn.committed_after_s <= HEAD_LIMIT_S, turn.describe


# -- the page ---------------------------------------------------------------------------------------------
# Every message the page's socket receives, kept in `window.__wsEvents` (the page's own handlers still run).
TEE_WEBSOCKET = """
(() => {
  const Native = window.WebSocket;
  window.__wsEvents = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (message) => {
        try {
          window.__wsEvents.push({ t: performance.now(), event: JSON.parse(message.data) });
        } catch {}
      });
    }
  };
})();
"""


@pytest.fixture(scope="module")
def question_mic_wav(held_out_questions: list[Recording], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Silence, the held-out question, silence: a 48 kHz WAV for Chromium's fake microphone."""
    speech = resample(held_out_questions[PAGE_QUESTION].samples, 16000, FAKE_MIC_RATE)
    lead = np.zeros(int(PAGE_LEAD_S * FAKE_MIC_RATE), dtype=np.float32)
    trail = np.zeros(int(PAGE_TRAIL_S * FAKE_MIC_RATE), dtype=np.float32)
    path = tmp_path_factory.mktemp("trained_mic") / "held_out_question.wav"
    write_wav(path, np.concatenate([lead, speech, trail]), FAKE_MIC_RATE)
    return path


@pytest.fixture
def mic_page(question_mic_wav: Path):
    """A page in headless Chromium whose microphone speaks `question_mic_wav` (in a loop)."""
    with chromium_with_mic(question_mic_wav) as browser:
        context = browser.new_context()
        context.add_init_script(TEE_WEBSOCKET)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        yield page
        assert not errors, f"JavaScript errors on the page: {errors}"


def test_the_page_shows_the_expected_answer_to_its_microphone(
    trained_server: LiveServer, held_out_questions: list[Recording], mic_page
) -> None:
    recording = held_out_questions[PAGE_QUESTION]
    began = time.perf_counter()
    mic_page.goto(trained_server.base_url + "/?audio=pcm16")  # the tee reads JSON deltas (Opus: test_page.py)
    mic_page.click("#connect")
    wait_connected(mic_page)
    mic_page.wait_for_function(
        "window.__wsEvents.some(e => e.event.type === 'response.done')", timeout=30_000
    )
    events = [e["event"] for e in mic_page.evaluate("window.__wsEvents")]
    shown = mic_page.locator(".assistant .text").first.inner_text().strip()
    scheduled = mic_page.evaluate("window.__audio")
    elapsed = time.perf_counter() - began

    done = next(e for e in events if e["type"] == "response.done")
    response_id = done["response"]["id"]
    audio = from_pcm16(
        b"".join(
            base64.b64decode(e["delta"])
            for e in events
            if e["type"] == "response.output_audio.delta" and e["response_id"] == response_id
        )
    )
    heard = transcribe(audio, WIRE_RATE, domain.answers()) if len(audio) else ""
    wer = word_error_rate([recording.answer], [heard])
    print(
        f"\npage: {recording.description}: shown {shown!r}, heard {heard!r} (WER {wer:.0%}), "
        f"{len(audio) / WIRE_RATE:.2f} s of audio, scheduled {scheduled}, {elapsed:.1f} s"
    )
    assert "input_audio_buffer.committed" in [e["type"] for e in events]
    assert done["response"]["status"] == "completed", done
    assert shown == recording.answer
    assert scheduled["deltas"] > 0, "the page scheduled none of the answer's audio"
    assert wer <= MAX_WER, f"the page was sent {heard!r} for {recording.answer!r}"
