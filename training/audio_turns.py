"""Spoken turns for the audio stages: examples, chunk labels, and the frozen LLM's forward.

An example is one user turn heard as 160 ms chunks, optionally after an earlier turn (its audio and
a possibly cut answer: the history a barge-in or a second question sees). Chunk labels follow the
published scheme, extended past the end: 0 while the user speaks, nothing (no loss) on the chunk
where speech ends, then 1 (answer) for a question or 2 (ignore) for noise and backchannels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from app.model.pipeline import pad_to_chunks
from app.model.speech_in.audio_llm import AudioLLM
from app.model.speech_in.frontend import StreamingFbank
from training import domain
from training.augment import augment
from training.common import DATA_DIR, Clips
from training.streaming import adapt_stream, encode_stream
from training.synth import noise_clip, place
from training.turns import IGNORE, Pieces

CHUNK = 2560
LISTEN, ANSWER, IGNORE_STATE = 0, 1, 2


def chunk_features(samples: np.ndarray) -> np.ndarray:
    """(N, 19, 80) encoder inputs of a recording, exactly as the runtime's listen loop makes them."""
    fbank = StreamingFbank()
    padded = pad_to_chunks(samples.astype(np.float32), CHUNK)
    return np.stack([fbank.accept_chunk(padded[i : i + CHUNK]) for i in range(0, len(padded), CHUNK)])


def chunk_labels(num_chunks: int, end_sample: int, final_state: int) -> np.ndarray:
    labels = np.full(num_chunks, LISTEN, dtype=np.int64)
    end_chunk = (end_sample - 1) // CHUNK
    labels[end_chunk:] = final_state
    if end_chunk < num_chunks:
        labels[end_chunk] = IGNORE
    return labels


@dataclass
class Turn:
    feats: np.ndarray  # (N, 19, 80)
    labels: np.ndarray  # (N,)
    answer: str | None  # None: a sound to ignore
    answer_cut: int | None = None  # for history turns: answer tokens kept (None: all)
    question: str | None = None  # what was said, for the encoder's CTC loss


@dataclass
class Example:
    turn: Turn
    history: list[Turn] = field(default_factory=list)


def _optional_clips(name: str) -> Clips | None:
    path = DATA_DIR / name
    return Clips(path) if path.exists() else None


def live_cut(turn: Turn, rng: np.random.Generator) -> Turn:
    """The turn as the live engine hears it: up to the chunk where the head fires, 0-2 chunks after
    the one holding the last sample (the answer then starts from there)."""
    end_chunk = (
        int(np.nonzero(turn.labels != LISTEN)[0][0])
        if (turn.labels != LISTEN).any()
        else len(turn.labels) - 1
    )
    keep = min(len(turn.labels), end_chunk + 1 + int(rng.choice([0, 1, 1, 2])))
    return Turn(turn.feats[:keep], turn.labels[:keep], turn.answer, turn.answer_cut, turn.question)


