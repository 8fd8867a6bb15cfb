"""The trained model over Opus: a held-out question sent as raw Opus packets is answered with the expected
answer, in Opus packets that the judge (pocketsphinx with the answer grammar) hears right, and that last
as long as the pcm16 answer to the same question.

Both answers come from the first session of a fresh server with the same seed, so they are the same
answer; the question goes in as Opus both times, so the model hears the same thing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib

import numpy as np
import pytest

from app.model.wav import resample
from tests.conftest import LiveServer, live_server_on
from tests.routes.conftest import WIRE_RATE, from_pcm16, run, transcript
from tests.routes.opus_client import (
    DECODE_RATE,
    PACKET_S,
    OpusClient,
    decode_packets,
    opus_client,
    opus_packets,
    opus_session,
)
from training import domain
from training.asr import transcribe, word_error_rate
from training.heldout import Recording

pytestmark = pytest.mark.slow

QUESTION = 3  # "What is two plus two?"
SILENCE_AFTER_S = 1.5  # as test_trained_live.py: the recording ends in 1 s of noise, then this
LOOKAHEAD_S = 0.0065
MAX_WER = 0.10


async def _ask(server: LiveServer, packets: list[bytes], output_opus: bool) -> tuple[OpusClient, dict]:
    async with opus_client(server.ws_url, opus_session(output_opus=output_opus)) as client:
        sender = asyncio.create_task(client.send_packets(packets))
        try:
            return client, await client.wait_for("response.done", timeout=60)
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender


def _first_session(trained_paths, packets: list[bytes], output_opus: bool) -> tuple[OpusClient, dict]:
    server = live_server_on(trained_paths)
    try:
        return run(_ask(server, packets, output_opus))
    finally:
        server.stop()


def test_a_question_in_opus_gets_the_expected_answer_in_opus(
    trained_paths, held_out_questions: list[Recording]
) -> None:
    recording = held_out_questions[QUESTION]
    speech = resample(recording.samples, 16000, WIRE_RATE)
    packets = opus_packets(np.concatenate([speech, np.zeros(int(SILENCE_AFTER_S * WIRE_RATE), np.float32)]))

    opus_side, opus_done = _first_session(trained_paths, packets, output_opus=True)
    pcm_side, pcm_done = _first_session(trained_paths, packets, output_opus=False)

    for done in (opus_done, pcm_done):
        assert done["response"]["status"] == "completed", done
        assert transcript(done) == recording.answer
    decoded = decode_packets(opus_side.packets(opus_done["response"]["id"]))
    heard = transcribe(resample(decoded, DECODE_RATE, 16000), 16000, domain.answers())
    wer = word_error_rate([recording.answer], [heard])
    pcm = from_pcm16(
        b"".join(
            base64.b64decode(e["delta"])
            for e in pcm_side.events("response.output_audio.delta")
            if e["response_id"] == pcm_done["response"]["id"]
        )
    )
    opus_seconds, pcm_seconds = len(decoded) / DECODE_RATE, len(pcm) / WIRE_RATE
    print(
        f"\nOpus answer: heard {heard!r} (WER {wer:.0%}), {opus_seconds:.3f} s in {len(opus_side.frames)} "
        f"packets, {sum(len(f.packet) for f in opus_side.frames)} bytes; pcm16 answer {pcm_seconds:.3f} s"
    )
    assert wer <= MAX_WER, f"heard {heard!r} for {recording.answer!r}"
    assert pcm_seconds + LOOKAHEAD_S <= opus_seconds < pcm_seconds + LOOKAHEAD_S + PACKET_S + 1e-6
