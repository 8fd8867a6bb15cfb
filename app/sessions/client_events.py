"""The client events we accept, and `parse_client_event`, which turns a bad one into a `ProtocolError`."""

from __future__ import annotations

import json
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from app.sessions.items import ConversationItem, ResponseParams
from app.sessions.protocol_base import ErrorCode, ProtocolError, decode_audio_field
from app.sessions.session_config import SessionPatch

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
        self._audio_bytes = decode_audio_field(self.audio)
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
    except RecursionError:
        raise ProtocolError(
            ErrorCode.INVALID_JSON, "message is nested too deeply to parse: no client event needs this"
        ) from None
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
