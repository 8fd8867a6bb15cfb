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

from app.sessions.audio_formats import MODEL_INPUT_RATE, OPUS_CLOCK_RATE, REALTIME_PCM_RATE, WireFormat
from app.sessions.opus_codec import MAX_OPUS_BITRATE, MIN_OPUS_BITRATE
from app.sessions.protocol_base import (
    BETA_RENAMES,
    ErrorCode,
    Modality,
    TokenLimit,
    Tolerated,
    custom_error,
    new_session_id,
)
from app.sessions.vad import VadSettings, aggressiveness_from_threshold

# Our extension: Opus as raw packets in binary frames (the OpenAI Realtime API has no Opus on its socket).
OPUS_TYPE = "audio/x-opus"
OPUS_BETA_NAME = "x-opus"
_BETA_NAMES = {
    "pcm16": "audio/pcm",
    "g711_ulaw": "audio/pcmu",
    "g711_alaw": "audio/pcma",
    OPUS_BETA_NAME: OPUS_TYPE,
}
_ENCODINGS = {"audio/pcm": "pcm16", "audio/pcmu": "pcmu", "audio/pcma": "pcma", OPUS_TYPE: "opus"}
_FIXED_RATES = {"audio/pcmu": 8000, "audio/pcma": 8000, OPUS_TYPE: OPUS_CLOCK_RATE}


class AudioFormat(BaseModel):
    """A wire audio format: GA ``{type, rate}`` objects, or the beta strings ``pcm16``/``g711_ulaw``/``g711_alaw``.

    ``audio/pcm`` may be 24000 Hz (the protocol's rate) or 16000 Hz (ours, to skip a resampling step).
    ``audio/x-opus`` (beta ``x-opus``) is ours: raw Opus packets, one per binary frame; ``bitrate`` is
    what the server encodes its answers at (``None``: the server's default, filled in by the session).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: Literal["audio/pcm", "audio/pcmu", "audio/pcma", "audio/x-opus"] = "audio/pcm"
    rate: int = REALTIME_PCM_RATE
    bitrate: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_legacy_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"type": _BETA_NAMES.get(data, data)}
        if isinstance(data, dict) and data.get("type") in _FIXED_RATES:
            data = {"rate": _FIXED_RATES[data["type"]], **data}
        return data

    @model_validator(mode="after")
    def _check_rate(self) -> AudioFormat:
        allowed = (
            (REALTIME_PCM_RATE, MODEL_INPUT_RATE) if self.type == "audio/pcm" else (_FIXED_RATES[self.type],)
        )
        if self.rate not in allowed:
            raise custom_error(ErrorCode.INVALID_VALUE, f"{self.type} supports rates {allowed}", "rate")
        if self.bitrate is not None:
            if self.type != OPUS_TYPE:
                raise custom_error(ErrorCode.INVALID_VALUE, f"{self.type} has no bitrate", "bitrate")
            if not MIN_OPUS_BITRATE <= self.bitrate <= MAX_OPUS_BITRATE:
                raise custom_error(
                    ErrorCode.INVALID_VALUE,
                    f"Opus bitrate must be {MIN_OPUS_BITRATE}-{MAX_OPUS_BITRATE} bits per second",
                    "bitrate",
                )
        return self

    @property
    def wire(self) -> WireFormat:
        """The encoding and rate (and Opus bitrate), for the audio converters."""
        return WireFormat(_ENCODINGS[self.type], self.rate, self.bitrate)  # type: ignore[arg-type]

    def to_ga(self) -> dict[str, Any]:
        """The GA object; G.711 formats have no ``rate`` field there, Opus has its ``bitrate``."""
        if self.type == OPUS_TYPE:  # input formats have no bitrate: the client's encoder picks it
            return (
                {"type": self.type} if self.bitrate is None else {"type": self.type, "bitrate": self.bitrate}
            )
        return {"type": self.type, "rate": self.rate} if self.type == "audio/pcm" else {"type": self.type}

    def to_beta(self) -> str:
        """The beta string name (16 kHz PCM has none of its own and reads as ``pcm16``)."""
        return {v: k for k, v in _BETA_NAMES.items()}[self.type]


# semantic_vad's eagerness as the silence (ms) after which a turn the state head left open is answered.
SEMANTIC_EAGERNESS_SILENCE_MS = {"low": 1500, "medium": 800, "auto": 800, "high": 400}


class TurnDetection(BaseModel):
    """Server-side turn detection. ``aggressiveness`` (0-3, WebRTC VAD mode) is ours and wins over
    ``threshold`` when given; ``semantic_vad`` is accepted and left to the session to map."""

    model_config = ConfigDict(extra="ignore")

    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float = Field(0.5, ge=0.0, le=1.0)
    aggressiveness: int | None = Field(None, ge=0, le=3)
    prefix_padding_ms: int = Field(VadSettings.prefix_padding_ms, ge=0, le=10_000)
    silence_duration_ms: int = Field(VadSettings.silence_duration_ms, ge=0, le=10_000)
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = Field(None, ge=0)
    eagerness: Literal["low", "medium", "high", "auto"] | None = None

    @model_validator(mode="before")
    @classmethod
    def _drop_nulls(cls, data: Any) -> Any:
        # Some clients send every field, unset ones as null: those mean "the default".
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data

    def vad_aggressiveness(self, default: int) -> int:
        """WebRTC VAD mode: ``aggressiveness`` if given, else the client's ``threshold``, else `default`."""
        if self.aggressiveness is not None:
            return self.aggressiveness
        if "threshold" in self.model_fields_set:
            return aggressiveness_from_threshold(self.threshold)
        return default

    def fallback_silence_ms(self) -> int:
        """Silence that ends a turn the state head left open. With ``semantic_vad`` (the state head is our
        semantic detector) ``eagerness`` sets it unless ``silence_duration_ms`` was given."""
        if self.type == "semantic_vad" and "silence_duration_ms" not in self.model_fields_set:
            return SEMANTIC_EAGERNESS_SILENCE_MS.get(self.eagerness or "auto", self.silence_duration_ms)
        return self.silence_duration_ms


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


# The model name sessions report: clients name OpenAI models (Pipecat gpt-realtime-*, LiveKit gpt-realtime),
# but one Freeze-Omni model answers, and the session says so.
SERVED_MODEL = "freeze-omni"


class SessionConfig(BaseModel):
    """A session's effective configuration, as ``session.created``/``session.updated`` report it."""

    id: str = Field(default_factory=new_session_id)
    model: str = SERVED_MODEL  # what this server serves, whatever a client names: never echoed back
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

    def with_opus_bitrate(self, default_bitrate: int) -> SessionConfig:
        """Opus output without a bitrate gets the server's default; Opus input drops one (the client's
        encoder chooses its own bitrate, and the decoder takes any), so only what is honoured is echoed."""
        updates: dict[str, Any] = {}
        if self.output_format.type == OPUS_TYPE and self.output_format.bitrate is None:
            updates["output_format"] = self.output_format.model_copy(update={"bitrate": default_bitrate})
        if self.input_format.bitrate is not None:
            updates["input_format"] = self.input_format.model_copy(update={"bitrate": None})
        return self.model_copy(update=updates) if updates else self

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
