"""LiveKit Agents (livekit-agents, livekit-plugins-openai 1.8.9) pointed at our server:
`openai.realtime.RealtimeModel(base_url="http://HOST:PORT/v1")`, run without a LiveKit room.

`AgentSession` gets its audio from a live microphone in a quiet room and plays into a real-time
speaker (see livekit_agent.py); the model keeps LiveKit's defaults (semantic VAD, input
transcription asked for). A wire tap records what LiveKit sent and what the server answered; a test
fails on an error event it did not provoke and on any error the session reported.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from tests.conftest import LiveServer
from tests.frameworks.conftest import TEXT_QUESTION, WireTap, to_rate, wire_tap
from tests.frameworks.livekit_agent import MIC_RATE, SPEAKER_RATE, LiveKitAgent, livekit_agent
from tests.routes.conftest import forced_state, run
from training import domain
from training.asr import transcribe, word_error_rate

pytestmark = pytest.mark.slow

INSTRUCTIONS = "You are a helpful assistant."
ANSWER_AUDIO_S = 0.5
REPLY_WITHIN_S = 3.0  # generate_reply's first audio: well under LiveKit's 10 s give-up
MAX_WER = 0.10
# LiveKit replaces the user's audio with silence for the first 3 s the agent speaks (`aec_warmup_duration`,
# against echo before a room's echo canceller settles). The test microphone has no echo, and the tiny
# model's answers are about that long, so the barge-in tests turn the warm-up off.
NO_ECHO = {"aec_warmup_duration": None}
BARGE_IN_TRIES = 3  # the tiny model's answers vary in length; a try whose answer ends first is repeated


def http_base(tap: WireTap) -> str:
    """The tap's address as LiveKit takes it: the HTTP API base."""
    return tap.url.replace("ws://", "http://").removesuffix("/realtime")


TRANSCRIPTION = "session.audio.input.transcription"


def refuses_transcription(error: dict) -> bool:
    """Our refusal of LiveKit's default input transcription (we have no speech recogniser): expected."""
    return error.get("code") == "unsupported_parameter" and error.get("param") == TRANSCRIPTION


def assert_clean(agent: LiveKitAgent, tap: WireTap) -> None:
    """No error event but the refusal of the default transcription; LiveKit reported no other error."""
    unexpected = tap.unexpected_errors(refuses_transcription)
    assert not unexpected, f"server errors: {unexpected}\n{tap.summary()}"
    reported = [e for e in agent.errors if getattr(getattr(e, "body", None), "param", None) != TRANSCRIPTION]
    assert not reported, f"LiveKit errors: {reported}\n{tap.summary()}"


def audio_s(agent: LiveKitAgent, after: float = 0.0) -> float:
    return len(agent.speaker.audio(after=after)) / SPEAKER_RATE


def test_livekit_text_turn_generate_reply_returns_at_once(tiny_server: LiveServer) -> None:
    """`session.generate_reply(user_input=...)`: LiveKit matches the reply by `response.metadata`; the
    answer plays at once instead of after LiveKit's 10 s give-up."""

    async def main() -> float:
        async with wire_tap(tiny_server) as tap, livekit_agent(http_base(tap), INSTRUCTIONS) as agent:
            agent.tap = tap
            asked = time.perf_counter()
            agent.session.generate_reply(user_input=TEXT_QUESTION)
            await agent.wait_for(lambda: audio_s(agent) >= ANSWER_AUDIO_S, 15, "answer audio")
            first_audio = agent.speaker.first_at() - asked
            assert_clean(agent, tap)
            return first_audio

    first_audio = run(main())
    assert first_audio < REPLY_WITHIN_S, f"the answer played {first_audio:.1f} s after generate_reply"


def test_livekit_greets_first(tiny_server: LiveServer) -> None:
    """`generate_reply(instructions=...)` on an empty conversation: the bot speaks first, at once."""

    async def main() -> float:
        async with wire_tap(tiny_server) as tap, livekit_agent(http_base(tap), INSTRUCTIONS) as agent:
            agent.tap = tap
            asked = time.perf_counter()
            agent.session.generate_reply(instructions="Greet the user.")
            await agent.wait_for(lambda: audio_s(agent) >= ANSWER_AUDIO_S, 15, "greeting audio")
            first_audio = agent.speaker.first_at() - asked
            assert_clean(agent, tap)
            return first_audio

    first_audio = run(main())
    assert first_audio < REPLY_WITHIN_S, f"the greeting played {first_audio:.1f} s after generate_reply"


def test_livekit_spoken_turn_gets_the_expected_answer(trained_server: LiveServer, spoken_question) -> None:
    """The trained model hears the question through LiveKit at real-time pace; LiveKit plays the answer."""

    async def main() -> tuple[str, str]:
        async with wire_tap(trained_server) as tap, livekit_agent(http_base(tap), INSTRUCTIONS) as agent:
            agent.tap = tap
            await asyncio.sleep(1.0)
            began = time.perf_counter()
            await agent.say(to_rate(spoken_question.samples, MIC_RATE))
            await agent.wait_for(
                lambda: agent.said("assistant", after=began), 30, "the answer in the chat history"
            )
            await asyncio.sleep(0.5)
            audio = agent.speaker.audio(after=began)
            assert_clean(agent, tap)
            return " ".join(agent.said("assistant", after=began)), transcribe(
                audio, SPEAKER_RATE, domain.answers()
            )

    text, heard = run(main())
    assert text.strip() == spoken_question.answer
    assert word_error_rate([spoken_question.answer], [heard]) <= MAX_WER, heard


