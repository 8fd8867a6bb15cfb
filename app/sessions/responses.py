"""The responses of one session on the wire: starting one (cutting off the one before), cancelling one so
that the model's conversation keeps only what was heard, pausing and resuming by id, and the assistant
items a client may truncate.

Each response is streamed by its own `ResponseStreamer` task; this module owns which one is current and
tells the session when one starts and ends (turn taking needs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.engine.events import AnswerDone, AnswerStatus, AnswerStream, CancelCause
from app.engine.pool import SessionRef
from app.metrics import Metrics
from app.sessions.audio_formats import OutputAudioConverter
from app.sessions.opus_codec import OpusOutputConverter
from app.sessions.outbound import Outbound
from app.sessions.response_request import ResponseRequest
from app.sessions.response_streamer import ResponseStreamer
from app.sessions.supervision import TaskSupervisor

RESPONSES_KEPT = 4  # responses kept by id for turn taking's commands (only the latest is ever named)


@dataclass(frozen=True)
class TruncateRefusal:
    """Why a conversation.item.truncate cannot be done, and the parameter at fault."""

    message: str
    param: str


@dataclass(frozen=True)
class ResponsePacing:
    """How response audio goes out."""

    delta_ms: int  # one output audio delta
    resume_rewind_ms: int  # a resumed answer repeats this much


class SessionResponses:
    """The current response, recent ones by id, and every assistant item still known (for truncate)."""

    def __init__(
        self,
        outbound: Outbound,
        pacing: ResponsePacing,
        supervisor: TaskSupervisor,
        metrics: Metrics,
        engine_ref: Callable[[], SessionRef],
        on_started: Callable[[ResponseStreamer], None],
        on_finished: Callable[[ResponseStreamer, AnswerStatus, AnswerDone | None], None],
    ) -> None:
        self.outbound = outbound
        self.pacing = pacing
        self._supervisor = supervisor
        self._metrics = metrics
        self._ref = engine_ref
        self._on_started = on_started
        self._on_finished = on_finished
        self.current: ResponseStreamer | None = None  # the response on the wire, if one is
        self._task: asyncio.Task | None = None
        self._by_id: dict[str, ResponseStreamer] = {}
        self._spoken_items: dict[str, ResponseStreamer] = {}  # assistant items by id, for truncate

    def get(self, response_id: str) -> ResponseStreamer | None:
        """A recent response by id (None once forgotten)."""
        return self._by_id.get(response_id)

    def spoken_item(self, item_id: str) -> ResponseStreamer | None:
        """The response that spoke assistant item `item_id`."""
        return self._spoken_items.get(item_id)

    def forget_item(self, item_id: str) -> None:
        self._spoken_items.pop(item_id, None)

    async def truncate(self, item_id: str, content_index: int, audio_end_ms: int) -> TruncateRefusal | None:
        """The client played only `audio_end_ms` of assistant item `item_id`: the model keeps only that text
        (a response still going ends here). A refusal when the parameters name nothing that was sent."""
        streamer = self._spoken_items.get(item_id)
        if streamer is None:
            return TruncateRefusal(
                f"item {item_id!r} is not an assistant audio item: only those can be truncated", "item_id"
            )
        if content_index != 0:
            return TruncateRefusal(
                f"content_index {content_index} does not exist: assistant items have one content part (0)",
                "content_index",
            )
        sent_ms = streamer.audio_ms_sent_total
        if audio_end_ms > sent_ms:
            return TruncateRefusal(
                f"audio_end_ms {audio_end_ms} is past the {sent_ms:.0f} ms of audio sent for this item",
                "audio_end_ms",
            )
        heard = streamer.heard_text(float(audio_end_ms))
        if not streamer.finished:  # the client stopped playing it: the response ends here
            await self.cancel(streamer, CancelCause.CLIENT, heard_text=heard)
        else:
            ref = self._ref()
            await ref.engine.cut_answer(ref.session_id, streamer.response_id, heard)
        return None

    async def start(
        self,
        stream: AnswerStream,
        request: ResponseRequest,
        converter: OutputAudioConverter | OpusOutputConverter,
    ) -> ResponseStreamer:
        """Stream a new answer; one still on the wire is cut off (or, if the engine ended it for this
        one, its last events go out first)."""
        previous, previous_task = self.current, self._task
        if previous is not None:
            if previous.engine_done:
                # Generated already, but its audio is still going out: the new turn cuts it off.
                heard = previous.heard_text()
                if previous.cancel_queued(CancelCause.TURN_DETECTED):
                    ref = self._ref()
                    await ref.engine.cut_answer(ref.session_id, previous.response_id, heard)
            elif previous_task is not None and not previous_task.done():
                # A barge-in: the engine has ended the old answer; its last events come first.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(previous_task), timeout=5)
        streamer = ResponseStreamer(
            stream=stream,
            outbound=self.outbound,
            converter=converter,
            delta_ms=self.pacing.delta_ms,
            started_at=time.perf_counter(),
            rewind_s=self.pacing.resume_rewind_ms / 1000,
            on_finished=self._finished,
            text_only=request.text_only,
            metadata=request.metadata,
            max_output_tokens=request.max_output_tokens,
            out_of_band=request.out_of_band,
        )
        self.current = streamer
        self._by_id[streamer.response_id] = streamer
        while len(self._by_id) > RESPONSES_KEPT:
            del self._by_id[next(iter(self._by_id))]
        if not streamer.out_of_band:
            self._spoken_items[streamer.item_id] = streamer
        self._on_started(streamer)
        self._task = self._supervisor.spawn(streamer.run(), name=f"response-{stream.answer_id}")
        return streamer

    async def cancel(
        self, streamer: ResponseStreamer, cause: CancelCause, heard_text: str | None = None
    ) -> None:
        """End a response early; the model's conversation keeps only what was heard of it."""
        streamer.cancel_cause = cause
        heard = heard_text if heard_text is not None else streamer.heard_text()
        ref = self._ref()
        if streamer.engine_done:
            streamer.cancel_queued(cause)
            await ref.engine.cut_answer(ref.session_id, streamer.response_id, heard)
        else:
            await ref.engine.cancel_answer(ref.session_id, cause.value, heard_text=heard, cause=cause)

    def note_heard(self, streamer: ResponseStreamer, heard_text: str | None) -> None:
        """Tell the engine how much of the answer was heard, should an interruption end it (None: all)."""
        ref = self._ref()
        if not streamer.engine_done:
            ref.engine.note_heard(ref.session_id, streamer.response_id, heard_text)

    def _finished(self, streamer: ResponseStreamer, status: AnswerStatus, done: AnswerDone | None) -> None:
        """The response is over on the wire (its final events are queued)."""
        self._metrics.count_response(status.value)
        if done is not None and "first_audio_latency_s" in done.stats:
            self._metrics.first_audio_s.append(done.stats["first_audio_latency_s"])
            if done.stats.get("audio_seconds"):
                self._metrics.real_time_factor.append(
                    done.stats["answer_seconds"] / done.stats["audio_seconds"]
                )
        if self.current is streamer:
            self.current = None
        self._on_finished(streamer, status, done)
