"""A Pipecat voice agent on our server, built as a Pipecat user builds one, with the transport replaced.

`OpenAIRealtimeLLMService(base_url=...)` between the context aggregators, as in Pipecat's realtime
examples. Where a transport would stand, the test queues `InputAudioRawFrame`s into the task at
real-time pace (the microphone) and a `Speaker` at the end of the pipeline takes what Pipecat would
play: every frame with its arrival time, the interruptions included.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    ErrorFrame,
    Frame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMMessagesAppendFrame,
    LLMRunFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

from tests.frameworks.conftest import Microphone, WireTap, wait_until
from tests.routes.conftest import pcm16

MIC_RATE = 16000  # what a Pipecat transport typically hands in; the service resamples to 24 kHz
KEPT = (
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
    InterruptionFrame,
    UserStartedSpeakingFrame,
    UserStoppedSpeakingFrame,
    LLMFullResponseStartFrame,
    LLMFullResponseEndFrame,
)


@dataclass
class Heard:
    """One frame that reached the speaker, and when."""

    frame: Frame
    at: float  # time.perf_counter()


class Speaker(FrameProcessor):
    """The end of the pipeline: keeps what a transport output would play, and acts like one on barge-in.

    A real output transport announces playback with Bot{Started,Stopped}SpeakingFrame upstream; the
    service uses the latter to forget the answer it was streaming. This one does the same, with the
    playback time of the audio it got (it plays nothing).
    """

    def __init__(self) -> None:
        super().__init__(name="test-speaker")
        self.heard: list[Heard] = []
        self._speaking = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and isinstance(frame, KEPT):
            self.heard.append(Heard(frame, time.perf_counter()))
        if isinstance(frame, TTSAudioRawFrame) and not self._speaking:
            self._speaking = True
            await self.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
        elif isinstance(frame, (TTSStoppedFrame, InterruptionFrame)) and self._speaking:
            self._speaking = False
            await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
        await self.push_frame(frame, direction)

    def audio(self, after: float = 0.0, before: float = float("inf")) -> np.ndarray:
        """The answer audio that arrived in [after, before), float32 at 24 kHz."""
        chunks = [
            h.frame.audio
            for h in self.heard
            if isinstance(h.frame, TTSAudioRawFrame) and after <= h.at < before
        ]
        data = b"".join(chunks)
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0

    def times(self, kind: type[Frame]) -> list[float]:
        return [h.at for h in self.heard if isinstance(h.frame, kind)]

    def text(self, after: float = 0.0) -> str:
        return "".join(
            h.frame.text for h in self.heard if isinstance(h.frame, TTSTextFrame) and h.at >= after
        )


@dataclass
class PipecatAgent:
    """A running Pipecat pipeline on our server; what it played, and the errors it raised."""

    task: PipelineWorker
    service: OpenAIRealtimeLLMService
    speaker: Speaker
    mic: Microphone
    tap: WireTap | None = None
    errors: list[ErrorFrame] = field(default_factory=list)

    async def say(self, samples_16k: np.ndarray) -> float:
        """Speak into the microphone; returns when the last sample went in (`time.perf_counter()`)."""
        return await self.mic.say(samples_16k)

    async def greet(self) -> None:
        """What Pipecat's examples do once a client connects: run the LLM on the context as it is."""
        await self.task.queue_frame(LLMRunFrame())

    async def type_text(self, text: str) -> None:
        """A typed user message, answered at once."""
        await self.task.queue_frame(
            LLMMessagesAppendFrame(messages=[{"role": "user", "content": text}], run_llm=True)
        )

    framework = "Pipecat"

    async def wait_for(self, condition, timeout: float, what: str) -> None:
        await wait_until(condition, timeout, what, self)


@asynccontextmanager
async def pipecat_agent(tap: WireTap, instructions: str | None = None) -> AsyncIterator[PipecatAgent]:
    """Start a Pipecat pipeline whose realtime service dials the tap (ws://.../v1/realtime); stop it on exit."""
    service = OpenAIRealtimeLLMService(
        api_key="unused",
        base_url=tap.url,
        settings=OpenAIRealtimeLLMService.Settings(system_instruction=instructions),
    )
    context = LLMContext()
    aggregators = LLMContextAggregatorPair(context)
    speaker = Speaker()
    pipeline = Pipeline([aggregators.user(), service, speaker, aggregators.assistant()])
    task = PipelineWorker(
        pipeline,
        params=PipelineParams(audio_in_sample_rate=MIC_RATE, audio_out_sample_rate=24000),
        idle_timeout_secs=None,
    )
    agent = PipecatAgent(task=task, service=service, speaker=speaker, mic=Microphone(MIC_RATE), tap=tap)

    @task.event_handler("on_pipeline_error")
    async def on_error(_task, frame: ErrorFrame) -> None:
        agent.errors.append(frame)

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(task)
    running = asyncio.create_task(runner.run())

    async def transport_input() -> None:
        async for samples in agent.mic:
            frame = InputAudioRawFrame(audio=pcm16(samples), sample_rate=MIC_RATE, num_channels=1)
            await task.queue_frame(frame)

    microphone = asyncio.create_task(transport_input())
    try:
        yield agent
    finally:
        microphone.cancel()
        await task.cancel()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(running, 10)
