"""Generate the training data into training/data/ (seeded; espeak-ng and sox; nothing downloaded).

    questions.npz   every question in many voices, speeds and pitches (16 kHz), train and val
    ignore.npz      backchannels ("mhm", "yeah", ...) in many voices (16 kHz); noises are made on the fly
    answers.npz     every answer in the one answer voice (24 kHz): the codec's and the decoder's target
    codec.npz       about 14 minutes of the answer voice (24 kHz) for the codec

Usage: python -m training.make_data [--out training/data] [--variants 24] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from training import domain
from training.common import DATA_DIR, save_clips, setup_logging
from training.synth import espeak, sox_effects, with_breaks

log = logging.getLogger("make_data")

NUMBER_WORDS = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
]
COLORS = ["red", "orange", "yellow", "green", "blue", "white", "black", "brown", "pink", "purple", "gray"]
THINGS = ["sky", "grass", "snow", "sun", "sea", "car", "door", "cup", "ball", "house", "tree", "hat"]
GENERIC = [
    "I can answer simple questions.",
    "Please ask me about numbers.",
    "The weather is nice today.",
    "We can talk about colors and days.",
    "Thank you for asking.",
    "That is a good question.",
    "Let me think about that.",
    "The answer is very simple.",
    "Have a nice day and sleep well.",
    "Good morning and welcome to you.",
    "My name is Robin and I am a small voice robot.",
    "A week has seven days and a year has twelve months.",
    "A day has twenty four hours.",
    "A dog has four legs and a bird has two legs.",
    "Yes I can hear you very well.",
    "I was trained on a small computer in a few minutes.",
]
_EFFECTS = [
    ["highpass", "250"],
    ["lowpass", "3500"],
    ["treble", "-6"],
    ["bass", "+6"],
    ["equalizer", "1000", "2q", "+6"],
]


def codec_sentences(rng: np.random.Generator, count: int) -> list[str]:
    """Sentences in the answers' vocabulary (and a little more) for the codec's voice."""
    pool: list[str] = list(GENERIC)
    for a in range(11):
        for b in range(11):
            if a + b <= 12:
                pool.append(f"{NUMBER_WORDS[a]} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.")
            if a >= b:
                pool.append(f"{NUMBER_WORDS[a]} minus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a - b]}.")
            if a * b <= 12:
                pool.append(f"{NUMBER_WORDS[a]} times {NUMBER_WORDS[b]} is {NUMBER_WORDS[a * b]}.")
    days = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
    for i, day in enumerate(days):
        pool += [f"{days[(i + 1) % 7]} comes after {day}.", f"{day} comes before {days[(i + 1) % 7]}."]
        pool += [f"Today is {day}.", f"The meeting is on {day}."]
    for thing in THINGS:
        for color in COLORS:
            pool.append(f"The {thing} is {color}.")
    chosen = rng.choice(len(pool), size=min(count, len(pool)), replace=False)
    return [pool[i].capitalize() for i in chosen]


def question_variants(rng: np.random.Generator, text: str, count: int, speeds, pitches) -> list[np.ndarray]:
    out = []
    for _ in range(count):
        voice = str(rng.choice(domain.QUESTION_VOICES))
        speed = int(rng.choice(speeds)) + int(rng.integers(-3, 4))
        pitch = int(rng.choice(pitches)) + int(rng.integers(-2, 3))
        audio = espeak(text, voice, speed, pitch)
        if rng.random() < 0.3:
            audio = sox_effects(audio, 16000, list(_EFFECTS[int(rng.integers(len(_EFFECTS)))]))
        out.append(audio)
    return out


def extras(out: Path, rng: np.random.Generator) -> None:
    """Issue 19's additions (own seed, so the files above stay as they were):

    greetings.npz  other greetings, answered like "Hello." (label: index in TRAIN_GREETINGS)
    ood.npz        out-of-domain questions and long sentences, answered with SORRY; the long ones
                   with pauses between words (label: index in OUT_OF_DOMAIN_TRAIN + LONG_SENTENCES_TRAIN)
    paused.npz     every question with pauses of 80-600 ms between words (label: pair index)
    babble.npz     other talkers for babble: sentences in random voices
    """
    speeds, pitches = domain.TRAIN_SPEEDS, domain.TRAIN_PITCHES

    def say(text: str, pauses: int = 0, longest_ms: int = 600) -> np.ndarray:
        voice = str(rng.choice(domain.QUESTION_VOICES))
        speed = int(rng.choice(speeds)) + int(rng.integers(-3, 4))
        pitch = int(rng.choice(pitches)) + int(rng.integers(-2, 3))
        if pauses:
            return espeak(with_breaks(text, rng, pauses, 80, longest_ms), voice, speed, pitch, ssml=True)
        return espeak(text, voice, speed, pitch)

    clips, labels = [], []
    for index, text in enumerate(domain.TRAIN_GREETINGS):
        for _ in range(12):
            clips.append(say(text)), labels.append(index)
    save_clips(out / "greetings.npz", clips, 16000, label=labels)
    clips, labels = [], []
    ood = domain.OUT_OF_DOMAIN_TRAIN + domain.LONG_SENTENCES_TRAIN
    for index, text in enumerate(ood):
        long = index >= len(domain.OUT_OF_DOMAIN_TRAIN)
        for k in range(10 if long else 5):
            (
                clips.append(say(text, pauses=int(rng.integers(1, 4)) if long and k % 5 else 0)),
                labels.append(index),
            )
    save_clips(out / "ood.npz", clips, 16000, label=labels)
    log.info("out of domain: %d clips, %.1f min", len(clips), sum(map(len, clips)) / 16000 / 60)
    clips, labels = [], []
    for index, pair in enumerate(domain.PAIRS):
        for _ in range(5):
            clips.append(say(pair.question, pauses=int(rng.integers(1, 3)))), labels.append(index)
    save_clips(out / "paused.npz", clips, 16000, label=labels)
    sentences = codec_sentences(rng, 200) + GENERIC
    save_clips(out / "babble.npz", [say(s) for s in sentences], 16000)
    log.info("greetings, paused questions and %d babble sentences written", len(sentences))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DATA_DIR)
    parser.add_argument("--variants", type=int, default=24, help="training recordings per question")
    parser.add_argument(
        "--val-variants", type=int, default=2, help="held-out-prosody recordings per question"
    )
    parser.add_argument("--codec-sentences", type=int, default=420)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    setup_logging()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()

    clips, labels, splits = [], [], []
    for index, pair in enumerate(domain.PAIRS):
        for audio in question_variants(
            rng, pair.question, args.variants, domain.TRAIN_SPEEDS, domain.TRAIN_PITCHES
        ):
            clips.append(audio), labels.append(index), splits.append(0)
        held_out = domain.HELD_OUT_SPEEDS, domain.HELD_OUT_PITCHES
        for audio in question_variants(rng, pair.question, args.val_variants, *held_out):
            clips.append(audio), labels.append(index), splits.append(1)
    save_clips(args.out / "questions.npz", clips, 16000, label=labels, split=splits)
    log.info("questions: %d clips, %.1f min", len(clips), sum(map(len, clips)) / 16000 / 60)

    clips, labels = [], []
    for index, text in enumerate(domain.BACKCHANNELS):
        for audio in question_variants(rng, text, 24, domain.TRAIN_SPEEDS, domain.TRAIN_PITCHES):
            clips.append(audio), labels.append(index)
    save_clips(args.out / "ignore.npz", clips, 16000, label=labels)
    log.info("backchannels: %d clips", len(clips))

    voice, speed, pitch = domain.ANSWER_VOICE
    answers = [espeak(pair.answer, voice, speed, pitch, rate=24000) for pair in domain.PAIRS]
    save_clips(args.out / "answers.npz", answers, 24000, label=list(range(len(answers))))
    log.info("answers: %.1f s", sum(map(len, answers)) / 24000)

    # The codec hears the answers several times, the questions once in the answer voice, and
    # sentences made of the same words, mostly at the answer speed.
    codec = answers * 4
    codec += [espeak(pair.question, voice, speed, pitch, rate=24000) for pair in domain.PAIRS]
    for sentence in codec_sentences(rng, args.codec_sentences):
        codec.append(espeak(sentence, voice, int(rng.choice([150, 160, 160, 170])), pitch, rate=24000))
    save_clips(args.out / "codec.npz", codec, 24000)
    log.info("codec corpus: %d clips, %.1f min", len(codec), sum(map(len, codec)) / 24000 / 60)
    extras(args.out, np.random.default_rng(args.seed + 19))
    (args.out / "meta.json").write_text(
        json.dumps({"seed": args.seed, "variants": args.variants, "seconds": time.perf_counter() - started})
    )
    log.info("data written to %s in %.0f s", args.out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
