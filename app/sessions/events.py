"""The OpenAI Realtime wire events we accept and send, and the session configuration they carry.

Names and fields follow the GA types of the ``openai`` SDK (``openai/types/realtime/``); the beta dialect
differs in a few names and in a flat session shape, so client input in either shape is normalised to the GA
one here, and server events can be written out in either (:meth:`ServerEvent.to_json`).
Client models ignore fields we do not use and are validated strictly where we use the value, so a bad
event turns into a :class:`ProtocolError` the caller reports with an ``error`` event, keeping the session.
"""

from __future__ import annotations

import json
import secrets
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from app.sessions.audio_formats import Base64Error, WireFormat, decode_base64

Dialect = Literal["ga", "beta"]
Modality = Literal["text", "audio"]
MAX_APPEND_AUDIO_BYTES = 15 * 1024 * 1024


# --- ids and errors ---------------------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """A random id like ``<prefix>_3f9c...`` (20 hex digits)."""
    return f"{prefix}_{secrets.token_hex(10)}"


def new_event_id() -> str:
    """Id of one server event: ``event_<hex>``."""
    return new_id("event")


def new_item_id() -> str:
    """Id of a conversation item: ``item_<hex>``."""
    return new_id("item")


def new_response_id() -> str:
    """Id of a response: ``resp_<hex>``."""
    return new_id("resp")


def new_session_id() -> str:
    """Id of a session: ``sess_<hex>``."""
    return new_id("sess")


class ErrorCode(StrEnum):
    """Codes of the ``error`` events that :func:`parse_client_event` raises."""

    INVALID_JSON = "invalid_json"
    MISSING_PARAMETER = "missing_required_parameter"
    UNKNOWN_EVENT = "unknown_event_type"
    INVALID_TYPE = "invalid_type"
    INVALID_VALUE = "invalid_value"
    INVALID_BASE64 = "invalid_base64"


