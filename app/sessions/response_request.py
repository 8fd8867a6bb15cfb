"""What a client asked of one response: the session's defaults, overridden by `response.create` fields."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from app.engine.events import AnswerOptions
from app.sessions.items import ConversationItem, ResponseParams
from app.sessions.protocol_base import ErrorCode, ProtocolError
from app.sessions.session_config import SessionConfig


@dataclass(frozen=True)
class ResponseRequest:
    """One response's settings, for the engine (`options`) and for the events on the wire."""

    text_only: bool = False
    max_output_tokens: int | Literal["inf"] = "inf"
    metadata: dict[str, str] | None = None
    instructions: str | None = None
    out_of_band: bool = False

    @classmethod
    def of(cls, config: SessionConfig, params: ResponseParams | None = None) -> ResponseRequest:
        """The session's defaults, with the fields `params` sets in their place."""
        params = params or ResponseParams()
        modalities = params.output_modalities or config.output_modalities
        limit = params.max_output_tokens if params.max_output_tokens is not None else config.max_output_tokens
        return cls(
            text_only="audio" not in modalities,
            max_output_tokens=limit,
            metadata=params.metadata,
            instructions=params.instructions,
            out_of_band=params.conversation == "none",
        )

    @property
    def options(self) -> AnswerOptions:
        """The engine's view of this response."""
        return AnswerOptions(
            speak=not self.text_only,
            max_tokens=None if self.max_output_tokens == "inf" else int(self.max_output_tokens),
            instructions=self.instructions or None,
            out_of_band=self.out_of_band,
        )


def out_of_band_text(items: list[ConversationItem] | None) -> str | None:
    """The user text an out-of-band response answers (None: answer from the instructions alone).

    Raises `ProtocolError` for input this server cannot take out of band (audio, references).
    """
    texts: list[str] = []
    for index, item in enumerate(items or []):
        if item.type != "message":
            raise ProtocolError(
                ErrorCode.INVALID_VALUE,
                f"out-of-band input supports message items with text, not {item.type!r}",
                param=f"response.input[{index}].type",
            )
        for part_index, part in enumerate(item.content or []):
            if part.type in ("input_text", "text", "output_text"):
                texts.append(part.text or "")
            else:
                raise ProtocolError(
                    ErrorCode.INVALID_VALUE,
                    f"out-of-band input supports text content, not {part.type!r}",
                    param=f"response.input[{index}].content[{part_index}].type",
                )
    text = "\n".join(t for t in texts if t.strip())
    return text or None
