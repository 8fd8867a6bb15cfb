"""A LiveKit Agents voice agent on our server, without a LiveKit room.

`AgentSession(llm=openai.realtime.RealtimeModel(base_url="http://HOST:PORT/v1"))`, as LiveKit's
realtime examples build it, with the room's audio replaced by LiveKit's own I/O extension points:
`session.input.audio` is a live microphone in a quiet room (48 kHz frames, as a room delivers them)
and `session.output.audio` is a speaker that plays in real time (it keeps the audio instead of
sounding it), reports playback as LiveKit expects, and stops at once on `clear_buffer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from livekit import rtc
from livekit.agents import Agent, AgentSession
from livekit.agents.voice import io
from livekit.plugins import openai

from tests.frameworks.conftest import Microphone, WireTap, wait_until
from tests.routes.conftest import pcm16

MIC_RATE = 48000  # what a LiveKit room hands an agent
SPEAKER_RATE = 24000


class MicrophoneInput(io.AudioInput):
    """`session.input.audio`: the test's microphone as LiveKit audio frames."""

    def __init__(self, mic: Microphone) -> None:
        super().__init__(label="test-microphone")
        self.mic = mic

    async def __anext__(self) -> rtc.AudioFrame:
        samples = await self.mic.__anext__()
        return rtc.AudioFrame(
            data=pcm16(samples),
            sample_rate=self.mic.rate,
            num_channels=1,
            samples_per_channel=len(samples),
        )


@dataclass
class Played:
    """One frame LiveKit gave the speaker, when, and in which playback segment."""

    samples: np.ndarray
    at: float  # time.perf_counter()
    segment: int


class Speaker(io.AudioOutput):
    """`session.output.audio`: plays in real time (a timer, no sound card) and keeps every frame."""

    def __init__(self) -> None:
        super().__init__(
            label="test-speaker",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=SPEAKER_RATE,
        )
        self.played: list[Played] = []
        self.cleared_at: list[float] = []
        self.segment = 0
        self._pushed_s = 0.0
        self._started = 0.0
        self._interrupted = asyncio.Event()
        self._finishing: asyncio.Task[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._finishing is not None and not self._finishing.done():
            await self._finishing
        if not self._pushed_s:
            self.segment += 1
            self._started = time.monotonic()
            self.on_playback_started(created_at=time.time())
        self._pushed_s += frame.duration
        samples = np.frombuffer(bytes(frame.data), dtype="<i2").astype(np.float32) / 32768.0
        self.played.append(Played(samples, time.perf_counter(), self.segment))

    def flush(self) -> None:
        super().flush()
        if self._pushed_s:
            self._interrupted.clear()
            self._finishing = asyncio.create_task(self._play_out())

    def clear_buffer(self) -> None:
        self.cleared_at.append(time.perf_counter())
        if self._pushed_s:
            self._interrupted.set()

    async def _play_out(self) -> None:
        left = self._started + self._pushed_s - time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupted.wait(), max(0.0, left))
        interrupted = self._interrupted.is_set()
        position = min(time.monotonic() - self._started, self._pushed_s) if interrupted else self._pushed_s
        self._pushed_s = 0.0
        self._interrupted.clear()
        self.on_playback_finished(playback_position=position, interrupted=interrupted)

    def audio(self, after: float = 0.0, before: float = float("inf")) -> np.ndarray:
        """What was given to the speaker in [after, before), float32 at 24 kHz."""
        chunks = [p.samples for p in self.played if after <= p.at < before]
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def first_at(self, after: float = 0.0) -> float | None:
        return next((p.at for p in self.played if p.at >= after), None)


@dataclass
class LiveKitAgent:
    """A started AgentSession on our server, its microphone and speaker, and the errors it reported."""

    session: AgentSession
    mic: Microphone
    speaker: Speaker
    tap: WireTap | None = None
    errors: list[object] = field(default_factory=list)
    transcripts: list[tuple[float, str, str]] = field(default_factory=list)  # (at, role, text)

    async def say(self, samples_48k: np.ndarray) -> float:
        return await self.mic.say(samples_48k)

    def said(self, role: str, after: float = 0.0) -> list[str]:
        return [text for at, r, text in self.transcripts if r == role and at >= after]

    framework = "LiveKit"

    async def wait_for(self, condition, timeout: float, what: str) -> None:
        await wait_until(condition, timeout, what, self)


@asynccontextmanager
async def livekit_agent(
    base_url: str, instructions: str, session_options: dict | None = None, **model_options
) -> AsyncIterator[LiveKitAgent]:
    """Start an AgentSession whose realtime model dials `base_url` (http://.../v1); close it on exit."""
    model = openai.realtime.RealtimeModel(base_url=base_url, api_key="unused", **model_options)
    session = AgentSession(llm=model, **(session_options or {}))
    agent = LiveKitAgent(session=session, mic=Microphone(MIC_RATE), speaker=Speaker())
    session.input.audio = MicrophoneInput(agent.mic)
    session.output.audio = agent.speaker

    @session.on("error")
    def on_error(event) -> None:
        agent.errors.append(getattr(event.error, "error", event.error))  # the model's error, not its wrapper

    @session.on("conversation_item_added")
    def on_item(event) -> None:
        text = event.item.text_content if hasattr(event.item, "text_content") else None
        if text:
            agent.transcripts.append((time.perf_counter(), event.item.role, text))

    await session.start(agent=Agent(instructions=instructions))
    try:
        yield agent
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(session.aclose(), 10)
        await model.aclose()