class ProtocolError(Exception):
    """A client event we cannot act on; recoverable: report it with :meth:`to_event` and go on."""

    def __init__(
        self,
        code: str,
        message: str,
        event_id: str | None = None,
        param: str | None = None,
        error_type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.event_id = event_id
        self.param = param
        self.error_type = error_type

    def to_event(self) -> ErrorEvent:
        """The ``error`` server event describing this error."""
        detail = ErrorDetail(
            type=self.error_type,
            code=self.code,
            message=self.message,
            param=self.param,
            event_id=self.event_id,
        )
        return ErrorEvent(error=detail)


def _custom_error(code: ErrorCode, message: str, field: str | None = None) -> PydanticCustomError:
    # ``field`` names the offending attribute when the error is raised by a whole-model validator.
    return PydanticCustomError(code.value, message, {"field": field} if field else None)


# --- shared pieces ------------------------------------------------------------------------------------------


class _Compact(BaseModel):
    """Serialises without null fields: items and usage carry many optional fields that clients never need."""

    model_config = ConfigDict(extra="ignore")

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


def _token_limit(value: Any) -> int | str:
    if value == "inf":
        return "inf"
    if not isinstance(value, int) or isinstance(value, bool):
        raise _custom_error(ErrorCode.INVALID_TYPE, "must be an integer or 'inf'")
    if value < 1:
        raise _custom_error(ErrorCode.INVALID_VALUE, "must be at least 1")
    return value


TokenLimit = Annotated[int | Literal["inf"], PlainValidator(_token_limit)]
Tolerated = Annotated[Any, PlainValidator(lambda value: value)]


def _decode_audio_field(audio: str) -> bytes:
    if len(audio) > (MAX_APPEND_AUDIO_BYTES + 2) // 3 * 4:
        raise _custom_error(ErrorCode.INVALID_VALUE, "audio is larger than 15 MiB", "audio")
    try:
        return decode_base64(audio)
    except Base64Error as exc:
        raise _custom_error(ErrorCode.INVALID_BASE64, str(exc), "audio") from None


class AudioFormat(BaseModel):
    """A wire audio format: GA ``{type, rate}`` objects, or the beta strings ``pcm16``/``g711_ulaw``/``g711_alaw``.

    ``audio/pcm`` may be 24000 Hz (the protocol's rate) or 16000 Hz (ours, to skip a resampling step).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma"] = "audio/pcm"
    rate: int = 24000

    @model_validator(mode="before")
    @classmethod
    def _from_legacy_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            names = {"pcm16": "audio/pcm", "g711_ulaw": "audio/pcmu", "g711_alaw": "audio/pcma"}
            data = {"type": names.get(data, data)}
        if isinstance(data, dict) and data.get("type") in ("audio/pcmu", "audio/pcma"):
            data = {"rate": 8000, **data}
        return data

    @model_validator(mode="after")
    def _check_rate(self) -> AudioFormat:
        allowed = (24000, 16000) if self.type == "audio/pcm" else (8000,)
        if self.rate not in allowed:
            raise _custom_error(ErrorCode.INVALID_VALUE, f"{self.type} supports rates {allowed}", "rate")
        return self

    @property
    def wire(self) -> WireFormat:
        """The encoding and rate, for the audio converters."""
        encoding = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma"}[self.type]
        return WireFormat(encoding, self.rate)  # type: ignore[arg-type]

    def to_ga(self) -> dict[str, Any]:
        """The GA object; G.711 formats have no ``rate`` field there."""
        return {"type": self.type, "rate": self.rate} if self.type == "audio/pcm" else {"type": self.type}

    def to_beta(self) -> str:
        """The beta string name (16 kHz PCM has none of its own and reads as ``pcm16``)."""
        return {"audio/pcm": "pcm16", "audio/pcmu": "g711_ulaw", "audio/pcma": "g711_alaw"}[self.type]


class TurnDetection(BaseModel):
    """Server-side turn detection. ``aggressiveness`` (0-3, WebRTC VAD mode) is ours and wins over
    ``threshold`` when given; ``semantic_vad`` is accepted and left to the session to map."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    aggressiveness: int | None = Field(None, ge=0, le=3)
    prefix_padding_ms: int = Field(300, ge=0, le=10_000)
    silence_duration_ms: int = Field(500, ge=0, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = Field(None, ge=0)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # Some clients send every field, unset ones as null: those mean "the default".
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


# --- session configuration ----------------------------------------------------------------------------------


class AudioInputPatch(BaseModel):
    """``session.audio.input`` of a ``session.update``."""

    model_config = ConfigDict(extra="ignore")

    format: AudioFormat | None = None
    turn_detection: TurnDetection | None = None
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None

    @field_validator("turn_detection", mode="before")
    @classmethod
    def _turn_detection_off(cls, value: Any) -> Any:
        # Push-to-talk: null, and also the spellings "none" and {"type": "none"} that some clients send.
        if value == "none" or (isinstance(value, dict) and value.get("type") == "none"):
            return None
        return value


class AudioOutputPatch(BaseModel):
    """``session.audio.output`` of a ``session.update``; ``voice`` and ``speed`` are kept and echoed only."""

    model_config = ConfigDict(extra="ignore")

    format: AudioFormat | None = None
    voice: Tolerated = None
    speed: float | None = None


class AudioPatch(BaseModel):
    """``session.audio`` of a ``session.update``."""

    model_config = ConfigDict(extra="ignore")

    input: AudioInputPatch | None = None
    output: AudioOutputPatch | None = None


# Beta's flat session fields and where they live in the GA shape.
_BETA_AUDIO_FIELDS = {
    "input_audio_format": ("input", "format"),
    "turn_detection": ("input", "turn_detection"),
    "input_audio_transcription": ("input", "transcription"),
    "input_audio_noise_reduction": ("input", "noise_reduction"),
    "output_audio_format": ("output", "format"),
    "voice": ("output", "voice"),
    "speed": ("output", "speed"),
}
_BETA_RENAMES = {"modalities": "output_modalities", "max_response_output_tokens": "max_output_tokens"}


class SessionPatch(BaseModel):
    """The ``session`` of a ``session.update``, GA-shaped; only the fields the client sent are applied."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["realtime"] | None = None
    model: str | None = None
    instructions: str | None = None
    output_modalities: list[Modality] | None = None
    audio: AudioPatch | None = None
    max_output_tokens: TokenLimit | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Tolerated = None

    @model_validator(mode="before")
    @classmethod
    def _from_beta(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("audio") or {}, dict):
            return data
        data = dict(data)
        for beta_name, ga_name in _BETA_RENAMES.items():
            if beta_name in data:
                data.setdefault(ga_name, data.pop(beta_name))
        audio = {
            key: dict(value) if isinstance(value, dict) else value
            for key, value in (data.get("audio") or {}).items()
        }
        for beta_name, (side, field) in _BETA_AUDIO_FIELDS.items():
            if beta_name in data and isinstance(audio.setdefault(side, {}), dict):
                audio[side].setdefault(field, data.pop(beta_name))
        if audio:
            data["audio"] = audio
        return data


class SessionConfig(BaseModel):
    """A session's effective configuration, as ``session.created``/``session.updated`` report it."""

    id: str = Field(default_factory=new_session_id)
    model: str = ""
    instructions: str = ""
    output_modalities: list[Modality] = Field(default_factory=lambda: ["audio"])
    input_format: AudioFormat = Field(default_factory=AudioFormat)
    output_format: AudioFormat = Field(default_factory=AudioFormat)
    turn_detection: TurnDetection | None = Field(default_factory=TurnDetection)
    transcription: dict[str, Any] | None = None
    noise_reduction: dict[str, Any] | None = None
    voice: Any = None
    speed: float | None = None
    max_output_tokens: int | Literal["inf"] = "inf"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tool_choice: Any = "auto"

    def apply(self, patch: SessionPatch) -> SessionConfig:
        """A copy with the fields present in ``patch`` replaced (``turn_detection: null`` turns VAD off)."""
        updates: dict[str, Any] = {}
        for name in (
            "model",
            "instructions",
            "output_modalities",
            "max_output_tokens",
            "tools",
            "tool_choice",
        ):
            if getattr(patch, name) is not None:
                updates[name] = getattr(patch, name)
        audio_in = patch.audio.input if patch.audio else None
        if audio_in is not None:
            if audio_in.format is not None:
                updates["input_format"] = audio_in.format
            for name in ("turn_detection", "transcription", "noise_reduction"):
                if name in audio_in.model_fields_set:
                    updates[name] = getattr(audio_in, name)
        audio_out = patch.audio.output if patch.audio else None
        if audio_out is not None:
            if audio_out.format is not None:
                updates["output_format"] = audio_out.format
            for name in ("voice", "speed"):
                if name in audio_out.model_fields_set:
                    updates[name] = getattr(audio_out, name)
        return self.model_copy(update=updates)

    def to_ga(self) -> dict[str, Any]:
        """The nested GA session object."""
        turn = self.turn_detection.model_dump(exclude_none=True) if self.turn_detection else None
        return {
            "type": "realtime",
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "output_modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "audio": {
                "input": {
                    "format": self.input_format.to_ga(),
                    "turn_detection": turn,
                    "transcription": self.transcription,
                    "noise_reduction": self.noise_reduction,
                },
                "output": {"format": self.output_format.to_ga(), "voice": self.voice, "speed": self.speed},
            },
            "max_output_tokens": self.max_output_tokens,
            "tools": self.tools,
            "tool_choice": self.tool_choice,
        }

    def to_beta(self) -> dict[str, Any]:
        """The flat beta session object."""
        turn = self.turn_detection.model_dump(exclude_none=True) if self.turn_detection else None
        return {
            "object": "realtime.session",
            "id": self.id,
            "model": self.model,
            "modalities": list(self.output_modalities),
            "instructions": self.instructions,
            "voice": self.voice,
            "speed": self.speed,
            "input_audio_format": self.input_format.to_beta(),
            "output_audio_format": self.output_format.to_beta(),
            "input_audio_transcription": self.transcription,
            "input_audio_noise_reduction": self.noise_reduction,
            "turn_detection": turn,
            "tools": self.tools,
            "tool_choice": self.tool_choice,
            "max_response_output_tokens": self.max_output_tokens,
        }


# --- items and responses ---------------------------------------------------------------------------------------

ContentType = Literal[
    "input_text",
    "input_audio",
    "input_image",
    "output_text",
    "output_audio",
    "text",
    "audio",
    "item_reference",
]


class ContentPart(_Compact):
    """One content part of a message item, or the ``part`` of ``response.content_part.*``."""

    type: ContentType
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    _audio_bytes: bytes | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _decode_audio(self) -> ContentPart:
        if self.audio is not None:
            self._audio_bytes = _decode_audio_field(self.audio)
        return self

    @property
    def audio_bytes(self) -> bytes | None:
        """The decoded ``audio``, if any."""
        return self._audio_bytes


class ConversationItem(_Compact):
    """A conversation item; in practice a ``message`` of role user, assistant or system."""

    id: str | None = None
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["message", "function_call", "function_call_output"] = "message"
    status: Literal["completed", "incomplete", "in_progress"] | None = None
    role: Literal["user", "assistant", "system"] | None = None
    content: list[ContentPart] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None

    @model_validator(mode="after")
    def _message_has_role(self) -> ConversationItem:
        if self.type == "message" and self.role is None:
            raise _custom_error(ErrorCode.MISSING_PARAMETER, "a message item needs a role", "role")
        return self


class ResponseParams(BaseModel):
    """Per-response overrides of ``response.create`` (beta names accepted)."""

    model_config = ConfigDict(extra="ignore")

    instructions: str | None = None
    output_modalities: list[Modality] | None = None
    max_output_tokens: TokenLimit | None = None
    conversation: str | None = None
    metadata: dict[str, str] | None = None
    input: list[ConversationItem] | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_beta(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(name in data for name in _BETA_RENAMES):
            data = dict(data)
            for beta_name, ga_name in _BETA_RENAMES.items():
                if beta_name in data:
                    data.setdefault(ga_name, data.pop(beta_name))
        return data


class ResponseStatusDetails(_Compact):
    """Why a response ended the way it did."""

    type: Literal["completed", "cancelled", "incomplete", "failed"] | None = None
    reason: Literal["turn_detected", "client_cancelled", "max_output_tokens", "content_filter"] | None = None
    error: dict[str, Any] | None = None


class Usage(_Compact):
    """Token counts of a response."""

    total_tokens: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    input_token_details: dict[str, int] | None = None
    output_token_details: dict[str, int] | None = None


class RealtimeResponse(BaseModel):
    """The response resource of ``response.created`` and ``response.done``."""

    id: str = Field(default_factory=new_response_id)
    object: Literal["realtime.response"] = "realtime.response"
    status: Literal["in_progress", "completed", "cancelled", "failed", "incomplete"] = "in_progress"
    status_details: ResponseStatusDetails | None = None
    output: list[ConversationItem] = Field(default_factory=list)
    conversation_id: str | None = None
    output_modalities: list[Modality] = Field(default_factory=lambda: ["audio"])
    max_output_tokens: int | Literal["inf"] = "inf"
    metadata: dict[str, str] | None = None
    usage: Usage | None = None


# --- client events -------------------------------------------------------------------------------------------


class ClientEventBase(BaseModel):
    """Fields every client event has."""

    model_config = ConfigDict(extra="ignore")

    type: str
    event_id: str | None = None


class SessionUpdate(ClientEventBase):
    """``session.update``: change the fields present in ``session``."""

    type: Literal["session.update"] = "session.update"
    session: SessionPatch


class InputAudioBufferAppend(ClientEventBase):
    """``input_audio_buffer.append``: base64 audio in the session's input format."""

    type: Literal["input_audio_buffer.append"] = "input_audio_buffer.append"
    audio: str
    _audio_bytes: bytes = PrivateAttr(b"")

    @model_validator(mode="after")
    def _decode_audio(self) -> InputAudioBufferAppend:
        self._audio_bytes = _decode_audio_field(self.audio)
        return self

    @property
    def audio_bytes(self) -> bytes:
        """The decoded audio bytes."""
        return self._audio_bytes


class InputAudioBufferCommit(ClientEventBase):
    """``input_audio_buffer.commit``: end the user's turn by hand."""

    type: Literal["input_audio_buffer.commit"] = "input_audio_buffer.commit"


class InputAudioBufferClear(ClientEventBase):
    """``input_audio_buffer.clear``: drop audio not yet committed."""

    type: Literal["input_audio_buffer.clear"] = "input_audio_buffer.clear"


class ConversationItemCreate(ClientEventBase):
    """``conversation.item.create``: add an item (text or audio message) to the conversation."""

    type: Literal["conversation.item.create"] = "conversation.item.create"
    item: ConversationItem
    previous_item_id: str | None = None


class ConversationItemRetrieve(ClientEventBase):
    """``conversation.item.retrieve``."""

    type: Literal["conversation.item.retrieve"] = "conversation.item.retrieve"
    item_id: str


class ConversationItemDelete(ClientEventBase):
    """``conversation.item.delete``."""

    type: Literal["conversation.item.delete"] = "conversation.item.delete"
    item_id: str


class ConversationItemTruncate(ClientEventBase):
    """``conversation.item.truncate``: the client heard only ``audio_end_ms`` of an assistant item."""

    type: Literal["conversation.item.truncate"] = "conversation.item.truncate"
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ResponseCreate(ClientEventBase):
    """``response.create``: start a reply, optionally with per-response overrides."""

    type: Literal["response.create"] = "response.create"
    response: ResponseParams | None = None


class ResponseCancel(ClientEventBase):
    """``response.cancel``: stop the reply in flight."""

    type: Literal["response.cancel"] = "response.cancel"
    response_id: str | None = None


class OutputAudioBufferClear(ClientEventBase):
    """``output_audio_buffer.clear``: cut the audio being played."""

    type: Literal["output_audio_buffer.clear"] = "output_audio_buffer.clear"


ClientEvent = (
    SessionUpdate
    | InputAudioBufferAppend
    | InputAudioBufferCommit
    | InputAudioBufferClear
    | ConversationItemCreate
    | ConversationItemRetrieve
    | ConversationItemDelete
    | ConversationItemTruncate
    | ResponseCreate
    | ResponseCancel
    | OutputAudioBufferClear
)
CLIENT_EVENT_TYPES: dict[str, type[ClientEventBase]] = {
    cls.model_fields["type"].default: cls
    for cls in ClientEvent.__args__  # type: ignore[attr-defined]
}


def parse_client_event(raw: str | bytes) -> ClientEvent:
    """Parse one WebSocket message into a client event, or raise :class:`ProtocolError`."""
    try:
        data = json.loads(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise ProtocolError(ErrorCode.INVALID_JSON, f"message is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ProtocolError(ErrorCode.INVALID_JSON, "message must be a JSON object")
    event_id = data.get("event_id") if isinstance(data.get("event_id"), str) else None
    if "type" not in data:
        raise ProtocolError(
            ErrorCode.MISSING_PARAMETER, "missing required parameter 'type'", event_id, "type"
        )
    event_type = data["type"]
    if not isinstance(event_type, str):
        raise ProtocolError(ErrorCode.INVALID_TYPE, "'type' must be a string", event_id, "type")
    event_class = CLIENT_EVENT_TYPES.get(event_type)
    if event_class is None:
        raise ProtocolError(ErrorCode.UNKNOWN_EVENT, f"unknown event type {event_type!r}", event_id, "type")
    try:
        return event_class.model_validate(data, strict=True)  # type: ignore[return-value]
    except ValidationError as exc:
        raise _protocol_error(exc, event_id) from None


def _protocol_error(exc: ValidationError, event_id: str | None) -> ProtocolError:
    error = exc.errors()[0]
    kind = error["type"]
    location = [str(part) for part in error["loc"]]
    field = (error.get("ctx") or {}).get("field")
    if field:
        location.append(field)
    param = ".".join(location) or None
    if kind in ErrorCode.__members__.values():
        code = kind
    elif kind == "missing":
        code = ErrorCode.MISSING_PARAMETER
    elif kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        code = ErrorCode.INVALID_TYPE
    else:
        code = ErrorCode.INVALID_VALUE
    message = f"{error['msg']} (at '{param}')" if param else error["msg"]
    return ProtocolError(str(code), message, event_id, param)


# --- server events -------------------------------------------------------------------------------------------

# GA event names that the beta dialect spells differently; ``None``: beta has no such event.
_BETA_EVENT_TYPES: dict[str, str | None] = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
    "conversation.item.done": None,
}
_BETA_CONTENT_TYPES = {"output_text": "text", "output_audio": "audio"}


def _item_to_beta(item: dict[str, Any]) -> dict[str, Any]:
    content = [
        {**part, "type": _BETA_CONTENT_TYPES.get(part["type"], part["type"])}
        for part in item.get("content", [])
    ]
    return {**item, "content": content} if "content" in item else item


def _response_to_beta(response: dict[str, Any]) -> dict[str, Any]:
    response = dict(response)
    response["modalities"] = response.pop("output_modalities", None)
    response["output"] = [_item_to_beta(item) for item in response.get("output", [])]
    return response


class ServerEvent(BaseModel):
    """Fields every server event has; :meth:`to_json` writes it for either dialect."""

    type: str
    event_id: str = Field(default_factory=new_event_id)

    def payload(self, dialect: Dialect = "ga") -> dict[str, Any] | None:
        """The JSON object to send, or ``None`` when this event does not exist in ``dialect``."""
        data = self.model_dump(mode="json")
        if dialect == "ga":
            return data
        if self.type in _BETA_EVENT_TYPES:
            beta_type = _BETA_EVENT_TYPES[self.type]
            if beta_type is None:
                return None
            data["type"] = beta_type
        if "item" in data:
            data["item"] = _item_to_beta(data["item"])
        if "response" in data:
            data["response"] = _response_to_beta(data["response"])
        return data

    def to_json(self, dialect: Dialect = "ga") -> str | None:
        """Compact JSON text for one WebSocket message, or ``None`` when not sent in ``dialect``."""
        data = self.payload(dialect)
        return None if data is None else json.dumps(data, separators=(",", ":"))


class _SessionEvent(ServerEvent):
    session: SessionConfig

    def payload(self, dialect: Dialect = "ga") -> dict[str, Any] | None:
        """The event with the session in the dialect's shape."""
        session = self.session.to_ga() if dialect == "ga" else self.session.to_beta()
        return {"type": self.type, "event_id": self.event_id, "session": session}


class SessionCreated(_SessionEvent):
    """``session.created``: the first event of a connection."""

    type: Literal["session.created"] = "session.created"


class SessionUpdated(_SessionEvent):
    """``session.updated``: the full effective config after a ``session.update``."""

    type: Literal["session.updated"] = "session.updated"


class InputAudioBufferSpeechStarted(ServerEvent):
    """``input_audio_buffer.speech_started``: server VAD heard the user begin (pre-roll included)."""

    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class InputAudioBufferSpeechStopped(ServerEvent):
    """``input_audio_buffer.speech_stopped``: server VAD heard enough silence."""

    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class InputAudioBufferCommitted(ServerEvent):
    """``input_audio_buffer.committed``: the buffer became user item ``item_id``."""

    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None = None


class InputAudioBufferCleared(ServerEvent):
    """``input_audio_buffer.cleared``."""

    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class ConversationItemAdded(ServerEvent):
    """``conversation.item.added`` (beta: ``conversation.item.created``)."""

    type: Literal["conversation.item.added"] = "conversation.item.added"
    item: ConversationItem
    previous_item_id: str | None = None


class ConversationItemDone(ServerEvent):
    """``conversation.item.done``: the item is final (GA only)."""

    type: Literal["conversation.item.done"] = "conversation.item.done"
    item: ConversationItem
    previous_item_id: str | None = None


class ConversationItemCreated(ServerEvent):
    """``conversation.item.created``: the older name, still in the GA SDK's union."""

    type: Literal["conversation.item.created"] = "conversation.item.created"
    item: ConversationItem
    previous_item_id: str | None = None


class ConversationItemRetrieved(ServerEvent):
    """``conversation.item.retrieved``."""

    type: Literal["conversation.item.retrieved"] = "conversation.item.retrieved"
    item: ConversationItem


class ConversationItemTruncated(ServerEvent):
    """``conversation.item.truncated``: the unheard part of an assistant item was cut."""

    type: Literal["conversation.item.truncated"] = "conversation.item.truncated"
    item_id: str
    content_index: int = 0
    audio_end_ms: int


class ConversationItemDeleted(ServerEvent):
    """``conversation.item.deleted``."""

    type: Literal["conversation.item.deleted"] = "conversation.item.deleted"
    item_id: str


class ResponseCreated(ServerEvent):
    """``response.created``: a reply started (status ``in_progress``)."""

    type: Literal["response.created"] = "response.created"
    response: RealtimeResponse


class ResponseDone(ServerEvent):
    """``response.done``: the reply ended; its status says ``completed``, ``cancelled``, ..."""

    type: Literal["response.done"] = "response.done"
    response: RealtimeResponse


class ResponseOutputItemAdded(ServerEvent):
    """``response.output_item.added``."""

    type: Literal["response.output_item.added"] = "response.output_item.added"
    response_id: str
    output_index: int = 0
    item: ConversationItem


class ResponseOutputItemDone(ServerEvent):
    """``response.output_item.done``."""

    type: Literal["response.output_item.done"] = "response.output_item.done"
    response_id: str
    output_index: int = 0
    item: ConversationItem


class _ContentEvent(ServerEvent):
    response_id: str
    item_id: str
    output_index: int = 0
    content_index: int = 0


class ResponseContentPartAdded(_ContentEvent):
    """``response.content_part.added``."""

    type: Literal["response.content_part.added"] = "response.content_part.added"
    part: ContentPart


class ResponseContentPartDone(_ContentEvent):
    """``response.content_part.done``."""

    type: Literal["response.content_part.done"] = "response.content_part.done"
    part: ContentPart


class ResponseOutputAudioDelta(_ContentEvent):
    """``response.output_audio.delta`` (beta: ``response.audio.delta``): base64 audio."""

    type: Literal["response.output_audio.delta"] = "response.output_audio.delta"
    delta: str


class ResponseOutputAudioDone(_ContentEvent):
    """``response.output_audio.done`` (beta: ``response.audio.done``)."""

    type: Literal["response.output_audio.done"] = "response.output_audio.done"


class ResponseOutputAudioTranscriptDelta(_ContentEvent):
    """``response.output_audio_transcript.delta`` (beta: ``response.audio_transcript.delta``)."""

    type: Literal["response.output_audio_transcript.delta"] = "response.output_audio_transcript.delta"
    delta: str


class ResponseOutputAudioTranscriptDone(_ContentEvent):
    """``response.output_audio_transcript.done`` (beta: ``response.audio_transcript.done``)."""

    type: Literal["response.output_audio_transcript.done"] = "response.output_audio_transcript.done"
    transcript: str


class ResponseOutputTextDelta(_ContentEvent):
    """``response.output_text.delta`` (beta: ``response.text.delta``)."""

    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class ResponseOutputTextDone(_ContentEvent):
    """``response.output_text.done`` (beta: ``response.text.done``)."""

    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class RateLimit(BaseModel):
    """One entry of ``rate_limits.updated``."""

    name: str
    limit: int
    remaining: int
    reset_seconds: float


class RateLimitsUpdated(ServerEvent):
    """``rate_limits.updated``."""

    type: Literal["rate_limits.updated"] = "rate_limits.updated"
    rate_limits: list[RateLimit]


class ErrorDetail(BaseModel):
    """The ``error`` object of an ``error`` event."""

    type: str = "invalid_request_error"
    code: str | None = None
    message: str
    param: str | None = None
    event_id: str | None = None


class ErrorEvent(ServerEvent):
    """``error``: recoverable by default, the session goes on."""

    type: Literal["error"] = "error"
    error: ErrorDetail
