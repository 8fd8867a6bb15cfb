"""The session configuration a client sets with `session.update`: formats, turn detection, instructions.

Client input in the GA shape or the older beta (flat) shape is normalised to the GA shape."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from app.sessions.audio_formats import WireFormat
from app.sessions.protocol_base import (
    BETA_RENAMES,
    ErrorCode,
    Modality,
    TokenLimit,
    Tolerated,
    custom_error,
    new_session_id,
)


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
            raise custom_error(ErrorCode.INVALID_VALUE, f"{self.type} supports rates {allowed}", "rate")
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
        for beta_name, ga_name in BETA_RENAMES.items():
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
