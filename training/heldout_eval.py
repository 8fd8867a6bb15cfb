"""Issue 19's figures: the model on recordings training never saw, per condition.

Every recording is made here, seeded, from settings outside the training lists: held-out speeds and
pitches (`domain.HELD_OUT_*`), voices picked per index, seeds 190 000 and up (training, tests and
`training.measure` use others), and conditions made with sox (telephone band + G.711 mu-law at
8 kHz, sox's reverberator) or with held-out sentences (babble, out-of-domain speech) that the
training recipe (`training.augment`, numpy) never uses.

Conditions (50 questions each unless said):
    clean         the tests' recipe: 0.3 s lead, 1 s trail, white noise at 30 dB
    live          the clean recordings through the engine (`act=True`): the answer starts at the
                  chunk where the state head fires, as the server does it
    live_babble   the babble 10 dB recordings through the engine
    phone         sox band-pass 300-3400 Hz, 8 kHz, mu-law encoded and decoded
    big_room      sox reverb 90 % reverberance, room scale 100; small_room: 40 %, room scale 20
    babble10/5    three other talkers (held-out sentences) at 10 / 5 dB below the question
    white10/5     white noise at 10 / 5 dB SNR
    quiet20       the clean recording 20 dB quieter over a fixed -70 dBFS floor
    pauses2s      2 s of (noisy) pause before and after the question
    ood           20 out-of-domain utterances: share answered with domain.SORRY
    long_pauses   20 long sentences with 150-300 ms pauses between words: answered before their end?
    ignorable     16 backchannels and noises (clean) and the same in babble: answered?
    greetings     "Hello world." and other greetings: answered with the greeting's answer?
Offline conditions run `OfflinePipeline`'s listen and answer loops (greedy, text only): the whole
recording is heard before the answer, as REST and `infer` do.

Usage: python -m training.heldout_eval [--model models/trained] [--out training/runs/heldout.json]
       [--only clean,phone] [--count 50]
       python -m training.heldout_eval --table old.json new.json   (a markdown table side by side)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from app.model.checkpoint_io.layout import load_freeze_omni
from app.model.fixtures.tiny import TinyPaths
from app.model.llm.duplex import ListenState
from app.model.llm.qwen2 import LLMRow
from app.model.pipeline import InferOptions, OfflinePipeline
from app.model.turn_parts import system_prefill_embeds
from app.model.wav import read_wav_bytes, resample, wav_bytes
from training import domain
from training.common import MODEL_DIR, RUNS_DIR, setup_logging, setup_threads
from training.synth import _tool, espeak, noise, noise_clip, place, with_breaks

CHUNK = 2560
SEED = 190_000
ANSWER, IGNORE = ListenState.ANSWER.value, ListenState.IGNORE.value

OOD_HELD_OUT = [
    "What is the capital of Germany?",
    "How do airplanes fly?",
    "Can you recommend a good book?",
    "Switch off the television.",
    "What is the price of gold today?",
    "Who wrote this famous play?",
    "Please water the plants tomorrow.",
    "How many people live in Paris?",
    "Is it going to snow this weekend?",
    "Find me a hotel in Berlin.",
    "What are you doing later?",
    "I need a new pair of shoes.",
    "Explain how computers work.",
    "My sister likes to play tennis.",
    "What is the best way to learn piano?",
    "Order a taxi to the airport.",
    "Where did I park my car?",
    "How hot is the surface of the sun?",
    "Tell me a story about a dragon.",
    "Why do birds sing in the morning?",
]
LONG_HELD_OUT = [
    "Last winter we drove all the way to the coast and stayed in a small house near the harbour.",
    "The teacher asked every student to bring a drawing of their favourite animal to school.",
    "Before the concert started the musicians tuned their instruments for a very long time.",
    "My neighbour has been building a wooden boat in his garage for almost three years.",
    "We were supposed to meet at the corner of the street but nobody came until noon.",
]
BABBLE_SENTENCES = [
    "The committee will publish its report early next spring.",
    "He carried the heavy boxes up the narrow stairs.",
    "Our flight was delayed because of the strong wind.",
    "She planted tomatoes and beans behind the cottage.",
    "The museum closes at five on most weekdays.",
    "They painted the old bridge a bright shade of green.",
    "Nobody remembered where the spare keys were hidden.",
    "A quiet voice whispered something from the back row.",
]
GREETINGS_HELD_OUT = ["Hello world.", "Hello everyone.", "Hi there.", "Hey.", "Hello world."]


def voice_for(index: int) -> tuple[str, int, int]:
    voice = domain.QUESTION_VOICES[(7 * index + 5) % len(domain.QUESTION_VOICES)]
    return voice, domain.HELD_OUT_SPEEDS[index % 3], domain.HELD_OUT_PITCHES[(index // 3) % 4]


def sox(samples: np.ndarray, *effects: str) -> np.ndarray:
    out = subprocess.run(
        [_tool("sox"), "-t", "wav", "-", "-t", "wav", "-b", "16", "-", *effects],
        input=wav_bytes(np.clip(samples, -1, 1), 16000),
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = read_wav_bytes(out)
    return resample(audio[:, 0] if audio.ndim > 1 else audio, rate, 16000)


def telephone(samples: np.ndarray) -> np.ndarray:
    """300-3400 Hz, 8 kHz, G.711 mu-law (sox's own codec), back to 16 kHz."""
    narrow = resample(sox(samples, "sinc", "300-3400"), 16000, 8000)
    coded = subprocess.run(
        [_tool("sox"), "-t", "wav", "-", "-t", "ul", "-r", "8000", "-c", "1", "-"],
        input=wav_bytes(np.clip(narrow, -1, 1), 8000),
        check=True,
        capture_output=True,
    ).stdout
    decoded = subprocess.run(
        [_tool("sox"), "-t", "ul", "-r", "8000", "-c", "1", "-", "-t", "wav", "-b", "16", "-"],
        input=coded,
        check=True,
        capture_output=True,
    ).stdout
    audio, rate = read_wav_bytes(decoded)
    return resample(audio, rate, 16000)


def babble(length: int, rng: np.random.Generator, talkers: int = 3) -> np.ndarray:
    out = np.zeros(length, dtype=np.float32)
    for _ in range(talkers):
        parts = []
        while sum(map(len, parts)) < length:
            voice, speed, pitch = voice_for(int(rng.integers(1000)))
            clip = espeak(BABBLE_SENTENCES[int(rng.integers(len(BABBLE_SENTENCES)))], voice, speed, pitch)
            parts += [clip / (np.sqrt(np.mean(clip**2)) + 1e-9), np.zeros(int(16000 * rng.uniform(0.1, 0.3)))]
        voice_track = np.concatenate(parts)
        out += voice_track[:length]
    return out / (np.sqrt(np.mean(out**2)) + 1e-9)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(x**2) + 1e-12))


