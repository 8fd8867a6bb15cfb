"""Issue 19: teach the committed LLM a way to say no (`domain.SORRY`) and other greetings, without
moving it under the audio side.

The audio side's soft prompts and adapter vectors were fitted to the committed LLM, the state head
reads its post-norm hidden states at the audio positions, and the speech decoder reads them at the
answer positions. A plain fine-tune on the new answers moves all three (the last session's
candidate: the committed audio side in front of it answered 4 of 8 clean questions). Here the
student learns the new answers by cross-entropy while a distillation loss keeps, on in-domain
input, its post-norm hidden states (MSE, relative to the teacher's mean square) and its next-token
distributions (KL) equal to the frozen teacher's. The in-domain input is typed dialogs and spoken
turns whose vectors come from the shipped, frozen audio side (questions, greetings, ignorable
sounds, out-of-domain speech: the hidden states at every audio position are kept, so the state head
sees what it saw). Only the top layers, the final norm and the output layer train; the embedding
table (which the speech decoder reads too) and the lower layers stay as they were.

New behaviour, by cross-entropy: typed and spoken out-of-domain speech -> SORRY, typed and spoken
greetings ("Hello world.") -> the answer of "Hello.".

Writes RUNS_DIR/llm/{hf/, distill_state.pt, figures.json} (hf/ is what the later stages load).
Usage: python -m training.distill_llm [--steps 300] [--teacher training/runs/shipped_v1]
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import domain
from training.common import MODEL_DIR, RUNS_DIR, Checkpointer, Progress, add_run_args, start_run
from training.turns import IGNORE, Pieces, text_dialog

log = logging.getLogger("distill")


@dataclass
class Item:
    """One training sequence as input vectors, and what each position is trained on."""

    embeds: torch.Tensor  # (T, H)
    targets: torch.Tensor  # (T,) next-token targets for cross-entropy (IGNORE elsewhere)
    keep: torch.Tensor  # (T,) bool: positions whose hidden state and distribution must stay


def typed_item(embed, pieces: Pieces, turns: list[tuple[str, str, int | None]], new: bool) -> Item:
    ids, targets = text_dialog(pieces, turns)
    with torch.no_grad():
        vectors = embed(torch.tensor(ids))
    if new:  # learn the targets; nothing kept (the new answers must move)
        return Item(vectors, torch.tensor(targets), torch.zeros(len(ids), dtype=torch.bool))
    return Item(vectors, torch.full((len(ids),), IGNORE), torch.ones(len(ids), dtype=torch.bool))


def typed_turn(rng: random.Random, kind: str) -> tuple[str, str, None]:
    if kind == "sorry":
        return (rng.choice(domain.OUT_OF_DOMAIN_TRAIN + domain.LONG_SENTENCES_TRAIN), domain.SORRY, None)
    if kind == "greeting":
        return (rng.choice(domain.TRAIN_GREETINGS), domain.PAIRS[domain.GREETING_PAIR].answer, None)
    pair = rng.choice(domain.PAIRS)
    return (pair.question, pair.answer, None)


def typed_dialog(rng: random.Random, pieces: Pieces, last: str) -> list[tuple[str, str, int | None]]:
    """One to three turns ending with a turn of kind `last`; earlier turns in-domain, sometimes cut."""
    turns: list[tuple[str, str, int | None]] = []
    for _ in range(rng.choice([0, 0, 1, 1, 2])):
        question, answer, _ = typed_turn(rng, "domain")
        cut = rng.randint(0, len(pieces.encode(answer))) if rng.random() < 0.4 else None
        turns.append((question, answer, cut))
    return [*turns, typed_turn(rng, last)]


def spoken_items(audio_dir: Path, llm, pieces: Pieces, count: int, seed: int) -> list[Item]:
    """Spoken turns through the exported audio side (frozen): in-domain questions (kept whole),
    ignorable sounds (kept), greetings and out-of-domain speech (audio positions kept, answer learnt)."""
    from training.audio_turns import Example, TurnMaker, build_batch, live_cut
    from training.train_audio import load_exported_audio

    audio = load_exported_audio(audio_dir, llm.config.hidden_size, pieces.im_end).eval()
    rng = np.random.default_rng(seed)
    maker = TurnMaker(rng, augmented=True, augment_share=0.5)
    items: list[Item] = []
    kinds = rng.choice(["domain", "ignore", "sorry", "greeting"], size=count, p=[0.45, 0.12, 0.3, 0.13])
    for start in range(0, count, 16):
        examples, new = [], []
        for kind in kinds[start : start + 16]:
            if kind == "ignore":
                turn = maker.ignorable(min_trail=0.5)
            elif kind == "sorry":
                turn = maker.out_of_domain(min_trail=0.5)
            elif kind == "greeting":
                turn = maker.question(pair=domain.GREETING_PAIR, min_trail=0.5)
                while turn.question not in domain.TRAIN_GREETINGS:
                    turn = maker.question(pair=domain.GREETING_PAIR, min_trail=0.5)
            else:
                turn = maker.question(min_trail=0.5)
            if turn.answer is not None and rng.random() < 0.5:
                turn = live_cut(turn, rng)
            examples.append(Example(turn))
            new.append(kind in ("sorry", "greeting"))
        with torch.no_grad():
            batch = build_batch(audio, llm, pieces, examples)
        for row, (example, is_new) in enumerate(zip(examples, new, strict=True)):
            length = int(batch.state_positions[row][-1]) + 1  # up to the last audio vector
            answer = pieces.encode(example.turn.answer) + [pieces.im_end] if example.turn.answer else []
            total = length + (len(pieces.suffix) + len(answer) - 1 if answer else 0)
            targets = batch.targets[row, :total].clone()
            keep = torch.ones(total, dtype=torch.bool)
            if is_new:
                keep[length:] = False  # the answer is new; what the state head reads stays
            else:
                targets[:] = IGNORE
            items.append(Item(batch.embeds[row, :total].clone(), targets, keep))
        log.info("spoken turns: %d/%d", len(items), count)
    return items


def pad(items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    longest = max(i.embeds.shape[0] for i in items)
    width = items[0].embeds.shape[1]
    embeds = torch.zeros(len(items), longest, width)
    targets = torch.full((len(items), longest), IGNORE, dtype=torch.long)
    keep = torch.zeros(len(items), longest, dtype=torch.bool)
    valid = torch.zeros(len(items), longest, dtype=torch.bool)
    for row, item in enumerate(items):
        n = item.embeds.shape[0]
        embeds[row, :n], targets[row, :n], keep[row, :n], valid[row, :n] = (
            item.embeds,
            item.targets,
            item.keep,
            True,
        )
    return embeds, targets, keep, valid


def distill_losses(student, teacher, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cross-entropy on new targets, relative hidden-state MSE on kept positions, KL on kept positions)."""
    embeds, targets, keep, _ = pad(items)
    with torch.no_grad():
        t_hidden = teacher.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    s_hidden = student.model(inputs_embeds=embeds, use_cache=False).last_hidden_state
    zero = s_hidden.new_zeros(())
    ce = zero
    if (targets != IGNORE).any():
        mask = targets != IGNORE
        ce = F.cross_entropy(student.lm_head(s_hidden[mask]), targets[mask])
    mse = kl = zero
    if keep.any():
        t_kept, s_kept = t_hidden[keep], s_hidden[keep]
        mse = (s_kept - t_kept).pow(2).mean() / t_kept.pow(2).mean()
        with torch.no_grad():
            t_logp = teacher.lm_head(t_kept).log_softmax(-1)
        s_logp = student.lm_head(s_kept).log_softmax(-1)
        kl = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")
    return ce, mse, kl


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--teacher", type=Path, default=RUNS_DIR / "shipped_v1", help="exported model whose LLM is kept"
    )
    parser.add_argument(
        "--audio-from",
        type=Path,
        default=MODEL_DIR,
        help="exported model whose (frozen) audio side makes the spoken turns",
    )
    parser.add_argument("--train-layers", type=int, default=2, help="top decoder layers that train")
    parser.add_argument("--spoken", type=int, default=320, help="spoken turns made once, before training")
    parser.add_argument("--keep-weight", type=float, default=4.0, help="weight of MSE + KL on kept positions")
    parser.add_argument(
        "--per-step",
        default="6,6,3,10,6",
        help="per step: typed kept dialogs, typed SORRY, typed greetings, spoken kept, spoken new",
    )
    add_run_args(parser)
    args = parser.parse_args()
    start_run(args)
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    from app.model.fixtures.tiny import LLM_DIR
    from training.train_llm import greedy_text_answers

    teacher_dir = args.teacher / LLM_DIR
    teacher = Qwen2ForCausalLM.from_pretrained(str(teacher_dir), torch_dtype=torch.float32).eval()
    student = Qwen2ForCausalLM.from_pretrained(str(teacher_dir), torch_dtype=torch.float32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    pieces = Pieces.from_tokenizer(AutoTokenizer.from_pretrained(str(teacher_dir)))
    layers = student.model.layers
    trained = [p for layer in layers[len(layers) - args.train_layers :] for p in layer.parameters()]
    trained += [*student.model.norm.parameters(), *student.lm_head.parameters()]
    for p in student.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
    log.info(
        "training the top %d layers, norm and lm_head (%d params)",
        args.train_layers,
        sum(p.numel() for p in trained),
    )

    ckpt = Checkpointer("llm", args.save_every)
    ckpt.path = ckpt.dir / "distill_state.pt"
    spoken_path = ckpt.dir / "distill_spoken.pt"
    if args.resume and spoken_path.exists():
        spoken = torch.load(spoken_path, weights_only=False)
    else:
        spoken = spoken_items(args.audio_from, teacher, pieces, args.spoken, seed=11)
        torch.save(spoken, spoken_path)
    spoken_keep = [i for i in spoken if not (i.targets != IGNORE).any()]
    spoken_new = [i for i in spoken if (i.targets != IGNORE).any()]
    log.info("spoken: %d kept, %d with a new answer", len(spoken_keep), len(spoken_new))

    optimiser = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.0)
    step = 0
    if state := ckpt.load(args.resume):
        student.load_state_dict(state["model"]), optimiser.load_state_dict(state["optimiser"])
        step = state["step"]
    rng = random.Random(step)
    n_keep, n_sorry, n_greet, n_spoken_keep, n_spoken_new = (int(x) for x in args.per_step.split(","))
    embed = teacher.model.embed_tokens
    progress = Progress("distill", args.steps, every=20)
    student.train()
    while step < args.steps:
        step += 1
        for group in optimiser.param_groups:
            group["lr"] = args.lr * min(1.0, step / 20) * max(0.05, 1 - step / args.steps)
        items = [typed_item(embed, pieces, typed_dialog(rng, pieces, "domain"), False) for _ in range(n_keep)]
        items += [typed_item(embed, pieces, typed_dialog(rng, pieces, "sorry"), True) for _ in range(n_sorry)]
        items += [
            typed_item(embed, pieces, typed_dialog(rng, pieces, "greeting"), True) for _ in range(n_greet)
        ]
        items += rng.sample(spoken_keep, n_spoken_keep) + rng.sample(spoken_new, n_spoken_new)
        ce, mse, kl = distill_losses(student, teacher, items)
        loss = ce + args.keep_weight * (mse + kl)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        progress.update(step, ce=ce.item(), mse=mse.item(), kl=kl.item())
        ckpt.maybe_save(step, {"model": student.state_dict(), "optimiser": optimiser.state_dict()})
    ckpt.maybe_save(step, {"model": student.state_dict(), "optimiser": optimiser.state_dict()}, force=True)
    folder = ckpt.dir / "hf"
    if folder.exists():
        shutil.rmtree(folder)
    student.eval().save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(teacher_dir)).save_pretrained(folder)
    seconds = ckpt.seconds

    answers = greedy_text_answers(folder)
    exact = sum(a == p.answer for a, p in zip(answers, domain.PAIRS, strict=True))
    from training.heldout_eval import GREETINGS_HELD_OUT, OOD_HELD_OUT

    sorry = sum(a == domain.SORRY for a in greedy_text_answers(folder, OOD_HELD_OUT))
    hello = domain.PAIRS[domain.GREETING_PAIR].answer
    greetings = sum(a == hello for a in greedy_text_answers(folder, GREETINGS_HELD_OUT))
    with torch.no_grad():
        held = spoken_items(args.audio_from, teacher, pieces, 48, seed=99)
        kept = [i for i in held if not (i.targets != IGNORE).any()]
        _, drift, drift_kl = distill_losses(student.eval(), teacher, kept)
    figures = {
        "steps": step,
        "train_seconds": round(seconds, 1),
        "typed_exact": f"{exact}/{len(answers)}",
        "typed_ood_sorry": f"{sorry}/{len(OOD_HELD_OUT)}",
        "typed_greetings": f"{greetings}/{len(GREETINGS_HELD_OUT)}",
        "spoken_kept_hidden_rel_mse": round(float(drift), 5),
        "spoken_kept_kl": round(float(drift_kl), 5),
    }
    ckpt.record(figures)
    log.info("distill figures: %s", figures)


if __name__ == "__main__":
    main()
