"""What one Realtime session needs of the server's settings: its own small object, not the whole `Settings`.

The app builds it with `Settings.session_settings()`; the defaults live there (and in the VAD's own
dataclasses), not here.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.sessions.noise_floor import NoiseGateSettings


@dataclass(frozen=True)
class SessionSettings:
    """Pacing, limits and turn-taking defaults of one session (each is a `FREEZE_OMNI_*` setting)."""

    audio_ahead_s: float  # answer audio goes out at most this far ahead of real time
    audio_delta_ms: int  # one output audio delta
    idle_timeout_s: float  # no client event for this long closes the session
    max_session_seconds: float  # a session this old is closed
    max_outbound_seconds: float  # a client that takes nothing for this long is closed
    max_pending_audio_seconds: float  # unheard input beyond this is dropped with an error
    min_interruption_ms: int  # speech into an answer for this long pauses it
    resume_rewind_ms: int  # a resumed answer repeats this much
    opus_bitrate: int  # Opus answers when the client names no bitrate
    llm_max_len: int  # tokens a conversation holds: bounds the typed text waiting for a response
    vad_aggressiveness: int  # turn detection defaults a client may change
    vad_prefix_padding_ms: int
    vad_silence_ms: int
    noise_gate: NoiseGateSettings
