"""One Realtime conversation: client events in, engine calls, server events out.

The route hands every WebSocket message to `handle_message` and gives us two callables (send an
event, close the socket); nothing here knows about sockets or tensors, and nothing here decides turn
taking: audio goes through the VAD, and the VAD's events, the engine's verdicts and the client's turn
events become inputs of `TurnTaking` (app.sessions.turn_taking), whose commands this session carries
out (server events, engine work queued in order, responses paused, resumed or cancelled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import numpy as np

from app.engine.errors import EngineError, SessionClosedError, TurnTooLongError
from app.engine.events import AnswerDone, AnswerStatus, AnswerStream, CancelCause
from app.engine.pool import EnginePool, SessionRef
from app.metrics import Metrics
from app.sessions import events as ev
from app.sessions import turn_events as tt
from app.sessions.audio_formats import MODEL_INPUT_RATE, AudioFormatError
from app.sessions.binary_frames import BinaryFramer
from app.sessions.close_codes import CloseCode
from app.sessions.engine_feed import EngineFeed
from app.sessions.opus_codec import input_converter_for, output_converter_for
from app.sessions.outbound import Outbound
from app.sessions.recent_ids import RecentIds
from app.sessions.refused_fields import refusals, response_refusals, without_refused
from app.sessions.response_request import ResponseRequest, out_of_band_text
from app.sessions.response_streamer import ResponseStreamer
from app.sessions.responses import ResponsePacing, SessionResponses
from app.sessions.session_settings import SessionSettings
from app.sessions.supervision import TaskSupervisor
from app.sessions.turn_events import TurnSettings
from app.sessions.turn_taking import TurnTaking
from app.sessions.vad import SpeechStarted, SpeechStopped, VadAudio, VadGate, VadSettings

log = logging.getLogger(__name__)
KNOWN_ITEMS_KEPT = 4096  # item ids a session remembers for truncate/delete; older ones are forgotten
PENDING_TEXT_CHARS_PER_TOKEN = 8  # typed text waiting for response.create: this many chars per cache token
# A response on the wire that has sent nothing for this long (not paused by an interruption, not waiting
# on its first audio) is logged once with where it stands: a diagnosis, no action.
STALLED_RESPONSE_LOG_S = 10.0
STALLED_RESPONSE_FORMAT = (  # benchmarks/soak.py reads these lines (see its `RESPONSE_STALL`)
    "session %s: response %s sent nothing for %.1f s (cause=%s); streamer %s; outbound %s; turn %s; engine %s"
)


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
        self._closed = False
        self._ending = False  # the session is being ended: late messages are dropped
        self._handling = 0  # client messages being handled right now
        self.turns = TurnTaking(self._turn_settings())  # every turn-taking decision
        self.feed = EngineFeed(
            settings.max_pending_audio_seconds,
            engine_ref=lambda: self.ref,
            current_turn=lambda: self.turns.turn,
            deliver=self._turn_input,
            on_closed=self._fail,
        )
        self._pending_text: list[str] = []
        self._stall_logged: str | None = None  # the response a stall was last logged for
        self._last_item_id: str | None = None
        self._known_items = RecentIds(KNOWN_ITEMS_KEPT)
        self.responses = SessionResponses(
            self.outbound,
            ResponsePacing(settings.audio_delta_ms, settings.resume_rewind_ms),
            self._supervisor,
            metrics,
            engine_ref=lambda: self.ref,
            on_started=self._response_started,
            on_finished=self._response_finished,
        )
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
        if self.ref is not None and self.responses.current is not None:
            self.responses.current.cancel_cause = CancelCause.CLIENT
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
        # A message still being handled (waiting on a busy engine) is activity: no idle close.
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

    def _turn_settings(self) -> TurnSettings:
        detection = self.config.turn_detection
        return TurnSettings(
            server_vad=detection is not None,
            create_response=detection is None or detection.create_response,
            interrupt_response=detection is None or detection.interrupt_response,
            min_interruption_ms=self.settings.min_interruption_ms,
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
            await self._turn_input(tt.DetectionChanged(self._turn_settings()))
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
            await self._turn_input(tt.PushToTalkAudio(samples))
            return
        for item in self.vad.push(samples):
            if isinstance(item, SpeechStarted):
                await self._turn_input(
                    tt.VadSpeechStarted(item.audio_start_ms, item.speech_start_ms, item.audio)
                )
            elif isinstance(item, VadAudio):
                await self._turn_input(tt.VadSpeech(item.samples))
            elif isinstance(item, SpeechStopped):
                await self._turn_input(tt.VadSpeechStopped(item.audio_end_ms))
        await self._turn_input(tt.AudioHeard(self.vad.clock_ms))

    async def _turn_input(self, event: tt.TurnInput, event_id: str | None = None) -> None:
        """Hand one input to turn taking and carry out what it decides."""
        for command in self.turns.handle(event):
            await self._carry_out(command, event_id)

    async def _carry_out(self, command: tt.TurnCommand, event_id: str | None) -> None:
        """Turn one turn-taking command into server events, queued engine work or response control."""
        match command:
            case tt.AnnounceSpeechStarted(audio_start_ms=start_ms, item_id=item_id):
                self.outbound.put(ev.InputAudioBufferSpeechStarted(audio_start_ms=start_ms, item_id=item_id))
            case tt.AnnounceSpeechStopped(item_id=item_id, audio_end_ms=end_ms):
                if end_ms is None:
                    end_ms = self.vad.clock_ms if self.vad is not None else 0
                self.outbound.put(ev.InputAudioBufferSpeechStopped(audio_end_ms=end_ms, item_id=item_id))
            case tt.AnnounceCleared():
                self.outbound.put(ev.InputAudioBufferCleared())
            case tt.AnnounceCommitted(item_id=item_id):
                self._committed_events(item_id)
            case tt.FeedChunk():
                if not self.feed.put(command):
                    self._client_error(
                        "input_audio_overflow",
                        "the server cannot keep up with this input; audio was dropped (send audio in real time)",
                        None,
                    )
            case tt.QueueCommit() | tt.QueueRelease() | tt.QueueDrop():
                self.feed.put(command)
            case tt.CommitNow(request=request):
                options = request.options if request is not None else None
                stream = await self.ref.engine.commit_listen(self.ref.session_id, options)
                await self._turn_input(tt.TurnAnswered(stream, request))
            case tt.StartResponse(stream=stream, request=request):
                await self._start_response(stream, request)
            case tt.PauseResponse(response_id=response_id):
                if (streamer := self.responses.get(response_id)) is not None:
                    streamer.pause()
            case tt.ResumeResponse(response_id=response_id):
                if (streamer := self.responses.get(response_id)) is not None:
                    streamer.resume()
            case tt.CancelResponse(response_id=response_id, cause=cause):
                if (streamer := self.responses.get(response_id)) is not None:
                    await self.responses.cancel(streamer, cause)
            case tt.NoteHeard(response_id=response_id, whole=whole):
                if (streamer := self.responses.get(response_id)) is not None:
                    self.responses.note_heard(streamer, None if whole else streamer.heard_text())
            case tt.ResetVad():
                if self.vad is not None:
                    self.vad.reset()
            case tt.RefuseEmptyCommit():
                self._client_error(
                    "input_audio_buffer_commit_empty",
                    "the input audio buffer is empty: append audio before committing",
                    event_id,
                )
            case _:
                raise TypeError(f"no way to carry out {type(command).__name__}")

    async def _feeder(self) -> None:
        """The session's task that carries out its engine work in order (see `EngineFeed`)."""
        await self.feed.run()

    def _committed_events(self, item_id: str) -> None:
        item = ev.ConversationItem(
            id=item_id,
            type="message",
            role="user",
            status="completed",
            content=[ev.ContentPart(type="input_audio", transcript=None)],
        )
        self.outbound.put(ev.InputAudioBufferCommitted(item_id=item_id, previous_item_id=self._last_item_id))
        self.outbound.put(ev.ConversationItemAdded(item=item, previous_item_id=self._last_item_id))
        self.outbound.put(ev.ConversationItemDone(item=item, previous_item_id=self._last_item_id))
        self._last_item_id = item_id
        self._known_items.add(item_id)

    # -- input_audio_buffer.commit / clear --------------------------------------------------------------
    async def _commit(self, event: ev.InputAudioBufferCommit) -> None:
        await self._turn_input(tt.ClientCommit(), event.event_id)

    async def _clear(self, event: ev.InputAudioBufferClear) -> None:
        await self._turn_input(tt.ClientClear())
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
            try:
                samples = input_converter_for(self.config.input_format.wire, MODEL_INPUT_RATE)
                audio_16k = np.concatenate([samples.push(a) for a in audio] + [samples.flush()])
            except AudioFormatError as error:
                self._client_error("invalid_audio", str(error), event.event_id)
                return
            await self._turn_input(tt.AudioItemAdded(item.id, audio_16k))
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
        refusal = await self.responses.truncate(event.item_id, event.content_index, event.audio_end_ms)
        if refusal is not None:
            self._client_error("invalid_value", refusal.message, event.event_id, refusal.param)
            return
        self.outbound.put(
            ev.ConversationItemTruncated(
                item_id=event.item_id, content_index=event.content_index, audio_end_ms=event.audio_end_ms
            )
        )

    async def _item_delete(self, event: ev.ConversationItemDelete) -> None:
        if self._known_item(event.item_id, event):
            self._known_items.discard(event.item_id)
            self.responses.forget_item(event.item_id)
            self.outbound.put(ev.ConversationItemDeleted(item_id=event.item_id))

    # -- responses ----------------------------------------------------------------------------------------
    async def _response_create(self, event: ev.ResponseCreate) -> None:
        if self.responses.current is not None:
            self._client_error(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self.responses.current.response_id}. "
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
        decided = self.turns.handle(tt.ResponseRequested(bool(self._pending_text), request))
        for command in decided:
            await self._carry_out(command, event.event_id)
        if any(isinstance(command, tt.QueueCommit) for command in decided):
            return  # the user's turn is answered once all of it has been heard
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
        if self.turns.turn_in_progress:
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
        if self.responses.current is None:
            self._client_error(
                "response_cancel_not_active", "Cancellation failed: no active response found", event.event_id
            )
            return
        await self.responses.cancel(self.responses.current, CancelCause.CLIENT)

    async def _start_response(self, stream: AnswerStream, request: ResponseRequest | None = None) -> None:
        await self.responses.start(
            stream,
            request or ResponseRequest.of(self.config),
            output_converter_for(self.config.output_format.wire),
        )

    def _response_started(self, streamer: ResponseStreamer) -> None:
        if not streamer.out_of_band:
            self._known_items.add(streamer.item_id)
        self.turns.handle(tt.ResponseStarted(streamer.response_id))

    def _response_finished(
        self, streamer: ResponseStreamer, status: AnswerStatus, done: AnswerDone | None
    ) -> None:
        """The response is over on the wire (its final events are queued)."""
        self.last_activity = time.monotonic()  # the client's idle time starts after the answer
        self.turns.handle(tt.ResponseFinished(streamer.response_id))
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

    def _log_stalled_response(self) -> None:
        """Log, once per response, one that has begun and then sent nothing for a while, with its likely
        cause: `client_not_reading` (our send waits on the client), `paused_by_interruption` (the user
        spoke into it and the engine has not yet decided on that turn: `listen_pending` chunks wait to be
        heard), `engine_behind_real_time` (the engine still works on it and its audio runs behind
        playback: an overloaded engine, answers come late), or `unexplained` (nothing waits on the
        engine or the client: a bug)."""
        streamer = self.responses.current
        if streamer is None or streamer.response_id == self._stall_logged:
            return
        if streamer.audio_ms_sent_total <= 0 and not streamer.transcript_sent:
            return  # nothing of it has gone out yet: its first audio or text is late (a busy engine)
        quiet_s = time.monotonic() - max(self.outbound.last_sent_at, streamer.started_monotonic)
        if quiet_s < STALLED_RESPONSE_LOG_S:
            return
        self._stall_logged = streamer.response_id
        engine = self.ref.engine.describe_answer(self.ref.session_id) if self.ref is not None else {}
        outbound = self.outbound.describe()
        if outbound["sending_for_s"] > quiet_s / 2:
            cause = "client_not_reading"
        elif streamer.paused:
            cause = "paused_by_interruption"
        elif engine.get("answer") == streamer.response_id and engine["has_work"] and engine["ahead_s"] <= 0:
            cause = "engine_behind_real_time"
        else:
            cause = "unexplained"
        log.warning(
            STALLED_RESPONSE_FORMAT,
            self.session_id,
            streamer.response_id,
            quiet_s,
            cause,
            streamer.describe(),
            outbound,
            self.turns.describe(),
            engine,
        )

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(min(0.5, self.settings.idle_timeout_s / 4))
            self._log_stalled_response()
            if self._not_reading():
                await self._close_slow_client()
                return
            age = time.monotonic() - self.opened_at
            if age > self.settings.max_session_seconds and self.responses.current is None:
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
            if idle > self.settings.idle_timeout_s and self.responses.current is None and not self._handling:
                self._client_error(
                    "idle_timeout",
                    f"no client event for {self.settings.idle_timeout_s:g} s: closing the session",
                    None,
                )
                await self.outbound.drain(1.0)
                await self._close_socket(CloseCode.NORMAL, "idle timeout")
                return
