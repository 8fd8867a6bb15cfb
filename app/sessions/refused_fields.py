"""Session fields a client may send that this server cannot honour: each is refused with an `error` that names
it, and left out of the applied configuration, instead of being echoed back as if it worked.

The rest of the same `session.update` still applies, so a client that sends a full configuration with one
field we cannot honour (LiveKit asks for input transcription by default) keeps a working session.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.sessions.items import ResponseParams
from app.sessions.session_config import AudioFormat, SessionConfig, SessionPatch

# tool_choice values that mean "no tool will be called" with an empty tool list.
_HARMLESS_TOOL_CHOICES = (None, "auto", "none")


@dataclass(frozen=True)
class Refusal:
    """One field of a `session.update` that is not applied."""

    param: str
    message: str


def refusals(patch: SessionPatch) -> list[Refusal]:
    """The fields of `patch` that the server cannot honour, in GA parameter names."""
    found: list[Refusal] = []
    audio_in = patch.audio.input if patch.audio else None
    audio_out = patch.audio.output if patch.audio else None
    if audio_in is not None and audio_in.transcription is not None:
        found.append(
            Refusal(
                "session.audio.input.transcription",
                "input transcription is not available: the model has no speech recogniser, so user audio "
                "items carry no transcript (beta name: input_audio_transcription); send null to silence this",
            )
        )
    if audio_in is not None and audio_in.noise_reduction is not None:
        found.append(
            Refusal(
                "session.audio.input.noise_reduction",
                "input noise reduction is not available on this server (beta name: "
                "input_audio_noise_reduction); send null to silence this",
            )
        )
    detection = audio_in.turn_detection if audio_in is not None else None
    if detection is not None and detection.idle_timeout_ms is not None:
        found.append(
            Refusal(
                "session.audio.input.turn_detection.idle_timeout_ms",
                "idle timeouts of turn detection are not available; the session's own idle limit is "
                "FREEZE_OMNI_IDLE_TIMEOUT_S",
            )
        )
    if audio_out is not None and audio_out.speed is not None and audio_out.speed != 1.0:
        found.append(
            Refusal("session.audio.output.speed", "the model speaks at one speed: only 1.0 is supported")
        )
    if patch.tools:
        found.append(
            Refusal(
                "session.tools", "function calling is not supported by this server: send an empty tool list"
            )
        )
    if patch.tool_choice not in _HARMLESS_TOOL_CHOICES:
        found.append(
            Refusal(
                "session.tool_choice",
                "function calling is not supported by this server: tool_choice may only be 'auto' or 'none'",
            )
        )
    return found


def without_refused(patch: SessionPatch) -> SessionPatch:
    """A copy of `patch` without the refused fields, so they keep their current (off) values."""
    patch = patch.model_copy(deep=True)
    for refusal in refusals(patch):
        *parents, name = refusal.param.split(".")[1:]
        owner = patch
        for parent in parents:
            owner = getattr(owner, parent)
        setattr(owner, name, None)
        owner.model_fields_set.discard(name)
    return patch


def response_refusals(params: ResponseParams | None, config: SessionConfig) -> list[Refusal]:
    """The fields of a `response.create` the server cannot honour (the response is then not created)."""
    if params is None:
        return []
    found: list[Refusal] = []
    if params.conversation not in (None, "auto", "none"):
        found.append(Refusal("response.conversation", "conversation must be 'auto' or 'none'"))
    if params.input is not None and params.conversation != "none":
        found.append(
            Refusal(
                "response.input",
                "input items are answered out of band only: send them with conversation 'none'",
            )
        )
    if params.tools:
        found.append(Refusal("response.tools", "function calling is not supported by this server"))
    if params.tool_choice not in _HARMLESS_TOOL_CHOICES:
        found.append(Refusal("response.tool_choice", "function calling is not supported by this server"))
    if params.prompt is not None:
        found.append(Refusal("response.prompt", "stored prompts are not available on this server"))
    if params.temperature is not None:
        found.append(
            Refusal(
                "response.temperature",
                "sampling is a server setting (FREEZE_OMNI_TEMPERATURE), not a per-response field",
            )
        )
    output_format = params.output_audio_format
    if isinstance(params.audio, dict) and isinstance(params.audio.get("output"), dict):
        output_format = params.audio["output"].get("format", output_format)
    if output_format is not None and not _same_format(output_format, config):
        found.append(
            Refusal(
                "response.audio.output.format",
                "a response speaks in the session's output format: change it with session.update",
            )
        )
    return found


def _same_format(requested: object, config: SessionConfig) -> bool:
    try:
        return AudioFormat.model_validate(requested) == config.output_format
    except ValueError:
        return False
