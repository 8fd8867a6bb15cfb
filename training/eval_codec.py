"""Codec intelligibility on sentences it never heard: originals vs. encode -> tokens -> decode.

Usage: python -m training.eval_codec   (after training.train_codec; prints JSON)
"""

from __future__ import annotations

import json

import torch

from app.model.speech_out.codec import load_codec
from training import domain
from training.asr import transcribe, word_error_rate
from training.common import RUNS_DIR, setup_threads
from training.synth import espeak
from training.train_codec import CodecEncoder, tokenise

HELD_OUT = [
    "The little cat sleeps on the warm mat.",
    "Please open the window before dinner.",
    "My brother likes to read old books.",
    "We walked to the park in the rain.",
    "The train leaves at nine in the morning.",
    "She bought three apples and a lemon.",
    "Turn left at the big church.",
    "The water in the lake is cold.",
    "I will call you again tomorrow.",
    "His car is parked near the school.",
    "They played music all night long.",
    "The garden is full of flowers.",
]


def main() -> None:
    setup_threads(1)
    codec = load_codec(RUNS_DIR / "codec" / "codec")
    encoder = CodecEncoder(codec.latent_dim)
    encoder.load_state_dict(torch.load(RUNS_DIR / "codec" / "encoder.pt", weights_only=True))
    encoder.eval()
    table = codec.quantizer.quantizer_modules[0].embedding.weight
    voice, speed, pitch = domain.ANSWER_VOICE
    originals, rebuilt = [], []
    for text in HELD_OUT:
        wave = espeak(text, voice, speed, pitch, rate=24000)
        with torch.no_grad():
            audio = codec(torch.tensor([tokenise(encoder, table, wave)])).numpy()[0]
        originals.append(transcribe(wave, 24000, HELD_OUT))
        rebuilt.append(transcribe(audio, 24000, HELD_OUT))
    figures = {
        "held_out_sentences": len(HELD_OUT),
        "wer_original": word_error_rate(HELD_OUT, originals),
        "wer_reconstructed": word_error_rate(HELD_OUT, rebuilt),
    }
    (RUNS_DIR / "codec" / "held_out.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
