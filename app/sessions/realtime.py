"""One Realtime conversation: client events in, turn taking, engine calls, server events out.

The route hands every WebSocket message to `handle_message` and gives us two callables (send an
event, close the socket); nothing here knows about sockets or tensors.

Turn taking with `server_vad`: the VAD opens a listen turn on speech (its pre-roll is fed without
letting the state head end the turn, as the published server does); every later 160 ms chunk,
silence included, goes to the engine, whose state head ends the turn: "answer" starts a response
(cancelling one in progress: barge-in), "ignore" drops the turn. If the head never fires, the
VAD's end of speech answers anyway. With turn detection off, the client commits and asks for a
response itself (push to talk).

Speech during an answer is an interruption in two steps: after `min_interruption_ms` of it the answer
pauses (no more audio, and `speech_started`, on which clients flush playback); the state head then
either takes the turn (the answer ends cancelled, `turn_detected`) or ignores it (a backchannel, a
cough), and the answer resumes from where playback stopped, as it does when the VAD closes first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from app.engine.errors import EngineError, SessionClosedError, TurnTooLongError
from app.engine.events import AnswerDone, AnswerStatus, AnswerStream, CancelCause, ChunkDecision
from app.engine.pool import EnginePool, SessionRef
from app.metrics import Metrics
from app.model import CHUNK_SAMPLES as CHUNK
from app.model import ListenState
from app.sessions import events as ev
from app.sessions.audio_formats import MODEL_INPUT_RATE, AudioFormatError
from app.sessions.binary_frames import BinaryFramer
from app.sessions.close_codes import CloseCode
from app.sessions.opus_codec import input_converter_for, output_converter_for
from app.sessions.outbound import Outbound
from app.sessions.refused_fields import refusals, response_refusals, without_refused
from app.sessions.response_request import ResponseRequest, out_of_band_text
from app.sessions.response_streamer import ResponseStreamer
from app.sessions.session_settings import SessionSettings
from app.sessions.supervision import TaskSupervisor
from app.sessions.vad import SpeechStarted, SpeechStopped, VadAudio, VadGate, VadSettings

log = logging.getLogger(__name__)
KNOWN_ITEMS_KEPT = 4096  # item ids a session remembers for truncate/delete; older ones are forgotten
PENDING_TEXT_CHARS_PER_TOKEN = 8  # typed text waiting for response.create: this many chars per cache token


class _RecentIds:
    """A set of the most recent ids, bounded: the oldest is forgotten when it is full."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: dict[str, None] = {}

    def add(self, item_id: str) -> None:
        self._ids.pop(item_id, None)
        self._ids[item_id] = None
        if len(self._ids) > self.capacity:
            del self._ids[next(iter(self._ids))]

    def discard(self, item_id: str) -> None:
        self._ids.pop(item_id, None)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class _FeedItem:
    """Work for the feeder task, tagged with the listen turn it belongs to."""

    kind: str  # "chunk" | "commit" | "drop" | "release" (an interrupting turn the head did not take)
    turn: int
    samples: np.ndarray | None = None
    act: bool = False
    request: ResponseRequest | None = None  # a commit asked for by response.create


