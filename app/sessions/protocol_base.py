"""Shared pieces of the Realtime wire protocol: ids, protocol errors, compact models, audio fields."""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    PlainValidator,
    SerializerFunctionWrapHandler,
    model_serializer,
)
from pydantic_core import PydanticCustomError

from app.sessions.audio_formats import Base64Error, decode_base64

Dialect = Literal["ga", "beta"]
Modality = Literal["text", "audio"]
# Beta field names of sessions and responses that the GA shape renamed.
BETA_RENAMES = {"modalities": "output_modalities", "max_response_output_tokens": "max_output_tokens"}
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
    """A client event we cannot act on; recoverable: report it (``ErrorEvent.from_protocol_error``) and go on."""

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


def custom_error(code: ErrorCode, message: str, field: str | None = None) -> PydanticCustomError:
    # ``field`` names the offending attribute when the error is raised by a whole-model validator.
    return PydanticCustomError(code.value, message, {"field": field} if field else None)


# --- shared pieces ------------------------------------------------------------------------------------------


class CompactModel(BaseModel):
    """Serialises without null fields: items and usage carry many optional fields that clients never need."""

    model_config = ConfigDict(extra="ignore")

    @model_serializer(mode="wrap")
    def _drop_nulls(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


def token_limit(value: Any) -> int | str:
    if value == "inf":
        return "inf"
    if not isinstance(value, int) or isinstance(value, bool):
        raise custom_error(ErrorCode.INVALID_TYPE, "must be an integer or 'inf'")
    if value < 1:
        raise custom_error(ErrorCode.INVALID_VALUE, "must be at least 1")
    return value


TokenLimit = Annotated[int | Literal["inf"], PlainValidator(token_limit)]
Tolerated = Annotated[Any, PlainValidator(lambda value: value)]


def decode_audio_field(audio: str) -> bytes:
    if len(audio) > (MAX_APPEND_AUDIO_BYTES + 2) // 3 * 4:
        raise custom_error(ErrorCode.INVALID_VALUE, "audio is larger than 15 MiB", "audio")
    try:
        return decode_base64(audio)
    except Base64Error as exc:
        raise custom_error(ErrorCode.INVALID_BASE64, str(exc), "audio") from None