def condition_recording(name: str, sound: np.ndarray, seed: int) -> tuple[np.ndarray, int]:
    """(samples, end_chunk) of `sound` under condition `name`."""
    rng = np.random.default_rng(seed)
    lead, trail = (2.0, 2.0) if name == "pauses2s" else (0.3, 1.0)
    snr = {"white10": 10.0, "white5": 5.0}.get(name, 30.0)
    placed = place(sound, rng, lead_s=lead, trail_s=trail, snr_db=snr, noise_kind="white")
    x, end_chunk = placed.samples, (placed.end - 1) // CHUNK
    if name == "phone":
        x = telephone(x)
    elif name == "big_room":
        x = sox(x, "reverb", "90", "50", "100", "100", "20")[: len(x)]
    elif name == "small_room":
        x = sox(x, "reverb", "40", "50", "20")[: len(x)]
    elif name.startswith("babble"):
        level = rms(sound) * 10 ** (-float(name[6:]) / 20)
        x = x + level * babble(len(x), rng)
    elif name == "quiet20":
        x = 0.1 * x + 10 ** (-70 / 20) * noise("white", len(x), rng)
    return np.clip(x, -1, 1).astype(np.float32), end_chunk


class Listener:
    """The runtime's offline listen and answer loops on one recording (greedy, text only)."""

    def __init__(self, model) -> None:
        self.model = model
        self.pipeline = OfflinePipeline(model)

    def run(self, samples: np.ndarray, stop_at_answer: bool = False) -> tuple[str, list[str]]:
        model, pipeline = self.model, self.pipeline
        with torch.inference_mode():
            cache = model.llm.new_cache(num_slots=1, max_len=2048)
            slot = cache.allocate()
            model.llm.forward_rows([LLMRow(slot, system_prefill_embeds(model, None))], cache)
            _, states = pipeline._listen(np.asarray(samples, dtype=np.float32), slot, cache)
            ids, _ = pipeline._answer(slot, cache, InferOptions.greedy(max_new_tokens=40), torch.Generator())
        return model.tokenizer.decode(ids, skip_special_tokens=True), states


