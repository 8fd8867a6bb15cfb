"""The model's audio constants agree with the front end and codec they describe."""

from __future__ import annotations

from app.model import CHUNK_SAMPLES, CHUNK_SECONDS, INPUT_RATE, OUTPUT_RATE, FbankConfig
from app.model.speech_out.codec import CodecConfig


def test_chunk_is_the_front_ends_chunk() -> None:
    config = FbankConfig()
    assert config.sample_rate == INPUT_RATE
    assert config.chunk_samples == CHUNK_SAMPLES
    assert CHUNK_SECONDS == 0.16


def test_output_rate_is_the_codecs_default() -> None:
    assert CodecConfig().sampling_rate == OUTPUT_RATE
