"""The model's audio facts, defined once: the rate it hears at, the rate it speaks at, its 160 ms chunk."""

from __future__ import annotations

INPUT_RATE = 16000  # Hz: the fbank front end, the encoder and the VAD in front of it
OUTPUT_RATE = 24000  # Hz: what the codec writes
CHUNK_SAMPLES = 16 * 160  # one streaming chunk: 16 fbank frames of a 160-sample shift (FbankConfig)
CHUNK_SECONDS = CHUNK_SAMPLES / INPUT_RATE  # 0.16
