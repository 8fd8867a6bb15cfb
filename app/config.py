"""Settings: the one place configuration is read (environment `FREEZE_OMNI_*`, then CLI flags)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.engine.settings import EngineSettings
from app.model import CHUNK_SECONDS, LinearWeights, LLMSampling
from app.sessions.noise_floor import NoiseGateSettings
from app.sessions.session_settings import SessionSettings
from app.sessions.vad import VadSettings

_SAMPLING = LLMSampling()
# oneDNN's own default is 1024 kernels: tens of MB of JIT code on a server that sees new shapes all the time.
ONEDNN_CACHE_DEFAULT = 64
MKLDNN_LRU_CACHE_DEFAULT = 64
# The VAD's defaults live with the VAD; the settings (and through them the CLI) take theirs from there.
_VAD = VadSettings()
_NOISE_GATE = NoiseGateSettings()


class Settings(BaseSettings):
    """Every limit, path and policy of the server. Each field is `FREEZE_OMNI_<NAME>` in the env."""

    model_config = SettingsConfigDict(env_prefix="FREEZE_OMNI_", extra="ignore")

    # -- server
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    ssl_keyfile: Path | None = Field(
        None, description="TLS key (browsers need https for the mic off localhost)"
    )
    ssl_certfile: Path | None = Field(None, description="TLS certificate")

    # -- model
    model_path: Path | None = Field(None, description="Freeze-Omni checkpoint folder; default: embedded tiny")
    llm_path: Path | None = Field(None, description="Hugging Face Qwen2 folder; default: embedded tiny")
    devices: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["cpu"], description="one replica per device"
    )
    dtype: str = "auto"
    codec_dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="the codec's dtype; auto: bf16 on CUDA and CPUs with native bf16, else fp32"
    )
    llm_weights: LinearWeights = Field(
        "auto",
        description="the LLM's linear weights; auto: int8 on CPUs with native bf16 (fp32 model), else dtype",
    )
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op CPU threads; 0: torch's default (one per core)"
    )
    strict_load: bool = Field(
        False, description="refuse weight files holding anything the model does not use (training state)"
    )

    # -- capacity and limits
    max_sessions: int = Field(16, ge=1, description="sessions per replica (an upper bound on admission)")
    admission_max_load: float = Field(
        0.9, ge=0, description="refuse a session that would take more of the real-time budget; 0: off"
    )
    admission_window_steps: int = Field(50, ge=1, description="engine steps the load measure remembers")
    admission_unmeasured_sessions: int = Field(
        2,
        ge=1,
        description="sessions admitted beyond the most answers measured speaking together in one step",
    )
    llm_max_len: int = Field(4096, ge=256, description="tokens of conversation per session")
    max_answer_tokens: int = Field(500, ge=1)
    max_turn_seconds: float = Field(60.0, gt=0, description="a longer user turn is answered")
    max_message_bytes: int = Field(
        16 * 2**20, ge=1024, description="larger WebSocket messages close with 1009"
    )
    max_pending_audio_seconds: float = Field(10.0, gt=0, description="unheard input beyond this is an error")
    idle_timeout_s: float = Field(300.0, gt=0, description="no client event for this long closes the session")
    max_session_seconds: float = Field(
        3600.0, gt=0, description="a session this old is closed (after its answer in progress)"
    )
    max_sessions_per_key: int = Field(0, ge=0, description="live sessions one API key may hold; 0: no limit")
    ws_ping_interval_s: float = Field(20.0, gt=0, description="WebSocket ping every this many seconds")
    ws_ping_timeout_s: float = Field(20.0, gt=0, description="no pong within this closes the connection")
    malloc_trim_interval_s: float = Field(
        0.0, ge=0, description="return the allocator's free memory to the system this often (glibc); 0: never"
    )
    trace_python_memory: bool = Field(
        False, description="trace Python allocations (tracemalloc) and report them in /metrics; slower"
    )
    memory_census_interval_s: float = Field(
        0.0,
        ge=0,
        description="log a census of held memory (heap in use, tensors, object types) this often; 0: never",
    )
    onednn_primitive_cache_capacity: int = Field(
        ONEDNN_CACHE_DEFAULT,
        ge=0,
        description="compiled oneDNN kernels (one per tensor shape) kept per process; bounds native memory",
    )
    mkldnn_lru_cache_capacity: int = Field(
        MKLDNN_LRU_CACHE_DEFAULT,
        ge=0,
        description="oneDNN computations (one per tensor shape) torch's ideep keeps per thread; bounds native memory",
    )
    ws_close_timeout_s: float = Field(
        5.0, gt=0, description="a peer that has not answered our close frame within this is disconnected"
    )
    audio_ahead_s: float = Field(0.5, ge=0, description="how far answer audio is sent ahead of real time")
    audio_delta_ms: int = Field(100, ge=10, description="duration of one output audio delta")
    ws_send_buffer_bytes: int = Field(
        65536, ge=4096, description="kernel and transport send buffer of each WebSocket connection"
    )
    max_outbound_seconds: float = Field(
        10.0, gt=0, description="a client that takes nothing for this long (seconds of audio) is closed"
    )
    opus_bitrate: int = Field(
        24000, ge=6000, le=510000, description="bits per second of Opus answers when the client names none"
    )
    engine_audio_ahead_s: float = Field(2.0, gt=0, description="speech decoding pauses this far ahead")
    speech_tokens_per_step: int = Field(
        4, ge=1, le=64, description="most codec tokens an answer gets per engine step (at the steps' pace)"
    )
    speech_window_deadline: bool = Field(
        True,
        description="an answer gets the codec tokens to finish its next window before its audio runs out",
    )
    first_text_max_llm_share: float = Field(
        0.25,
        ge=0,
        le=1,
        description="extra text rounds only while one LLM forward is at most this share of a step",
    )
    overload_priority: bool = Field(
        True, description="an overloaded step gives codec tokens to first audio and answers about to run dry"
    )
    first_text_tokens_per_step: int = Field(
        3, ge=1, le=16, description="text tokens per engine step for a spoken answer owing its first segment"
    )
    codec_thread: bool = Field(
        False, description="the codec decodes on its own thread, overlapping the engine's next steps"
    )
    codec_max_windows: int = Field(
        4, ge=0, description="codec windows per decode on its thread, the most urgent first; 0: all waiting"
    )
    max_upload_bytes: int = Field(25 * 2**20, ge=1024, description="REST turn upload limit")
    max_upload_seconds: float = Field(60.0, gt=0, description="REST turn audio length limit")
    rest_timeout_s: float = Field(120.0, gt=0)
    shutdown_grace_s: float = Field(5.0, ge=0)
    failed_exit_delay_s: float = Field(
        2.0,
        ge=0,
        description="after an engine dies, /readyz answers 503 'failed' this long before the process exits",
    )
    resume_grace_s: float = Field(
        30.0, ge=0, description="a session whose connection dropped waits this long for a resume; 0: off"
    )
    resume_replay_s: float = Field(
        60.0, gt=0, description="sent messages kept this long for a resume to send again"
    )
    session_key_max_chars: int = Field(
        128, ge=8, le=1024, description="longest client-chosen ?session= key accepted"
    )

    # -- deployment (many processes behind a load balancer)
    instance_id: str | None = Field(
        None, description="names this process in session.created; default: hostname:port"
    )

    # -- turn taking defaults (clients may change them with session.update)
    vad_aggressiveness: int = Field(_VAD.aggressiveness, ge=0, le=3)
    vad_prefix_padding_ms: int = Field(_VAD.prefix_padding_ms, ge=0)
    vad_silence_ms: int = Field(
        _VAD.silence_duration_ms, ge=0, description="silence that ends a turn the state head left open"
    )
    vad_noise_margin_db: float = Field(
        _NOISE_GATE.margin_db, ge=0, description="speech must stand this far above the floor"
    )
    vad_min_speech_dbfs: float = Field(
        _NOISE_GATE.min_speech_dbfs, le=0, description="quieter frames are never speech"
    )
    vad_floor_rise_db_per_s: float = Field(
        _NOISE_GATE.rise_db_per_s, gt=0, description="how fast the noise floor may rise"
    )
    state_threshold: float = Field(0.5, gt=0, lt=1)
    min_interruption_ms: int = Field(200, ge=0, description="speech during an answer that pauses it")
    resume_rewind_ms: int = Field(250, ge=0, description="a resumed answer repeats this much before the cut")

    # -- sampling (defaults: the published server's, defined once in `LLMSampling`)
    temperature: float = Field(_SAMPLING.temperature, gt=0)
    top_k: int = Field(_SAMPLING.top_k, ge=1)
    top_p: float = Field(_SAMPLING.top_p, gt=0, le=1)
    seed: int | None = None

    # -- auth
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list, description="empty: no auth")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description="browser origins besides the server's own that may connect; * for any",
    )

    @field_validator("api_keys", "devices", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    def instance_name(self) -> str:
        """What `session.created` reports as the process that serves a session."""
        return self.instance_id or f"{socket.gethostname()}:{self.port}"

    def session_settings(self) -> SessionSettings:
        """What one Realtime session needs of these settings."""
        return SessionSettings(
            audio_ahead_s=self.audio_ahead_s,
            audio_delta_ms=self.audio_delta_ms,
            idle_timeout_s=self.idle_timeout_s,
            max_session_seconds=self.max_session_seconds,
            max_outbound_seconds=self.max_outbound_seconds,
            max_pending_audio_seconds=self.max_pending_audio_seconds,
            min_interruption_ms=self.min_interruption_ms,
            resume_rewind_ms=self.resume_rewind_ms,
            opus_bitrate=self.opus_bitrate,
            llm_max_len=self.llm_max_len,
            vad_aggressiveness=self.vad_aggressiveness,
            vad_prefix_padding_ms=self.vad_prefix_padding_ms,
            vad_silence_ms=self.vad_silence_ms,
            noise_gate=NoiseGateSettings(
                margin_db=self.vad_noise_margin_db,
                min_speech_dbfs=self.vad_min_speech_dbfs,
                rise_db_per_s=self.vad_floor_rise_db_per_s,
            ),
        )

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(
            max_sessions=self.max_sessions,
            admission_max_load=self.admission_max_load,
            admission_window_steps=self.admission_window_steps,
            admission_unmeasured_sessions=self.admission_unmeasured_sessions,
            llm_max_len=self.llm_max_len,
            max_answer_tokens=self.max_answer_tokens,
            max_turn_chunks=max(1, int(self.max_turn_seconds / CHUNK_SECONDS)),
            max_audio_ahead_s=self.engine_audio_ahead_s,
            speech_tokens_per_step=self.speech_tokens_per_step,
            first_text_tokens_per_step=self.first_text_tokens_per_step,
            first_text_max_llm_share=self.first_text_max_llm_share,
            overload_priority=self.overload_priority,
            window_deadline=self.speech_window_deadline,
            codec_thread=self.codec_thread,
            codec_max_windows=self.codec_max_windows,
            state_threshold=self.state_threshold,
            sampling=LLMSampling(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p),
            seed=self.seed,
        )