async def live_answers(model, recordings: list[tuple[np.ndarray, int, str]]) -> dict:
    """Through the engine as the server drives it: chunks with act=True; the answer starts when the
    head fires. Text of the answer and where it fired relative to the question's end."""
    from app.engine.engine import Engine
    from app.engine.events import TextDelta
    from app.engine.settings import EngineSettings
    from app.model.llm.sampling import LLMSampling

    settings = EngineSettings(
        max_sessions=2, max_answer_tokens=60, sampling=LLMSampling(greedy=True), decoder_greedy=True
    )
    engine = Engine(model, settings)
    await engine.start()
    exact, delays, wrong = 0, [], []
    try:
        for samples, end_chunk, answer in recordings:
            sid = await engine.open_session(seed=0)
            padded = np.concatenate([samples, np.zeros((-len(samples)) % CHUNK, dtype=np.float32)])
            fired, stream = None, None
            for index in range(0, len(padded) // CHUNK):
                decision = await engine.feed_chunk(sid, padded[index * CHUNK : (index + 1) * CHUNK], act=True)
                if decision.state == ListenState.ANSWER:
                    fired, stream = index, decision.stream
                    break
            text = ""
            if stream is not None:
                async for event in stream:
                    if isinstance(event, TextDelta):
                        text += event.text
            await engine.close_session(sid)
            delays.append(None if fired is None else fired - end_chunk)
            exact += text == answer
            if text != answer:
                wrong.append([answer, text, delays[-1]])
    finally:
        await engine.stop()
    return {"count": len(recordings), "exact": exact, "fire_delay": _delays(delays), "wrong": wrong[:10]}


def _delays(delays: list[int | None]) -> dict:
    return {
        "within_2_chunks": sum(d is not None and 0 <= d <= 2 for d in delays),
        "early": sum(d is not None and d < 0 for d in delays),
        "late": sum(d is not None and d > 2 for d in delays),
        "never": sum(d is None for d in delays),
    }


def question_sound(index: int) -> tuple[np.ndarray, str]:
    pair = domain.PAIRS[index % len(domain.PAIRS)]
    voice, speed, pitch = voice_for(index)
    return espeak(pair.question, voice, speed, pitch), pair.answer


OFFLINE = [
    "clean",
    "phone",
    "big_room",
    "small_room",
    "babble10",
    "babble5",
    "white10",
    "white5",
    "quiet20",
    "pauses2s",
]
ALL = ["clean", "live", "live_babble", *OFFLINE[1:], "ood", "long_pauses", "ignorable", "greetings"]


def summary(figures: dict) -> dict[str, str]:
    """One cell per condition, as training/README.md reports them."""
    out = {}
    for name in ALL:
        r = figures.get(name)
        if r is None:
            continue
        if name in OFFLINE or name.startswith("live"):
            cell = f"{r['exact']}/{r['count']} exact"
            d = r["fire_delay"]
            cell += f"; head within 2 chunks {d['within_2_chunks']}, early {d['early']}, never {d['never']}"
            if name in OFFLINE and r.get("sorry"):
                cell += f"; SORRY {r['sorry']}"
        elif name == "ood":
            cell = f"SORRY {r['sorry']}/{r['count']}"
        elif name == "long_pauses":
            cell = f"answered before the end {r['answered_before_end']}/{r['count']}"
        elif name == "ignorable":
            a = r["answered"]
            cell = f"answered {a['clean']}/{r['count']} (clean), {a['babble10']}/{r['count']} (babble 10 dB)"
        else:
            cell = f"{r['exact']}/{r['count']} answered as greetings"
        out[name] = cell
    return out


def table(paths: list[Path]) -> str:
    """A markdown table of several result files side by side (e.g. the old and the new model)."""
    runs = [json.loads(p.read_text()) for p in paths]
    cells = [summary(r) for r in runs]
    lines = ["| condition | " + " | ".join(p.stem for p in paths) + " |", "|---" * (len(paths) + 1) + "|"]
    for name in ALL:
        if any(name in c for c in cells):
            lines.append(f"| {name} | " + " | ".join(c.get(name, "") for c in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=MODEL_DIR)
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "heldout.json")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated conditions")
    parser.add_argument("--count", type=int, default=50, help="questions per condition")
    parser.add_argument("--table", type=Path, nargs="+", help="print result files side by side and exit")
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
        return
    setup_logging()
    setup_threads(1)
    paths = TinyPaths(args.model)
    model = load_freeze_omni(paths.model_path, paths.llm_path)
    listener = Listener(model)
    sounds = [question_sound(i) for i in range(args.count)]
    figures: dict = {"model": str(args.model)}
    if args.out.exists():
        figures.update(json.loads(args.out.read_text()))
    for name in args.only.split(","):
        started = time.perf_counter()
        if name in OFFLINE:
            exact, sorry, delays, wrong = 0, 0, [], []
            for i, (sound, answer) in enumerate(sounds):
                samples, end_chunk = condition_recording(name, sound, SEED + 1000 * OFFLINE.index(name) + i)
                text, states = listener.run(samples)
                exact += text == answer
                sorry += text == domain.SORRY
                first = next((k for k, s in enumerate(states) if s == ANSWER), None)
                delays.append(None if first is None else first - end_chunk)
                if text != answer:
                    wrong.append([answer, text])
            result = {
                "count": len(sounds),
                "exact": exact,
                "sorry": sorry,
                "fire_delay": _delays(delays),
                "wrong": wrong[:8],
            }
        elif name in ("live", "live_babble"):
            base = "clean" if name == "live" else "babble10"
            recordings = []
            for i, (sound, answer) in enumerate(sounds):
                samples, end_chunk = condition_recording(base, sound, SEED + 1000 * OFFLINE.index(base) + i)
                recordings.append((samples, end_chunk, answer))
            result = asyncio.run(live_answers(model, recordings))
        elif name == "ood":
            texts = []
            for i, sentence in enumerate(OOD_HELD_OUT):
                voice, speed, pitch = voice_for(300 + i)
                samples, _ = condition_recording(
                    "clean", espeak(sentence, voice, speed, pitch), SEED + 50_000 + i
                )
                texts.append(listener.run(samples)[0])
            result = {
                "count": len(texts),
                "sorry": sum(t == domain.SORRY for t in texts),
                "answers": texts[:8],
            }
        elif name == "long_pauses":
            early = 0
            details = []
            for i in range(20):
                rng = np.random.default_rng(SEED + 60_000 + i)
                voice, speed, pitch = voice_for(400 + i)
                ssml = with_breaks(LONG_HELD_OUT[i % len(LONG_HELD_OUT)], rng, 3, 150, 300)
                samples, end_chunk = condition_recording(
                    "clean", espeak(ssml, voice, speed, pitch, ssml=True), SEED + 60_000 + i
                )
                _, states = listener.run(samples)
                first = next((k for k, s in enumerate(states) if s == ANSWER), None)
                early += first is not None and first < end_chunk
                details.append(None if first is None else first - end_chunk)
            result = {"count": 20, "answered_before_end": early, "fire_delay": details}
        elif name == "ignorable":
            answered = {"clean": 0, "babble10": 0}
            total = 0
            for i in range(16):
                if i < 8:
                    voice, speed, pitch = voice_for(500 + i)
                    sound = espeak(domain.BACKCHANNELS[i], voice, speed, pitch)
                else:
                    sound = noise_clip(np.random.default_rng(SEED + 70_000 + i))
                for cond in answered:
                    samples, _ = condition_recording(cond, sound, SEED + 71_000 + i)
                    _, states = listener.run(samples)
                    answered[cond] += ANSWER in states
                total += 1
            result = {"count": total, "answered": answered}
        elif name == "greetings":
            want = domain.PAIRS[domain.GREETING_PAIR].answer
            texts = []
            for i, text in enumerate(GREETINGS_HELD_OUT):
                voice, speed, pitch = voice_for(600 + 3 * i)
                samples, _ = condition_recording(
                    "clean", espeak(text, voice, speed, pitch), SEED + 80_000 + i
                )
                texts.append(listener.run(samples)[0])
            result = {"count": len(texts), "exact": sum(t == want for t in texts), "answers": texts}
        else:
            raise SystemExit(f"unknown condition {name!r}; known: {', '.join(ALL)}")
        result["seconds"] = round(time.perf_counter() - started, 1)
        figures[name] = result
        print(name, json.dumps(result), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