class TurnMaker:
    """Random spoken turns from the generated data (training split) with fresh placement and noise.

    `augmented`: issue 19's recipe (rooms, babble, phone lines, any level, long pauses around and
    inside the question, greetings, out-of-domain speech); otherwise the original light recipe.
    """

    def __init__(
        self, rng: np.random.Generator, split: int = 0, augmented: bool = False, augment_share: float = 1.0
    ) -> None:
        self.rng = rng
        self.augmented = augmented
        self.augment_share = augment_share  # of recordings through training.augment; the rest: light recipe
        self.babble_share = 0.3  # of augmented recordings with other talkers behind
        self.questions = Clips(DATA_DIR / "questions.npz")
        self.ignore = Clips(DATA_DIR / "ignore.npz")
        labels, splits = self.questions.columns["label"], self.questions.columns["split"]
        self.by_pair = [np.nonzero((labels == p) & (splits == split))[0] for p in range(len(domain.PAIRS))]
        self.greetings = _optional_clips("greetings.npz") if augmented else None
        self.ood = _optional_clips("ood.npz") if augmented else None
        self.paused = _optional_clips("paused.npz") if augmented else None
        babble = _optional_clips("babble.npz") if augmented else None
        self.babble = [babble[i] for i in range(len(babble))] if babble is not None else None
        if self.paused is not None:
            plabels = self.paused.columns["label"]
            self.paused_by_pair = [np.nonzero(plabels == p)[0] for p in range(len(domain.PAIRS))]

    def _place(self, sound: np.ndarray, min_trail: float) -> tuple[np.ndarray, int]:
        rng = self.rng
        if self.augmented and rng.random() < self.augment_share:
            long_lead, long_trail = rng.random() < 0.25, rng.random() < 0.25
            lead = float(rng.uniform(1.0, 3.0) if long_lead else rng.uniform(0.0, 1.0))
            trail = float(rng.uniform(1.2, 3.0) if long_trail else rng.uniform(min_trail, 1.2))
            placed = place(sound, rng, lead_s=lead, trail_s=trail, snr_db=None)
            return (
                augment(placed.samples, placed.start, placed.end, rng, self.babble, self.babble_share),
                placed.end,
            )
        placed = place(
            sound,
            rng,
            lead_s=float(rng.uniform(0.0, 1.0)),
            trail_s=float(rng.uniform(min_trail, 1.2)),
            snr_db=None if rng.random() < 0.1 else float(rng.uniform(12, 50)),
            noise_kind=str(rng.choice(["white", "pink", "brown"])),
            gain=float(rng.uniform(0.3, 1.3)),
        )
        return placed.samples, placed.end

    def question(self, pair: int | None = None, min_trail: float = 0.1, greeting: bool = False) -> Turn:
        """One of the questions (`greeting`: one of the other greetings, answered like "Hello.")."""
        pair = int(self.rng.integers(len(domain.PAIRS))) if pair is None else pair
        pair = domain.GREETING_PAIR if greeting else pair
        qa = domain.PAIRS[pair]
        clip = self.questions[int(self.rng.choice(self.by_pair[pair]))]
        said = qa.question
        if self.paused is not None and self.rng.random() < 0.15:
            clip = self.paused[int(self.rng.choice(self.paused_by_pair[pair]))]
        if (
            self.greetings is not None
            and pair == domain.GREETING_PAIR
            and (greeting or self.rng.random() < 0.6)
        ):
            index = int(self.rng.integers(len(self.greetings)))
            clip = self.greetings[index]
            said = domain.TRAIN_GREETINGS[int(self.greetings.columns["label"][index])]
        samples, end = self._place(clip, min_trail)
        feats = chunk_features(samples)
        return Turn(feats, chunk_labels(len(feats), end, ANSWER), qa.answer, question=said)

    def out_of_domain(self, min_trail: float = 0.1, long_only: bool = False) -> Turn:
        """Speech that is none of the questions (long sentences with pauses too): SORRY.
        `long_only`: one of the long sentences, whose pauses the state head must sit through."""
        assert self.ood is not None, "run training.make_data first (ood.npz)"
        if long_only:
            long_ones = np.nonzero(self.ood.columns["label"] >= len(domain.OUT_OF_DOMAIN_TRAIN))[0]
            index = int(self.rng.choice(long_ones))
        else:
            index = int(self.rng.integers(len(self.ood)))
        said = (domain.OUT_OF_DOMAIN_TRAIN + domain.LONG_SENTENCES_TRAIN)[
            int(self.ood.columns["label"][index])
        ]
        samples, end = self._place(self.ood[index], min_trail)
        feats = chunk_features(samples)
        return Turn(feats, chunk_labels(len(feats), end, ANSWER), domain.SORRY, question=said)

    def stretched(self, long_sentence: bool, min_trail: float = 0.5) -> Turn:
        """A question, or one of the long sentences (SORRY), with 1-3 extra pauses of 80-400 ms
        between words: the state head must keep listening through them."""
        from training.augment import insert_pauses

        rng = self.rng
        if long_sentence:
            assert self.ood is not None, "run training.make_data first (ood.npz)"
            long_ones = np.nonzero(self.ood.columns["label"] >= len(domain.OUT_OF_DOMAIN_TRAIN))[0]
            index = int(rng.choice(long_ones))
            clip, answer = self.ood[index], domain.SORRY
            said = domain.LONG_SENTENCES_TRAIN[
                int(self.ood.columns["label"][index]) - len(domain.OUT_OF_DOMAIN_TRAIN)
            ]
        else:
            pair = int(rng.integers(len(domain.PAIRS)))
            clip = self.questions[int(rng.choice(self.by_pair[pair]))]
            answer, said = domain.PAIRS[pair].answer, domain.PAIRS[pair].question
        clip = insert_pauses(clip, rng, int(rng.integers(1, 4)), float(rng.uniform(0.2, 0.4)))
        samples, end = self._place(clip, min_trail)
        feats = chunk_features(samples)
        return Turn(feats, chunk_labels(len(feats), end, ANSWER), answer, question=said)

    def ignorable(self, min_trail: float = 0.1) -> Turn:
        if self.rng.random() < 0.5:
            sound = self.ignore[int(self.rng.integers(len(self.ignore)))]
        else:
            sound = noise_clip(self.rng)
        samples, end = self._place(sound, min_trail)
        feats = chunk_features(samples)
        return Turn(feats, chunk_labels(len(feats), end, IGNORE_STATE), None)


def pad_feats(turns: list[Turn]) -> torch.Tensor:
    longest = max(len(t.feats) for t in turns)
    out = np.zeros((len(turns), longest, *turns[0].feats.shape[1:]), dtype=np.float32)
    for row, turn in enumerate(turns):
        out[row, : len(turn.feats)] = turn.feats
    return torch.from_numpy(out)


