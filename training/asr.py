"""Judging intelligibility: pocketsphinx 5.1.1 with a JSGF grammar of the sentence set, and WER.

Pocketsphinx's default language model is useless on synthetic speech (about 90% WER), so the
recogniser chooses among the expected sentences; a fresh decoder per utterance keeps one
utterance's adaptation from leaking into the next. Exact digital silence (espeak-ng's pauses, zero
padding) derails its features, so the audio gets 0.3 s of padding and a -60 dBFS noise floor.
"""

from __future__ import annotations

import re

import numpy as np

from app.model.wav import resample


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def jsgf(sentences: list[str]) -> str:
    """A grammar whose only public rule is one of `sentences`, word for word."""
    alternatives = " | ".join("( " + " ".join(words(s)) + " )" for s in dict.fromkeys(sentences))
    return f"#JSGF V1.0;\ngrammar sentences;\npublic <sentence> = {alternatives};\n"


def transcribe(samples: np.ndarray, rate: int, sentences: list[str]) -> str:
    """Recognise float samples (any rate, resampled to 16 kHz) against the sentence grammar.

    A fresh decoder per call: pocketsphinx adapts its feature normalisation as it hears audio.
    """
    from pocketsphinx import Decoder

    audio = resample(np.asarray(samples, dtype=np.float32), rate, 16000)
    pad = np.zeros(int(0.3 * 16000), dtype=np.float32)
    audio = np.concatenate([pad, audio, pad])
    audio = audio + 1e-3 * np.random.default_rng(0).standard_normal(len(audio)).astype(np.float32)
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    decoder = Decoder(samprate=16000, lm=None, loglevel="FATAL")
    decoder.add_jsgf_string("sentences", jsgf(sentences))
    decoder.activate_search("sentences")
    decoder.start_utt()
    decoder.process_raw(pcm, full_utt=True)
    decoder.end_utt()
    hyp = decoder.hyp()
    return hyp.hypstr if hyp is not None else ""


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER over normalised words (jiwer)."""
    import jiwer

    refs = [" ".join(words(r)) for r in references]
    hyps = [" ".join(words(h)) or "<empty>" for h in hypotheses]
    return float(jiwer.wer(refs, hyps))
