"""`POST /v1/turns`: a WAV question in, the spoken answer out (WAV, or JSON with base64 audio)."""

from __future__ import annotations

import base64
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.engine.errors import CapacityError
from app.model import WavError, read_wav_bytes, resample, wav_bytes
from app.routes.auth import error_body, key_is_valid, presented_key
from app.server_state import ServerState
from app.sessions.offline_turn import answer_audio

router = APIRouter()


def _error(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return JSONResponse(error_body(code, message, kind), status_code=status, headers=headers or None)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The request body, or None when it exceeds `limit` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _upload(request: Request, limit: int) -> bytes | None:
    """The WAV bytes, from a raw body or the first file of a multipart form."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form(max_part_size=limit)
        for value in form.values():
            if hasattr(value, "read"):
                data = await value.read(limit + 1)
                return None if len(data) > limit else data
        return b""
    return await _read_limited(request, limit)


@router.post(
    "/v1/turns",
    summary="Answer one spoken question",
    response_description="audio/wav (24 kHz mono pcm16), or JSON when asked with Accept: application/json",
)
async def turn(request: Request, instructions: str | None = None) -> Response:
    server: ServerState = request.app.state.server
    settings = server.settings
    if not key_is_valid(presented_key(request.headers), settings.api_keys):
        return _error(
            401,
            "invalid_api_key",
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            **{"WWW-Authenticate": "Bearer"},
        )
    if not server.ready:
        return _error(
            503, "server_not_ready", "the model is still loading; try again shortly", **{"Retry-After": "5"}
        )
    data = await _upload(request, settings.max_upload_bytes)
    if data is None:
        return _error(413, "upload_too_large", f"the upload exceeds {settings.max_upload_bytes} bytes")
    if not data:
        return _error(
            400, "empty_upload", "the request has no audio: send a WAV file as the body or as a form file"
        )
    try:
        samples, rate = read_wav_bytes(data)
    except WavError as error:
        return _error(415, "unsupported_audio", f"{error}; send a WAV file (PCM or float, any rate)")
    seconds = len(samples) / rate
    if seconds == 0:
        return _error(400, "empty_audio", "the WAV file holds no samples")
    if seconds > settings.max_upload_seconds:
        return _error(
            413,
            "audio_too_long",
            f"{seconds:.1f} s of audio exceeds the limit of {settings.max_upload_seconds:g} s",
        )
    try:
        answer = await answer_audio(
            server.pool,
            resample(samples, rate, 16000),
            instructions=instructions,
            timeout_s=settings.rest_timeout_s,
        )
    except CapacityError as error:
        return _error(503, "capacity_exceeded", str(error), **{"Retry-After": "2"})
    except TimeoutError:
        return _error(504, "timeout", f"the answer took longer than {settings.rest_timeout_s:g} s")
    server.metrics.rest_turns += 1
    audio = wav_bytes(answer.audio, 24000)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(
            {
                "text": answer.text,
                "status": answer.status,
                "sample_rate": 24000,
                "audio_wav_base64": base64.b64encode(audio).decode(),
                "timings": {k: round(v, 4) for k, v in answer.timings.items()},
            }
        )
    return Response(
        audio,
        media_type="audio/wav",
        headers={"X-Answer-Text": quote(answer.text[:2000]), "X-Answer-Status": answer.status},
    )
