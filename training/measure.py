"""Figures of the committed model (models/trained) on recordings training never heard.

Every question twice (held-out speeds, pitches and noise seeds; other seeds than the tests'),
through the offline pipeline with greedy options: text answers, pocketsphinx WER of the spoken
answers, and when the state head first says "answer" relative to the question's end. Then the
ignorable sounds and barge-ins through the engine, as the tests do.
Usage: python -m training.measure   (prints JSON, writes training/runs/measure.json)
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import numpy as np

from app.engine.engine import Engine
from app.engine.events import TextDelta
from app.engine.settings import EngineSettings
from app.model.checkpoint_io.layout import load_freeze_omni
from app.model.fixtures.tiny import TinyPaths
from app.model.llm.duplex import ListenState
from app.model.llm.sampling import LLMSampling
from app.model.pipeline import InferOptions, OfflinePipeline
from training import domain
from training.asr import transcribe, word_error_rate
from training.common import MODEL_DIR, RUNS_DIR, setup_threads
from training.heldout import CHUNK, held_out_question, ignorable_sounds


def chunks(samples: np.ndarray) -> list[np.ndarray]:
    padded = np.concatenate([samples, np.zeros((-len(samples)) % CHUNK, dtype=np.float32)])
    return [padded[i : i + CHUNK] for i in range(0, len(padded), CHUNK)]


async def engine_figures(model, ignorables, barge_pairs) -> dict:
    settings = EngineSettings(
        max_sessions=4, max_answer_tokens=60, sampling=LLMSampling(greedy=True), decoder_greedy=True
    )
    engine = Engine(model, settings)
    await engine.start()
    try:
        answered = ignored = 0
        for rec in ignorables:
            sid = await engine.open_session()
            states = [(await engine.feed_chunk(sid, c, act=False)).state for c in chunks(rec.samples)]
            await engine.close_session(sid)
            answered += ListenState.ANSWER in states
            ignored += ListenState.IGNORE in states
        barged = correct = 0
        for first, second in barge_pairs:
            sid = await engine.open_session(seed=0)
            running = None
            for c in chunks(first.samples):
                decision = await engine.feed_chunk(sid, c, act=True)
                if decision.state == ListenState.ANSWER:
                    running = decision.stream
                    break
            if running is None:
                await engine.close_session(sid)
                continue
            await running.next_event()
            heard, answer = False, None
            for index, c in enumerate(chunks(second.samples)):
                decision = await engine.feed_chunk(sid, c, act=True)
                if decision.state == ListenState.ANSWER:
                    heard, answer = index >= second.end_chunk, decision.stream
                    break
            if heard and answer is not None:
                barged += 1
                text = ""
                async for event in answer:
                    if isinstance(event, TextDelta):
                        text += event.text
                correct += text == second.answer
            await engine.close_session(sid)
        return {
            "ignorable_sounds": len(ignorables),
            "ignorable_answered": answered,
            "ignorable_called_ignore": ignored,
            "barge_in_trials": len(barge_pairs),
            "barge_in_after_second_question": barged,
            "barge_in_second_answer_exact": correct,
        }
    finally:
        await engine.stop()


def main() -> None:
    setup_threads(1)
    paths = TinyPaths(MODEL_DIR)
    model = load_freeze_omni(paths.model_path, paths.llm_path)
    pipeline = OfflinePipeline(model)
    recordings = [
        held_out_question(i, i % len(domain.PAIRS), seed=50_000 + i) for i in range(2 * len(domain.PAIRS))
    ]
    texts, heard, delays = [], [], Counter()
    wrong = []
    for rec in recordings:
        result = pipeline.run(rec.samples, InferOptions.greedy())
        texts.append(result.text)
        if result.text != rec.answer:
            wrong.append((rec.description, result.text))
        heard.append(transcribe(result.audio, 24000, domain.answers()))
        first = next((i for i, s in enumerate(result.states) if s == ListenState.ANSWER.value), None)
        delays["never" if first is None else first - rec.end_chunk] += 1
    answers = [r.answer for r in recordings]
    figures = {
        "questions": len(recordings),
        "text_exact": sum(t == a for t, a in zip(texts, answers, strict=True)),
        "wrong": wrong,
        "spoken_wer": word_error_rate(answers, heard),
        "spoken_wer_of_correct_texts": word_error_rate(
            [a for t, a in zip(texts, answers, strict=True) if t == a],
            [h for t, a, h in zip(texts, answers, heard, strict=True) if t == a],
        ),
        "answer_delay_chunks": {str(k): v for k, v in sorted(delays.items(), key=lambda kv: str(kv[0]))},
    }
    pairs = [
        (
            held_out_question(i, (7 * i) % 50, 60_000 + i),
            held_out_question(i + 1, (7 * i + 13) % 50, 61_000 + i),
        )
        for i in range(10)
    ]
    figures.update(asyncio.run(engine_figures(model, ignorable_sounds(seed=40_000), pairs)))
    RUNS_DIR.mkdir(parents=True, exist_ok=True)  # absent in a fresh checkout (git-ignored)
    (RUNS_DIR / "measure.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