async def barge_in(server: LiveServer, question: np.ndarray, head: str) -> float | None:
    """Ask for an answer, speak over it with the state head saying `head`; return how much of the old
    answer reached the speaker after LiveKit cleared it (None: the answer ended before the user spoke)."""
    async with (
        wire_tap(server) as tap,
        livekit_agent(http_base(tap), INSTRUCTIONS, session_options=NO_ECHO) as agent,
    ):
        agent.tap = tap
        agent.session.generate_reply(user_input=TEXT_QUESTION)
        await agent.wait_for(lambda: audio_s(agent) > 0, 30, "answer audio")
        old = tap.received("response.created")[0]["response"]["id"]
        with forced_state(server, head):
            speaking = asyncio.create_task(agent.say(question))
            await agent.wait_for(
                lambda: tap.received("input_audio_buffer.speech_started"), 10, "speech_started"
            )
            heard_at = tap.first_at("received", "input_audio_buffer.speech_started")
            if tap.response_ended_before(old, heard_at):
                return None  # the tiny model's answer was too short to barge into
            await speaking
            await agent.wait_for(lambda: agent.speaker.cleared_at, 10, "LiveKit clearing its speaker")
        await asyncio.sleep(3.0)
        cleared_at = agent.speaker.cleared_at[0]
        next_response = [
            w.at for w in tap.log if w.type == "response.created" and w.event["response"]["id"] != old
        ]
        late = agent.speaker.audio(after=cleared_at, before=min(next_response, default=float("inf")))
        assert len(late) == 0, (
            f"{len(late) / SPEAKER_RATE:.2f} s of the old answer reached LiveKit's speaker after it was "
            f"cleared\n{tap.summary()}"
        )
        assert_clean(agent, tap)
        return len(late) / SPEAKER_RATE


@pytest.mark.parametrize(
    "head",
    ["answer", "listen", "ignore"],
    ids=["head-takes-the-turn", "head-undecided", "head-hears-a-backchannel"],
)
def test_livekit_barge_in_stops_the_old_answer(tiny_server: LiveServer, spoken_question, head: str) -> None:
    """Speech over an answer: once LiveKit has cleared its speaker, no audio of the old answer reaches it."""
    question = to_rate(spoken_question.samples, MIC_RATE)
    for _ in range(BARGE_IN_TRIES):
        if run(barge_in(tiny_server, question, head)) is not None:
            return
    pytest.fail(f"no answer outlasted the start of the user's speech in {BARGE_IN_TRIES} tries")


def test_livekit_whole_conversation_on_its_defaults(tiny_server: LiveServer, spoken_question) -> None:
    """LiveKit's RealtimeModel defaults (semantic VAD, input transcription asked for), one session: a
    greeting, a spoken turn, a barge-in and a typed turn, each answered; the only error is the refusal of
    the transcription, which LiveKit reports as recoverable and the session outlives."""
    question = to_rate(spoken_question.samples, MIC_RATE)

    async def main() -> None:
        async with (
            wire_tap(tiny_server) as tap,
            livekit_agent(http_base(tap), INSTRUCTIONS, session_options=NO_ECHO) as agent,
        ):
            agent.tap = tap

            def answered_after(at: float) -> bool:
                return any(w.at > at for w in tap.log if w.type == "response.output_audio.delta")

            greeted = time.perf_counter()
            agent.session.generate_reply(instructions="Greet the user.")
            await agent.wait_for(lambda: answered_after(greeted), 15, "the greeting")
            await agent.wait_for(lambda: not _responding(tap), 30, "the end of the greeting")
            spoken = time.perf_counter()
            await agent.say(question)
            await agent.wait_for(lambda: answered_after(spoken + 0.5), 30, "an answer to the spoken turn")
            with forced_state(tiny_server, "answer"):
                await agent.say(question)
                await agent.wait_for(lambda: agent.speaker.cleared_at, 10, "LiveKit clearing its speaker")
            await agent.wait_for(lambda: not _responding(tap), 30, "the end of the answer to the barge-in")
            typed = time.perf_counter()
            agent.session.generate_reply(user_input=TEXT_QUESTION)
            await agent.wait_for(lambda: answered_after(typed), REPLY_WITHIN_S, "an answer to the typed turn")
            assert_clean(agent, tap)
            refusals = [e for e in tap.errors() if refuses_transcription(e)]
            assert len(refusals) >= 1, tap.summary()
            assert all(getattr(e, "retryable", True) for e in agent.errors)

    run(main())


def _responding(tap: WireTap) -> bool:
    """A response is in progress: more response.created than response.done so far."""
    return len(tap.received("response.created")) > len(tap.received("response.done"))


def test_livekit_without_transcription_gets_no_error(tiny_server: LiveServer) -> None:
    """`RealtimeModel(input_audio_transcription=None)`, as our refusal suggests: not a single error."""

    async def main() -> None:
        async with (
            wire_tap(tiny_server) as tap,
            livekit_agent(http_base(tap), INSTRUCTIONS, input_audio_transcription=None) as agent,
        ):
            agent.tap = tap
            asked = time.perf_counter()
            agent.session.generate_reply(user_input=TEXT_QUESTION)
            await agent.wait_for(lambda: audio_s(agent, after=asked) >= ANSWER_AUDIO_S, 15, "answer audio")
            assert tap.errors() == [], tap.summary()
            assert agent.errors == []

    run(main())