class RealtimeSession:
    """The protocol state of one connection."""

    def __init__(
        self,
        pool: EnginePool,
        settings: SessionSettings,
        send: Callable[[ev.ServerEvent | bytes], Awaitable[None]],
        close: Callable[..., Awaitable[None]],  # (code, reason, notice=None): see routes.realtime._Socket
        metrics: Metrics,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self._close_socket = close
        self._send_direct = send  # for the last word when the outbound task itself has failed
        self.metrics = metrics
        # Opus answer audio leaves as binary frames (app.sessions.binary_frames); everything else as JSON.
        self.outbound = Outbound(BinaryFramer().wrap(send), ahead_s=settings.audio_ahead_s)
        self.config = ev.SessionConfig(
            turn_detection=ev.TurnDetection(
                aggressiveness=settings.vad_aggressiveness,
                prefix_padding_ms=settings.vad_prefix_padding_ms,
                silence_duration_ms=settings.vad_silence_ms,
            )
        )
        self.ref: SessionRef | None = None
        self.last_activity = time.monotonic()
        self.opened_at = time.monotonic()
        # Every task of this connection; one that fails ends the session (see `abort`).
        self._supervisor = TaskSupervisor(self.abort)
        self._outbound_task: asyncio.Task | None = None
        self._feed: asyncio.Queue[_FeedItem] = asyncio.Queue()
        self._closed = False
        self._ending = False  # the session is being ended: late messages are dropped
        self._handling = 0  # client messages being handled right now
        # listen turn (our side)
        self._turn = 0
        self._listening = False  # audio goes to the engine
        self._awaiting_response = False  # a committed user turn waits for response.create
        self._user_item_id: str | None = None
        self._speech_stopped_sent = False
        self._turn_unannounced = False
        self._preroll_left = 0
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffered_chunks = 0
        self._pending_text: list[str] = []
        self._last_item_id: str | None = None
        self._known_items = _RecentIds(KNOWN_ITEMS_KEPT)
        # response
        self._streamer: ResponseStreamer | None = None
        self._streamer_task: asyncio.Task | None = None
        # interruption: the response the open listen turn interrupts, and where its speech began
        self._interrupted: ResponseStreamer | None = None
        self._spoken_items: dict[str, ResponseStreamer] = {}  # assistant items by id, for truncate
        self._speech_start_ms = 0
        self._turn_audio_start_ms = 0
        self._apply_formats()

    # -- lifecycle ------------------------------------------------------------------------------
    async def open(self) -> None:
        """Take a place in the engine (or raise CapacityError) and greet the client."""
        self.ref = await self.pool.open_session()
        self.metrics.sessions_opened += 1
        self._outbound_task = self._supervisor.spawn(self.outbound.run(), name="outbound")
        self._supervisor.spawn(self._feeder(), name="feeder")
        self._supervisor.spawn(self._watchdog(), name="watchdog")
        self.outbound.put(ev.SessionCreated(session=self.config))

    async def close(self) -> None:
        """Free everything; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._ending = True
        if self.ref is not None:
            with contextlib.suppress(EngineError):
                await self.pool.close_session(self.ref.session_id)
        self.outbound.close()
        await self._supervisor.stop()

    @property
    def session_id(self) -> str:
        """The engine's id of this session (what the logs name it by)."""
        return self.ref.session_id if self.ref is not None else "(not opened)"

    @property
    def live_tasks(self) -> int:
        """How many of this connection's tasks are running (benchmarks check none outlive it)."""
        return self._supervisor.live_tasks

    async def abort(self, where: str, error: BaseException) -> None:
        """An unexpected exception in one part of this connection (`where`) ends all of it: the client
        gets an `error` (server_error) and close 1011, and every engine resource is freed."""
        log.error("session %s: %s failed; ending the session", self.session_id, where, exc_info=error)
        self.metrics.count_error("internal_error")
        notice = ev.ErrorDetail(
            type="server_error",
            code="internal_error",
            message=f"internal server error in session {self.session_id}; it cannot go on: reconnect",
        )
        # Straight to the socket: the outbound task may be the part that failed. Bounded: the client
        # may not be reading.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._send_direct(ev.ErrorEvent(error=notice)), 2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._close_socket(CloseCode.INTERNAL_ERROR, "internal server error"), 5.0)
        await self.close()

    async def shutdown(self, code: int, reason: str, grace_s: float = 0.0) -> None:
        """Server-side end: cancel the answer, let queued events out briefly, close the socket."""
        if self.ref is not None and self._streamer is not None:
            self._streamer.cancel_reason = "client_cancelled"
            with contextlib.suppress(EngineError):
                await self.ref.engine.cancel_answer(self.ref.session_id, reason)
        await self.outbound.drain(grace_s)
        await self._close_socket(code, reason)

    # -- inbound ----------------------------------------------------------------------------------
    async def handle_message(self, raw: str | bytes) -> None:
        """Handle one WebSocket message: a JSON event, or binary pcm (a raw append)."""
        if self._closed or self._ending:
            return  # a message that was on its way when the session ended
        self.last_activity = time.monotonic()
        # reliab: a message still being handled (waiting on a busy engine) is activity: no idle close.
        self._handling += 1
        try:
            await self._handle_message(raw)
        finally:
            self._handling -= 1
            self.last_activity = time.monotonic()

    async def _handle_message(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes):
            await self._append_audio(raw, event_id=None)
            return
        try:
            event = ev.parse_client_event(raw)
            await self._dispatch(event)
        except ev.ProtocolError as error:
            self._error(error)
        except SessionClosedError as error:
            if self._ending:
                return  # the session was being ended (a slow client, a close) while this message was handled
            await self._fail(str(error))

    def _error(self, error: ev.ProtocolError) -> None:
        self.metrics.count_error(str(error.code))
        self.outbound.put(ev.ErrorEvent.from_protocol_error(error))

    def _client_error(self, code: str, message: str, event_id: str | None, param: str | None = None) -> None:
        self.metrics.count_error(code)
        self.outbound.put(
            ev.ErrorEvent(error=ev.ErrorDetail(code=code, message=message, event_id=event_id, param=param))
        )

    async def _dispatch(self, event: ev.ClientEventBase) -> None:
        handlers = {
            "session.update": self._session_update,
            "input_audio_buffer.append": self._append_event,
            "input_audio_buffer.commit": self._commit,
            "input_audio_buffer.clear": self._clear,
            "conversation.item.create": self._item_create,
            "conversation.item.truncate": self._item_truncate,
            "conversation.item.delete": self._item_delete,
            "conversation.item.retrieve": self._unsupported,
            "response.create": self._response_create,
            "response.cancel": self._response_cancel,
            "output_audio_buffer.clear": self._response_cancel,
        }
        await handlers[event.type](event)

    async def _unsupported(self, event: ev.ClientEventBase) -> None:
        self._client_error(
            "unsupported_event", f"{event.type} is not supported by this server", event.event_id
        )

    # -- session.update -----------------------------------------------------------------------------
    def _apply_formats(self) -> None:
        self.input_converter = input_converter_for(self.config.input_format.wire, MODEL_INPUT_RATE)
        detection = self.config.turn_detection
        self.vad: VadGate | None = None
        if detection is not None:
            self.vad = VadGate(
                VadSettings(
                    aggressiveness=detection.vad_aggressiveness(self.settings.vad_aggressiveness),
                    prefix_padding_ms=detection.prefix_padding_ms,
                    silence_duration_ms=detection.fallback_silence_ms(),
                    noise=self.settings.noise_gate,
                )
            )

    async def _session_update(self, event: ev.SessionUpdate) -> None:
        for refusal in refusals(event.session):
            self._client_error("unsupported_parameter", refusal.message, event.event_id, refusal.param)
        before = self.config
        self.config = self.config.apply(without_refused(event.session)).with_opus_bitrate(
            self.settings.opus_bitrate
        )
        formats_changed = (
            before.input_format != self.config.input_format
            or before.output_format != self.config.output_format
            or before.turn_detection != self.config.turn_detection
        )
        if formats_changed:
            if self._listening:
                await self._drop_listen()
            self._apply_formats()
        if before.instructions != self.config.instructions and self.ref is not None:
            await self.ref.engine.set_instructions(self.ref.session_id, self.config.instructions or None)
        answers_changed = (
            before.output_modalities != self.config.output_modalities
            or before.max_output_tokens != self.config.max_output_tokens
        )
        if answers_changed and self.ref is not None:
            defaults = ResponseRequest.of(self.config).options
            await self.ref.engine.set_answer_defaults(self.ref.session_id, defaults)
        self.outbound.put(ev.SessionUpdated(session=self.config))

    # -- audio in and turn taking ---------------------------------------------------------------------
    async def _append_event(self, event: ev.InputAudioBufferAppend) -> None:
        # A JSON append must hold whole samples: a dangling byte would shift every later sample. Binary
        # frames are a raw byte stream and may split a sample (the converter carries the odd byte).
        sample_bytes = self.input_converter.wire.bytes_per_sample
        if len(event.audio_bytes) % sample_bytes:
            self._client_error(
                "invalid_value",
                f"audio holds {len(event.audio_bytes)} bytes, not a whole number of {sample_bytes}-byte "
                f"samples in {self.input_converter.wire.encoding}; nothing was buffered",
                event.event_id,
                "audio",
            )
            return
        await self._append_audio(event.audio_bytes, event.event_id)

    async def _append_audio(self, data: bytes, event_id: str | None) -> None:
        try:
            samples = self.input_converter.push(data)
        except AudioFormatError as error:
            self._client_error("invalid_audio", str(error), event_id)
            return
        if self.vad is None:  # push to talk: everything appended is the user's turn
            if not self._listening and not self._awaiting_response:
                self._open_turn(audio_start_ms=0, announce=False)
            if self._listening:
                self._buffer_audio(samples, act=False)
            return
        for item in self.vad.push(samples):
            if isinstance(item, SpeechStarted):
                self._on_speech_started(item)
            elif isinstance(item, VadAudio):
                if self._listening:
                    self._buffer_audio(item.samples, act=self._acting())
            elif isinstance(item, SpeechStopped):
                await self._on_speech_stopped(item)
        self._pause_if_interrupting()

    def _acting(self) -> bool:
        detection = self.config.turn_detection
        return self._preroll_left <= 0 and detection is not None and detection.create_response

    def _on_speech_started(self, started: SpeechStarted) -> None:
        detection = self.config.turn_detection
        if self._listening or self._awaiting_response:
            return
        answering = self._streamer if self._streamer is not None and not self._streamer.finished else None
        if answering is not None and detection is not None and not detection.interrupt_response:
            return  # the client asked us not to be interrupted: the answer plays on, unpaused
        # Speech during an answer is announced only once it has lasted min_interruption_ms (the pause).
        self._open_turn(started.audio_start_ms, announce=answering is None)
        self._interrupted = answering
        if answering is not None:  # should the head take the turn at once, this much was heard
            self._note_heard(answering, answering.heard_text())
        self._speech_start_ms = started.speech_start_ms
        self._preroll_left = len(started.audio)
        self._buffer_audio(started.audio, act=False)

    def _pause_if_interrupting(self) -> None:
        """Pause the interrupted answer once the speech has lasted `min_interruption_ms`."""
        streamer = self._interrupted
        if streamer is None or streamer.paused or not self._listening or self.vad is None:
            return
        if self.vad.clock_ms - self._speech_start_ms < self.settings.min_interruption_ms:
            return
        if streamer.pause():
            self._note_heard(streamer, streamer.heard_text())
        else:  # it ended meanwhile: an ordinary turn now
            self._interrupted = None
        self._announce_turn()

    def _note_heard(self, streamer: ResponseStreamer, heard_text: str | None) -> None:
        """Tell the engine how much of the answer was heard, should the interruption end it."""
        if self.ref is not None and not streamer.engine_done:
            self.ref.engine.note_heard(self.ref.session_id, streamer.response_id, heard_text)

    async def _on_speech_stopped(self, stopped: SpeechStopped) -> None:
        if not self._listening:
            return
        if self._interrupted is not None and not self._interrupted.finished:
            # Unless the head takes the turn on the audio it has not heard yet, this was no
            # interruption after all: once it has heard it all, the turn is dropped and the answer goes on.
            self._send_speech_stopped(stopped.audio_end_ms)
            self._flush_partial_chunk(act=self._acting())
            self._feed.put_nowait(_FeedItem("release", self._turn))
            return
        self._send_speech_stopped(stopped.audio_end_ms)
        # The state head had its chance during the silence: answer now (fallback), once all the
        # audio heard so far has been fed.
        self._flush_partial_chunk(act=False)
        self._feed.put_nowait(_FeedItem("commit", self._turn))

    def _open_turn(self, audio_start_ms: int, announce: bool = True) -> None:
        """Start a user turn; only a VAD-detected one is announced with speech_started (maybe later)."""
        self._turn += 1
        self._listening = True
        self._speech_stopped_sent = True  # nothing to stop until something was started
        self._turn_unannounced = True
        self._user_item_id = ev.new_item_id()
        self._turn_audio_start_ms = audio_start_ms
        self._buffer = np.zeros(0, dtype=np.float32)
        self._buffered_chunks = 0
        if announce:
            self._announce_turn()

    def _announce_turn(self) -> None:
        if not self._turn_unannounced or self._user_item_id is None:
            return
        self._turn_unannounced = False
        self._speech_stopped_sent = False
        self.outbound.put(
            ev.InputAudioBufferSpeechStarted(
                audio_start_ms=self._turn_audio_start_ms, item_id=self._user_item_id
            )
        )

    def _send_speech_stopped(self, audio_end_ms: int | None = None) -> None:
        if self._speech_stopped_sent or self._user_item_id is None:
            return
        self._speech_stopped_sent = True
        end_ms = audio_end_ms if audio_end_ms is not None else (self.vad.clock_ms if self.vad else 0)
        self.outbound.put(ev.InputAudioBufferSpeechStopped(audio_end_ms=end_ms, item_id=self._user_item_id))

    def _buffer_audio(self, samples: np.ndarray, act: bool) -> None:
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float32)])
        while len(self._buffer) >= CHUNK:
            chunk, self._buffer = self._buffer[:CHUNK], self._buffer[CHUNK:]
            self._queue_chunk(chunk, act and self._preroll_left <= 0)
            self._preroll_left -= CHUNK

    def _flush_partial_chunk(self, act: bool) -> None:
        if len(self._buffer):
            padded = np.concatenate([self._buffer, np.zeros(CHUNK - len(self._buffer), dtype=np.float32)])
            self._buffer = np.zeros(0, dtype=np.float32)
            self._queue_chunk(padded, act)

    def _queue_chunk(self, chunk: np.ndarray, act: bool) -> None:
        if self._feed.qsize() * CHUNK / MODEL_INPUT_RATE > self.settings.max_pending_audio_seconds:
            self._client_error(
                "input_audio_overflow",
                "the server cannot keep up with this input; audio was dropped (send audio in real time)",
                None,
            )
            return
        self._buffered_chunks += 1
        self._feed.put_nowait(_FeedItem("chunk", self._turn, chunk, act))

    async def _feeder(self) -> None:
        """Feed chunks and turn commands to the engine in order; act on the state head's verdicts."""
        while True:
            item = await self._feed.get()
            if self.ref is None or (item.kind != "drop" and item.turn != self._turn):
                continue  # the turn it belonged to has ended
            engine, sid = self.ref.engine, self.ref.session_id
            try:
                if item.kind == "chunk":
                    decision = await engine.feed_chunk(sid, item.samples, act=item.act)
                    await self._on_decision(item.turn, decision)
                elif item.kind == "commit":
                    if self._listening or self._awaiting_response:
                        self._committed_events()
                        options = item.request.options if item.request is not None else None
                        stream = await engine.commit_listen(sid, options)
                        self._end_turn()
                        if stream is not None:
                            await self._start_response(stream, item.request)
                elif item.kind == "drop":
                    await engine.drop_listen(sid)
                elif item.kind == "release":
                    await self._release_interruption()
            except SessionClosedError as error:
                await self._fail(str(error))
                return

    async def _on_decision(self, turn: int, decision: ChunkDecision) -> None:
        if decision.skipped or turn != self._turn:
            return
        if decision.state == ListenState.ANSWER:
            interrupted, self._interrupted = self._interrupted, None
            if interrupted is not None:
                self._announce_turn()  # taken before the pause: the client still hears speech_started first
                interrupted.cancel_reason = "turn_detected"
            if decision.answer_id is not None:  # the engine answered: our turn is over
                self._send_speech_stopped()
                self._committed_events()
                self._end_turn()
                if decision.stream is not None:
                    await self._start_response(decision.stream)
            elif self.config.turn_detection is not None and not self.config.turn_detection.create_response:
                # The turn is over but the client starts responses itself.
                self._send_speech_stopped()
                self._committed_events()
                self._listening = False
                self._awaiting_response = True
                self._reset_vad()
                if interrupted is not None:
                    await self._cancel_response(interrupted, "turn_detected")
        elif decision.state == ListenState.IGNORE and decision.turn_ended:
            # Noise or a backchannel: the engine dropped the turn; an answer in progress goes on.
            unannounced = self._turn_unannounced
            self._send_speech_stopped()
            if not unannounced:
                self.outbound.put(ev.InputAudioBufferCleared())
            self._end_turn()

    async def _release_interruption(self) -> None:
        """The VAD closed an interrupting turn and the head, having heard all of it, did not take it."""
        if not self._listening or self._interrupted is None:
            return
        if self._interrupted.finished:  # the answer ended meanwhile (cancelled): an ordinary turn
            self._interrupted = None
            self._feed.put_nowait(_FeedItem("commit", self._turn))
            return
        if not self._turn_unannounced:
            self.outbound.put(ev.InputAudioBufferCleared())
        await self._drop_listen()

    def _committed_events(self) -> None:
        if self._user_item_id is None:
            return
        item = ev.ConversationItem(
            id=self._user_item_id,
            type="message",
            role="user",
            status="completed",
            content=[ev.ContentPart(type="input_audio", transcript=None)],
        )
        self.outbound.put(
            ev.InputAudioBufferCommitted(item_id=self._user_item_id, previous_item_id=self._last_item_id)
        )
        self.outbound.put(ev.ConversationItemAdded(item=item, previous_item_id=self._last_item_id))
        self.outbound.put(ev.ConversationItemDone(item=item, previous_item_id=self._last_item_id))
        self._last_item_id = self._user_item_id
        self._known_items.add(self._user_item_id)

    def _end_turn(self) -> None:
        interrupted, self._interrupted = self._interrupted, None
        if interrupted is not None:
            interrupted.resume()  # the turn ended without taking over: the answer goes on
            self._note_heard(interrupted, None)
        self._turn += 1  # chunks still queued for the old turn are dropped by the feeder
        self._listening = False
        self._awaiting_response = False
        self._user_item_id = None
        self._buffer = np.zeros(0, dtype=np.float32)
        self._reset_vad()

    def _reset_vad(self) -> None:
        if self.vad is not None:
            self.vad.reset()

    async def _drop_listen(self) -> None:
        self._end_turn()
        self._feed.put_nowait(_FeedItem("drop", self._turn))

    # -- input_audio_buffer.commit / clear --------------------------------------------------------------
    async def _commit(self, event: ev.InputAudioBufferCommit) -> None:
        if not self._listening or (self._buffered_chunks == 0 and len(self._buffer) == 0):
            self._client_error(
                "input_audio_buffer_commit_empty",
                "the input audio buffer is empty: append audio before committing",
                event.event_id,
            )
            return
        self._flush_partial_chunk(act=False)
        self._send_speech_stopped()
        self._listening = False
        self._awaiting_response = True
        self._committed_events()
        self._user_item_id = None

    async def _clear(self, event: ev.InputAudioBufferClear) -> None:
        if self._listening or self._awaiting_response:
            await self._drop_listen()
        self.input_converter.reset()
        self.outbound.put(ev.InputAudioBufferCleared())

    # -- conversation items -------------------------------------------------------------------------
    async def _item_create(self, event: ev.ConversationItemCreate) -> None:
        item = event.item
        if item.type != "message":
            self._client_error(
                "unsupported_item", f"items of type {item.type} are not supported", event.event_id
            )
            return
        item = item.model_copy(update={"id": item.id or ev.new_item_id(), "status": "completed"})
        texts = [
            p.text for p in item.content or [] if p.type in ("input_text", "text", "output_text") and p.text
        ]
        audio = [p.audio_bytes for p in item.content or [] if p.type == "input_audio" and p.audio_bytes]
        if item.role == "user" and audio:
            if self._listening or self._awaiting_response:
                await self._drop_listen()
            self._turn += 1
            self._listening = True
            self._user_item_id = item.id
            try:
                samples = input_converter_for(self.config.input_format.wire, MODEL_INPUT_RATE)
                audio_16k = np.concatenate([samples.push(a) for a in audio] + [samples.flush()])
            except AudioFormatError as error:
                self._client_error("invalid_audio", str(error), event.event_id)
                return
            self._buffer_audio(audio_16k, act=False)
            self._flush_partial_chunk(act=False)
            self._listening = False
            self._awaiting_response = True
            self._user_item_id = None
        elif item.role == "user" and texts:
            text = " ".join(texts)
            # Typed turns waiting for response.create are bounded by what the conversation could hold.
            limit = PENDING_TEXT_CHARS_PER_TOKEN * self.settings.llm_max_len
            if sum(map(len, self._pending_text)) + len(text) > limit:
                self._client_error(
                    "pending_text_too_long",
                    f"more than {limit} characters of user text wait for a response (the conversation "
                    "holds FREEZE_OMNI_LLM_MAX_LEN tokens): send response.create first; the item was not added",
                    event.event_id,
                )
                return
            self._pending_text.append(text)
        self.outbound.put(ev.ConversationItemAdded(item=item, previous_item_id=self._last_item_id))
        self.outbound.put(ev.ConversationItemDone(item=item, previous_item_id=self._last_item_id))
        self._last_item_id = item.id
        self._known_items.add(item.id)

    def _known_item(self, item_id: str, event: ev.ClientEventBase) -> bool:
        if item_id in self._known_items:
            return True
        self._client_error(
            "item_not_found", f"no conversation item with id {item_id!r}", event.event_id, "item_id"
        )
        return False

    async def _item_truncate(self, event: ev.ConversationItemTruncate) -> None:
        """The client played only `audio_end_ms` of an assistant item: the model keeps only that text."""
        if not self._known_item(event.item_id, event):
            return
        streamer = self._spoken_items.get(event.item_id)
        if streamer is None:
            self._client_error(
                "invalid_value",
                f"item {event.item_id!r} is not an assistant audio item: only those can be truncated",
                event.event_id,
                "item_id",
            )
            return
        if event.content_index != 0:
            self._client_error(
                "invalid_value",
                f"content_index {event.content_index} does not exist: assistant items have one content part (0)",
                event.event_id,
                "content_index",
            )
            return
        sent_ms = streamer.audio_ms_sent_total
        if event.audio_end_ms > sent_ms:
            self._client_error(
                "invalid_value",
                f"audio_end_ms {event.audio_end_ms} is past the {sent_ms:.0f} ms of audio sent for this item",
                event.event_id,
                "audio_end_ms",
            )
            return
        heard = streamer.heard_text(float(event.audio_end_ms))
        if not streamer.finished:  # the client stopped playing it: the response ends here
            await self._cancel_response(streamer, "client_cancelled", heard_text=heard)
        else:
            await self.ref.engine.cut_answer(self.ref.session_id, streamer.response_id, heard)
        self.outbound.put(
            ev.ConversationItemTruncated(
                item_id=event.item_id, content_index=event.content_index, audio_end_ms=event.audio_end_ms
            )
        )

    async def _item_delete(self, event: ev.ConversationItemDelete) -> None:
        if self._known_item(event.item_id, event):
            self._known_items.discard(event.item_id)
            self._spoken_items.pop(event.item_id, None)
            self.outbound.put(ev.ConversationItemDeleted(item_id=event.item_id))

    # -- responses ----------------------------------------------------------------------------------------
    async def _response_create(self, event: ev.ResponseCreate) -> None:
        if self._streamer is not None:
            self._client_error(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self._streamer.response_id}. "
                "Wait until the response is finished before creating a new one.",
                event.event_id,
            )
            return
        refused = response_refusals(event.response, self.config)
        for refusal in refused:
            self._client_error("unsupported_parameter", refusal.message, event.event_id, refusal.param)
        if refused:
            return
        request = ResponseRequest.of(self.config, event.response)
        engine, sid = self.ref.engine, self.ref.session_id
        if request.out_of_band:
            await self._out_of_band_response(event, request)
            return
        if self._pending_text and not self._awaiting_response:
            # A typed turn wins over speech still in progress, which is dropped.
            if self._listening:
                await self._drop_listen()
        elif self._awaiting_response or self._listening:
            self._flush_partial_chunk(act=False)
            self._feed.put_nowait(_FeedItem("commit", self._turn, request=request))
            return
        if self._pending_text:
            text, self._pending_text = "\n".join(self._pending_text), []
            stream = await self._typed_turn(text, request, event.event_id, "item.content")
            if stream is not None:
                await self._start_response(stream, request)
            return
        # No new user input: the assistant speaks (first, or again) from its instructions, as OpenAI's does.
        await self._start_response(await engine.respond(sid, request.options), request)

    async def _out_of_band_response(self, event: ev.ResponseCreate, request: ResponseRequest) -> None:
        """Answer the response's own input; the default conversation is left exactly as it was."""
        if self._listening or self._awaiting_response:
            self._client_error(
                "user_turn_in_progress",
                "the user is speaking: send the out-of-band response.create after the turn is answered",
                event.event_id,
            )
            return
        try:
            text = out_of_band_text(event.response.input if event.response else None)
        except ev.ProtocolError as error:
            error.event_id = event.event_id
            self._error(error)
            return
        engine, sid = self.ref.engine, self.ref.session_id
        if text is None:
            stream = await engine.respond(sid, request.options)
        else:
            stream = await self._typed_turn(text, request, event.event_id, "response.input")
            if stream is None:
                return
        await self._start_response(stream, request)

    async def _typed_turn(
        self, text: str, request: ResponseRequest, event_id: str | None, param: str
    ) -> AnswerStream | None:
        """The answer stream of a typed turn, or None (and an `error` naming `param`) when the text
        cannot fit the conversation: the session goes on without it."""
        try:
            return await self.ref.engine.text_turn(self.ref.session_id, text, request.options)
        except TurnTooLongError as error:
            self._client_error(
                "context_length_exceeded",
                f"{error}: it was not answered; send a shorter one",
                event_id,
                param,
            )
            return None

    async def _response_cancel(self, event: ev.ClientEventBase) -> None:
        if self._streamer is None:
            self._client_error(
                "response_cancel_not_active", "Cancellation failed: no active response found", event.event_id
            )
            return
        await self._cancel_response(self._streamer, "client_cancelled")

    async def _cancel_response(
        self, streamer: ResponseStreamer, reason: str, heard_text: str | None = None
    ) -> None:
        """End a response early; the model's conversation keeps only what was heard of it."""
        streamer.cancel_reason = reason
        heard = heard_text if heard_text is not None else streamer.heard_text()
        engine, sid = self.ref.engine, self.ref.session_id
        if streamer.engine_done:
            streamer.cancel_queued(reason)
            await engine.cut_answer(sid, streamer.response_id, heard)
        else:
            cause = CancelCause.TURN_DETECTED if reason == "turn_detected" else CancelCause.CLIENT
            await engine.cancel_answer(sid, reason, heard_text=heard, cause=cause)

    async def _start_response(self, stream: AnswerStream, request: ResponseRequest | None = None) -> None:
        previous, previous_task = self._streamer, self._streamer_task
        if previous is not None:
            if previous.engine_done:
                # Generated already, but its audio is still going out: the new turn cuts it off.
                heard = previous.heard_text()
                if previous.cancel_queued("turn_detected"):
                    await self.ref.engine.cut_answer(self.ref.session_id, previous.response_id, heard)
            elif previous_task is not None and not previous_task.done():
                # A barge-in: the engine has ended the old answer; its last events come first.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(previous_task), timeout=5)
        streamer = ResponseStreamer(
            stream=stream,
            outbound=self.outbound,
            converter=output_converter_for(self.config.output_format.wire),
            delta_ms=self.settings.audio_delta_ms,
            started_at=time.perf_counter(),
            rewind_s=self.settings.resume_rewind_ms / 1000,
            on_finished=self._response_finished,
            **_streamer_fields(request or ResponseRequest.of(self.config)),
        )
        self._streamer = streamer
        if not streamer.out_of_band:
            self._known_items.add(streamer.item_id)
            self._spoken_items[streamer.item_id] = streamer
        self._streamer_task = self._supervisor.spawn(streamer.run(), name=f"response-{stream.answer_id}")

    def _response_finished(
        self, streamer: ResponseStreamer, status: AnswerStatus, done: AnswerDone | None
    ) -> None:
        """The response is over on the wire (its final events are queued)."""
        self.last_activity = time.monotonic()  # reliab: the client's idle time starts after the answer
        self.metrics.count_response(status.value)
        if done is not None and "first_audio_latency_s" in done.stats:
            self.metrics.first_audio_s.append(done.stats["first_audio_latency_s"])
            if done.stats.get("audio_seconds"):
                self.metrics.real_time_factor.append(
                    done.stats["answer_seconds"] / done.stats["audio_seconds"]
                )
        if self._streamer is streamer:
            self._streamer = None
        if status == AnswerStatus.FAILED:
            reason = done.reason if done is not None else "the answer failed"
            self._supervisor.spawn(self._fail(reason), name="fail")

    async def _fail(self, message: str) -> None:
        self.outbound.put(
            ev.ErrorEvent(error=ev.ErrorDetail(type="server_error", code="session_failed", message=message))
        )
        await self.outbound.drain(1.0)
        await self._close_socket(CloseCode.INTERNAL_ERROR, "session failed")

    # -- timers -----------------------------------------------------------------------------------------
    def _not_reading(self) -> bool:
        """Whether the client has stopped taking what we send (see `Outbound.stalled_s`)."""
        outbound = self.outbound
        return outbound.overflowed or outbound.stalled_s() > self.settings.max_outbound_seconds

    async def _close_slow_client(self) -> None:
        """Free the session at once, then tell the client (if it ever reads again) and close with 4000."""
        log.warning(
            "session %s: the client has taken nothing for %.1f s; closing it (%d)",
            self.session_id,
            self.outbound.stalled_s(),
            CloseCode.CLIENT_TOO_SLOW,
        )
        self.metrics.count_error("client_too_slow")
        self._ending = True
        if self.ref is not None:
            with contextlib.suppress(EngineError):
                await self.pool.close_session(self.ref.session_id)
        self.outbound.discard_all()
        self.outbound.close()
        if self._outbound_task is not None:
            self._outbound_task.cancel()  # its send waits on the client; ours go straight to the socket
        notice = ev.ErrorDetail(
            type="invalid_request_error",
            code="client_too_slow",
            message=f"the client read nothing for {self.settings.max_outbound_seconds:g} s of audio "
            "(FREEZE_OMNI_MAX_OUTBOUND_SECONDS); closing the session",
        )
        # The notice and the close queue behind what the client has not taken, without waiting for it;
        # a client that takes neither is disconnected (FREEZE_OMNI_WS_CLOSE_TIMEOUT_S).
        await self._close_socket(
            CloseCode.CLIENT_TOO_SLOW, "client too slow", notice=ev.ErrorEvent(error=notice)
        )

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.settings.idle_timeout_s / 4))
            if self._not_reading():
                await self._close_slow_client()
                return
            age = time.monotonic() - self.opened_at
            if age > self.settings.max_session_seconds and self._streamer is None:
                self._client_error(
                    "session_expired",
                    f"this session reached the maximum duration of {self.settings.max_session_seconds:g} s "
                    "(FREEZE_OMNI_MAX_SESSION_SECONDS): start a new one",
                    None,
                )
                await self.outbound.drain(1.0)
                await self._close_socket(CloseCode.NORMAL, "session expired")
                return
            idle = time.monotonic() - self.last_activity
            if idle > self.settings.idle_timeout_s and self._streamer is None and not self._handling:
                self._client_error(
                    "idle_timeout",
                    f"no client event for {self.settings.idle_timeout_s:g} s: closing the session",
                    None,
                )
                await self.outbound.drain(1.0)
                await self._close_socket(CloseCode.NORMAL, "idle timeout")
                return


def _streamer_fields(request: ResponseRequest) -> dict:
    """The response's own settings, as the streamer writes them into its events."""
    return dict(
        text_only=request.text_only,
        metadata=request.metadata,
        max_output_tokens=request.max_output_tokens,
        out_of_band=request.out_of_band,
    )
