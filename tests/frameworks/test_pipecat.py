"""Pipecat (pipecat-ai 1.14.0) pointed at our server: `OpenAIRealtimeLLMService(base_url="ws://HOST:PORT/v1/realtime")`.

Each test builds the pipeline a Pipecat user builds (context aggregators around the realtime
service), with a live microphone in a quiet room as its input and a speaker that keeps what Pipecat
would play. What the framework sent and what the server answered is recorded by a wire tap; a test
fails on any `error` event it did not provoke, and on any error Pipecat raised.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from pipecat.frames.frames import TTSStoppedFrame

from tests.conftest import LiveServer
from tests.frameworks.conftest import TEXT_QUESTION, to_rate, wire_tap
from tests.frameworks.pipecat_agent import MIC_RATE, PipecatAgent, pipecat_agent
from tests.routes.conftest import forced_state, run
from training import domain
from training.asr import transcribe, word_error_rate

pytestmark = pytest.mark.slow

INSTRUCTIONS = "You are a helpful assistant. Greet the user."
ANSWER_AUDIO_S = 0.5  # this much answer audio is proof that an answer is being played
MAX_WER = 0.10


def assert_clean(agent: PipecatAgent, tap) -> None:
    """No error event from the server, no error raised in Pipecat."""
    assert not tap.unexpected_errors(), f"server errors: {tap.unexpected_errors()}\n{tap.summary()}"
    assert not agent.errors, f"Pipecat errors: {agent.errors}\n{tap.summary()}"


def audio_s(agent: PipecatAgent, after: float = 0.0) -> float:
    return len(agent.speaker.audio(after=after)) / 24000


def test_pipecat_greets_first(tiny_server: LiveServer) -> None:
    """`LLMRunFrame` on a context with only the system prompt: the bot speaks first."""

    async def main() -> None:
        async with wire_tap(tiny_server) as tap, pipecat_agent(tap, INSTRUCTIONS) as agent:
            await agent.greet()
            await agent.wait_for(lambda: audio_s(agent) >= ANSWER_AUDIO_S, 30, "greeting audio")
            assert_clean(agent, tap)

    run(main())


def test_pipecat_text_turn(tiny_server: LiveServer) -> None:
    """A typed first message (`LLMMessagesAppendFrame(run_llm=True)`) is answered with speech.

    Pipecat sends the context it holds as conversation items (the user message as a `user` item) and
    then `response.create`."""

    async def main() -> None:
        async with wire_tap(tiny_server) as tap, pipecat_agent(tap) as agent:
            await agent.type_text(TEXT_QUESTION)
            await agent.wait_for(lambda: audio_s(agent) >= ANSWER_AUDIO_S, 30, "answer audio")
            assert_clean(agent, tap)

    run(main())


def test_pipecat_spoken_turn_gets_the_expected_answer(trained_server: LiveServer, spoken_question) -> None:
    """The trained model hears the question through Pipecat, at real-time pace, and Pipecat plays the answer."""

    async def main() -> tuple[str, str]:
        async with wire_tap(trained_server) as tap, pipecat_agent(tap) as agent:
            await asyncio.sleep(1.0)  # the room, before anyone speaks
            began = time.perf_counter()
            await agent.say(to_rate(spoken_question.samples, MIC_RATE))
            await agent.wait_for(lambda: _answer_done(agent, began), 30, "the end of the answer")
            audio = agent.speaker.audio(after=began)
            assert_clean(agent, tap)
            return agent.speaker.text(after=began), transcribe(audio, 24000, domain.answers())

    text, heard = run(main())
    assert text.strip() == spoken_question.answer
    assert word_error_rate([spoken_question.answer], [heard]) <= MAX_WER, heard


def _answer_done(agent: PipecatAgent, after: float) -> bool:
    return any(at > after for at in agent.speaker.times(TTSStoppedFrame))


BARGE_IN_CASES = [
    # Pipecat flushes and truncates on speech_started; from then on no audio of the truncated answer may
    # reach it, whatever the state head decides next (takes the turn, stays undecided, or hears a
    # backchannel, which would otherwise resume the answer).
    pytest.param("answer", id="head-takes-the-turn"),
    pytest.param("listen", id="head-undecided"),
    pytest.param("ignore", id="head-hears-a-backchannel"),
]
BARGE_IN_TRIES = 3  # the tiny model's answers vary in length; a try whose answer ends first is repeated


async def barge_in(server: LiveServer, question: np.ndarray, head: str) -> bool:
    """Ask for an answer and speak over it with the state head saying `head`; check that nothing of the
    old answer reached Pipecat after its interruption. False: the answer ended before the user spoke."""
    from pipecat.frames.frames import InterruptionFrame

    async with wire_tap(server) as tap, pipecat_agent(tap) as agent:
        await agent.type_text(TEXT_QUESTION)
        await agent.wait_for(lambda: audio_s(agent) > 0, 30, "answer audio")
        old = tap.received("response.created")[0]["response"]["id"]
        with forced_state(server, head):
            speaking = asyncio.create_task(agent.say(question))
            await agent.wait_for(
                lambda: tap.received("input_audio_buffer.speech_started"), 10, "speech_started"
            )
            heard_at = tap.first_at("received", "input_audio_buffer.speech_started")
            if tap.response_ended_before(old, heard_at):
                return False
            await speaking
            await agent.wait_for(lambda: agent.speaker.times(InterruptionFrame), 10, "an interruption")
        await asyncio.sleep(3.0)
        interrupted_at = agent.speaker.times(InterruptionFrame)[0]
        late_deltas = [
            w
            for w in tap.log
            if w.direction == "received"
            and w.type == "response.output_audio.delta"
            and w.event["response_id"] == old
            and w.at > interrupted_at
        ]
        next_response = [
            w.at for w in tap.log if w.type == "response.created" and w.event["response"]["id"] != old
        ]
        late = agent.speaker.audio(after=interrupted_at, before=min(next_response, default=float("inf")))
        assert not late_deltas and len(late) == 0, (
            f"after Pipecat's interruption, {len(late_deltas)} audio deltas of the old response came in and "
            f"{len(late) / 24000:.2f} s of audio reached Pipecat's speaker\n{tap.summary()}"
        )
        assert_clean(agent, tap)
        return True


@pytest.mark.parametrize("head", BARGE_IN_CASES)
def test_pipecat_barge_in_stops_the_old_answer(tiny_server: LiveServer, spoken_question, head: str) -> None:
    """Speech over an answer. Pipecat flushes its speaker on `speech_started` and truncates the item:
    from then on no audio of the old answer may reach its speaker, whatever the state head decides."""
    question = to_rate(spoken_question.samples, MIC_RATE)
    for _ in range(BARGE_IN_TRIES):
        if run(barge_in(tiny_server, question, head)):
            return
    pytest.fail(f"no answer outlasted the start of the user's speech in {BARGE_IN_TRIES} tries")


def test_pipecat_text_turn_mid_session(tiny_server: LiveServer) -> None:
    """A message appended after the conversation is set up goes through the service (as Pipecat's
    `LLMMessagesAppendFrame` handling does) and is answered; the session goes on."""
    from pipecat.frames.frames import LLMMessagesAppendFrame, TTSStartedFrame

    async def main() -> None:
        async with wire_tap(tiny_server) as tap, pipecat_agent(tap) as agent:
            await agent.type_text(TEXT_QUESTION)
            await agent.wait_for(lambda: agent.speaker.times(TTSStoppedFrame), 30, "the first answer")
            second = time.perf_counter()
            frame = LLMMessagesAppendFrame(
                messages=[{"role": "user", "content": "And three plus three?"}], run_llm=True
            )
            await agent.service.queue_frame(frame)
            await agent.wait_for(
                lambda: any(at > second for at in agent.speaker.times(TTSStartedFrame)), 30, "a second answer"
            )
            assert_clean(agent, tap)

    run(main())


def test_pipecat_whole_conversation_on_its_defaults(tiny_server: LiveServer, spoken_question) -> None:
    """Pipecat's defaults, one session: greeting, a spoken turn, a barge-in, a typed turn; no error, and
    the bot still answers at the end (an error Pipecat does not know would have left it deaf)."""
    from pipecat.frames.frames import InterruptionFrame, LLMMessagesAppendFrame, TTSStartedFrame

    question = to_rate(spoken_question.samples, MIC_RATE)

    async def main() -> None:
        async with wire_tap(tiny_server) as tap, pipecat_agent(tap, INSTRUCTIONS) as agent:

            def answers_after(at: float) -> bool:
                return any(t > at for t in agent.speaker.times(TTSStartedFrame))

            await agent.greet()
            await agent.wait_for(lambda: _answer_done(agent, 0.0), 30, "the greeting")
            spoken = time.perf_counter()
            await agent.say(question)
            await agent.wait_for(lambda: answers_after(spoken), 30, "an answer to the spoken turn")
            with forced_state(tiny_server, "answer"):
                await agent.say(question)
                await agent.wait_for(lambda: agent.speaker.times(InterruptionFrame), 10, "an interruption")
            await agent.wait_for(
                lambda: _answer_done(agent, agent.speaker.times(InterruptionFrame)[-1]), 30, "calm"
            )
            typed = time.perf_counter()
            frame = LLMMessagesAppendFrame(
                messages=[{"role": "user", "content": TEXT_QUESTION}], run_llm=True
            )
            await agent.service.queue_frame(frame)
            await agent.wait_for(lambda: answers_after(typed), 30, "an answer to the typed turn")
            assert_clean(agent, tap)

    run(main())