def encode_turns(audio: AudioLLM, turns: list[Turn], keep_encoded: list | None = None) -> list[torch.Tensor]:
    """Each turn's LLM input vectors (2 per chunk), through the differentiable streaming path.

    `keep_encoded`, when given, receives the encoder output (B, 4N, D) for an auxiliary loss.
    """
    encoded = encode_stream(audio.encoder, pad_feats(turns))
    if keep_encoded is not None:
        keep_encoded.append(encoded)
    vectors = adapt_stream(audio.adpter, encoded)
    return [vectors[row, : 2 * len(turn.feats)] for row, turn in enumerate(turns)]


@dataclass
class Batch:
    embeds: torch.Tensor  # (B, T, H)
    targets: torch.Tensor  # (B, T) next-token targets or IGNORE
    state_positions: list[torch.Tensor]  # per row: sequence positions of each chunk's last vector
    state_labels: list[torch.Tensor]
    encoded: torch.Tensor | None = None  # the current turns' encoder output (B, 4N, D)


class _Sequence:
    """One row's input embeddings, built piece by piece, and which positions hold target tokens."""

    def __init__(self, embed: torch.nn.Embedding) -> None:
        self.embed = embed
        self.parts: list[torch.Tensor] = []
        self.wanted: list[int] = []  # the token at each position if it is a target, else IGNORE
        self.length = 0

    def add_ids(self, ids: list[int], train: bool) -> None:
        self.parts.append(self.embed(torch.tensor(ids, dtype=torch.long)))
        self.wanted.extend(ids if train else [IGNORE] * len(ids))
        self.length += len(ids)

    def add_vectors(self, tensor: torch.Tensor) -> int:
        """Append input vectors; returns the position of the first."""
        start = self.length
        self.parts.append(tensor)
        self.wanted.extend([IGNORE] * tensor.shape[0])
        self.length += tensor.shape[0]
        return start


def build_batch(
    audio: AudioLLM, llm, pieces: Pieces, examples: list[Example], answer_loss: bool = True
) -> Batch:
    """Sequences laid out as inference feeds them; the current turn's audio keeps its gradients."""
    embed = llm.model.embed_tokens
    kept: list[torch.Tensor] = []
    current = encode_turns(audio, [e.turn for e in examples], kept)
    history_turns = [t for e in examples for t in e.history]
    if history_turns:
        with torch.no_grad():
            past = iter(encode_turns(audio, history_turns))
    prompts = audio.prompt_embeddings.weight

    rows, targets, positions, labels = [], [], [], []
    for example, vectors in zip(examples, current, strict=True):
        seq = _Sequence(embed)
        seq.add_ids(pieces.system, False)
        for turn in example.history:
            seq.add_ids(pieces.opening, False)
            seq.add_vectors(prompts)
            seq.add_vectors(next(past))
            if turn.answer is not None:
                seq.add_ids(pieces.suffix, False)
                answer_ids = pieces.encode(turn.answer)
                seq.add_ids(
                    answer_ids[: turn.answer_cut] if turn.answer_cut is not None else answer_ids, False
                )
        seq.add_ids(pieces.opening, False)
        seq.add_vectors(prompts)
        start = seq.add_vectors(vectors)
        chunks = vectors.shape[0] // 2
        positions.append(torch.arange(chunks) * 2 + 1 + start)
        labels.append(torch.from_numpy(example.turn.labels))
        if example.turn.answer is not None and answer_loss:
            seq.add_ids(pieces.suffix, False)
            seq.add_ids(pieces.encode(example.turn.answer) + [pieces.im_end], True)
        rows.append(torch.cat(seq.parts))
        # Position i predicts the token at i + 1.
        targets.append(torch.tensor(seq.wanted[1:] + [IGNORE], dtype=torch.long))
    longest = max(r.shape[0] for r in rows)
    embeds = torch.zeros(len(rows), longest, rows[0].shape[1])
    target = torch.full((len(rows), longest), IGNORE, dtype=torch.long)
    for i, (row, tgt) in enumerate(zip(rows, targets, strict=True)):
        embeds[i, : row.shape[0]] = row
        target[i, : tgt.shape[0]] = tgt
    return Batch(embeds, target, positions, labels, kept[0])


def run_llm(llm, batch: Batch) -> torch.Tensor:
    """Post-norm last hidden states (B, T, H) of the frozen LLM (what the state head reads)."""
    return llm.model(inputs_embeds=batch.embeds, use_cache=False).last_hidden_state


def answer_loss(llm, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
    mask = batch.targets != IGNORE
    if not mask.any():
        return hidden.new_zeros(())
    logits = llm.lm_head(hidden[mask])
    return torch.nn.functional.cross_entropy(logits, batch.targets[mask])


def state_logits(audio: AudioLLM, hidden: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    picked = torch.cat([hidden[row, pos] for row, pos in enumerate(batch.state_positions)])
    return audio.state_logits(picked), torch.cat(batch.state_labels)
