"""Conversation items, content parts and the response object of the Realtime protocol."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    model_validator,
)

from app.sessions.protocol_base import (
    BETA_RENAMES,
    CompactModel,
    ErrorCode,
    Modality,
    TokenLimit,
    Tolerated,
    custom_error,
    decode_audio_field,
    new_response_id,
)

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


class ContentPart(CompactModel):
    """One content part of a message item, or the ``part`` of ``response.content_part.*``."""

    type: ContentType
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    _audio_bytes: bytes | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _decode_audio(self) -> ContentPart:
        if self.audio is not None:
            self._audio_bytes = decode_audio_field(self.audio)
        return self

    @property
    def audio_bytes(self) -> bytes | None:
        """The decoded ``audio``, if any."""
        return self._audio_bytes


class ConversationItem(CompactModel):
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
            raise custom_error(ErrorCode.MISSING_PARAMETER, "a message item needs a role", "role")
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
    # Read only to be refused or ignored by design (see refused_fields): never silently dropped.
    tools: list[dict[str, Any]] | None = None
    tool_choice: Tolerated = None
    prompt: Tolerated = None
    temperature: float | None = None
    audio: Tolerated = None
    output_audio_format: Tolerated = None
    voice: Tolerated = None

    @model_validator(mode="before")
    @classmethod
    def _from_beta(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(name in data for name in BETA_RENAMES):
            data = dict(data)
            for beta_name, ga_name in BETA_RENAMES.items():
                if beta_name in data:
                    data.setdefault(ga_name, data.pop(beta_name))
        return data


class ResponseStatusDetails(CompactModel):
    """Why a response ended the way it did."""

    type: Literal["completed", "cancelled", "incomplete", "failed"] | None = None
    reason: Literal["turn_detected", "client_cancelled", "max_output_tokens", "content_filter"] | None = None
    error: dict[str, Any] | None = None


class Usage(CompactModel):
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
