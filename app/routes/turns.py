"""`POST /v1/turns`: a WAV question in, the spoken answer out (WAV, or JSON with base64 audio)."""

from __future__ import annotations

import base64
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from app.engine.errors import CapacityError
from app.routes.deps import AllowedOrigin, ApiError, Authorized, Server
from app.sessions.offline_turn import UploadError, answer_audio, answer_wav, question_from_wav

router = APIRouter()


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
    dependencies=[AllowedOrigin, Authorized],
)
async def turn(request: Request, server: Server, instructions: str | None = None) -> Response:
    settings = server.settings
    if server.draining:
        raise ApiError(
            503,
            "server_shutting_down",
            "this server is shutting down; send the turn again",
            {"Retry-After": "1"},
        )
    if server.fatal_error is not None:
        raise ApiError(503, "server_failed", "this server failed and is restarting; send the turn again")
    if not server.ready:
        raise ApiError(
            503, "server_not_ready", "the model is still loading; try again shortly", {"Retry-After": "5"}
        )
    data = await _upload(request, settings.max_upload_bytes)
    if data is None:
        raise ApiError(413, "upload_too_large", f"the upload exceeds {settings.max_upload_bytes} bytes")
    try:
        question = question_from_wav(data, settings.max_upload_seconds)
    except UploadError as error:
        raise ApiError(error.status, error.code, str(error)) from None
    try:
        answer = await answer_audio(
            server.pool, question, instructions=instructions, timeout_s=settings.rest_timeout_s
        )
    except CapacityError as error:
        raise ApiError(503, "capacity_exceeded", str(error), {"Retry-After": "2"}) from None
    except TimeoutError:
        raise ApiError(504, "timeout", f"the answer took longer than {settings.rest_timeout_s:g} s") from None
    server.metrics.rest_turns += 1
    audio = answer_wav(answer)
    if "application/json" in request.headers.get("accept", ""):
        return JSONResponse(
            {
                "text": answer.text,
                "status": answer.status,
                "sample_rate": answer.sample_rate,
                "audio_wav_base64": base64.b64encode(audio).decode(),
                "timings": {k: round(v, 4) for k, v in answer.timings.items()},
            }
        )
    return Response(
        audio,
        media_type="audio/wav",
        headers={"X-Answer-Text": quote(answer.text[:2000]), "X-Answer-Status": answer.status},
    )


@router.api_route("/v1/turns", methods=["GET", "PUT", "PATCH", "DELETE"], include_in_schema=False)
async def turn_wrong_method(request: Request) -> Response:
    # Without this the static page mount at "/" would answer 404 for any other method.
    raise ApiError(
        405,
        "method_not_allowed",
        f"{request.method} is not allowed on /v1/turns: POST a WAV file (see the README)",
        {"Allow": "POST"},
    )
