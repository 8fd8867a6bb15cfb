"""A whole turn at once (REST): audio in, the spoken answer and its text out, through the engine."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import numpy as np

from app.engine.events import AnswerDone, AnswerStatus, AudioDelta
from app.engine.pool import EnginePool
from app.model import CHUNK_SAMPLES as CHUNK
from app.model import OUTPUT_RATE, WavError, pad_to_chunks, read_wav_bytes, resample, wav_bytes
from app.sessions.audio_formats import MODEL_INPUT_RATE


class UploadError(ValueError):
    """An uploaded question that cannot be answered; `status` is the HTTP status that says why."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def question_from_wav(data: bytes, max_seconds: float) -> np.ndarray:
    """Decode an uploaded WAV question to float32 at the model's input rate, or raise `UploadError`."""
    if not data:
        raise UploadError(
            400, "empty_upload", "the request has no audio: send a WAV file as the body or as a form file"
        )
    try:
        samples, rate = read_wav_bytes(data)
    except WavError as error:
        raise UploadError(
            415, "unsupported_audio", f"{error}; send a WAV file (PCM or float, any rate)"
        ) from None
    seconds = len(samples) / rate
    if seconds == 0:
        raise UploadError(400, "empty_audio", "the WAV file holds no samples")
    if seconds > max_seconds:
        raise UploadError(
            413, "audio_too_long", f"{seconds:.1f} s of audio exceeds the limit of {max_seconds:g} s"
        )
    return resample(samples, rate, MODEL_INPUT_RATE)


@dataclass
class TurnAnswer:
    """The answer of one offline turn."""

    text: str
    audio: np.ndarray  # float32, 24 kHz
    status: str
    timings: dict[str, float] = field(default_factory=dict)
    sample_rate: int = OUTPUT_RATE


def answer_wav(answer: TurnAnswer) -> bytes:
    """The answer's audio as a 16-bit WAV file."""
    return wav_bytes(answer.audio, answer.sample_rate)


async def answer_audio(
    pool: EnginePool, samples_16k: np.ndarray, *, instructions: str | None = None, timeout_s: float = 120.0
) -> TurnAnswer:
    """Hear the whole question (the state head does not end it early), then answer it.

    Raises `CapacityError` at once when no session place is free, `TimeoutError` after `timeout_s`.
    """
    started = time.perf_counter()
    ref = await pool.open_session(role=instructions)
    try:
        return await asyncio.wait_for(_run(ref, samples_16k, started), timeout_s)
    finally:
        await pool.close_session(ref.session_id)


async def _run(ref, samples_16k: np.ndarray, started: float) -> TurnAnswer:
    engine, sid = ref.engine, ref.session_id
    padded = pad_to_chunks(samples_16k, CHUNK)
    stream = None
    for start in range(0, len(padded), CHUNK):
        decision = await engine.feed_chunk(sid, padded[start : start + CHUNK], act=False)
        if decision.answer_id is not None:  # the turn reached its length limit: answered already
            stream = engine.answer_stream(sid)
            break
    heard = time.perf_counter()
    if stream is None:
        stream = await engine.commit_listen(sid)
    if stream is None:
        raise RuntimeError("the engine did not start an answer for this turn")
    pieces: list[np.ndarray] = []
    first_audio = None
    done: AnswerDone | None = None
    async for event in stream:
        if isinstance(event, AudioDelta):
            first_audio = first_audio or time.perf_counter()
            pieces.append(event.samples)
        elif isinstance(event, AnswerDone):
            done = event
    finished = time.perf_counter()
    audio = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
    timings = {
        "listen_s": heard - started,
        "answer_s": finished - heard,
        "total_s": finished - started,
        "input_s": len(samples_16k) / MODEL_INPUT_RATE,
        "output_s": len(audio) / OUTPUT_RATE,
    }
    if first_audio is not None:
        timings["first_audio_after_question_s"] = first_audio - heard
    status = done.status.value if done is not None else AnswerStatus.FAILED.value
    return TurnAnswer(text=done.text if done else "", audio=audio, status=status, timings=timings)
