"""The server events we send, writable in the GA dialect or the older beta one."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import (
    BaseModel,
    Field,
)

from app.sessions.items import ContentPart, ConversationItem, RealtimeResponse
from app.sessions.protocol_base import Dialect, ProtocolError, new_event_id
from app.sessions.session_config import SessionConfig

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
        if isinstance(data.get("part"), dict):
            data["part"] = {
                **data["part"],
                "type": _BETA_CONTENT_TYPES.get(data["part"]["type"], data["part"]["type"]),
            }
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

    @classmethod
    def from_protocol_error(cls, error: ProtocolError) -> ErrorEvent:
        """The ``error`` event that reports a client event we could not act on."""
        detail = ErrorDetail(
            type=error.error_type,
            code=error.code,
            message=error.message,
            param=error.param,
            event_id=error.event_id,
        )
        return cls(error=detail)
