"""Stage 4: the duplex state head (+ prompt embeddings, and the adapter gently) on chunk labels.

Per 160 ms chunk the head says listen (0), answer (1) or ignore (2); labels: 0 while the user
speaks, then 1 after a question and 2 after noise, coughs or backchannels (no loss on the chunk
where the sound ends). Examples include turns heard during or after an earlier answer (the
barge-in history), and the answer loss stays on so the prompts keep driving the right answers.

Writes RUNS_DIR/state/{state.pt, audio.pt, figures.json}.
Usage: python -m training.train_state [--minutes 8] [--resume]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F

from training import domain
from training.audio_turns import (
    CHUNK,
    Example,
    TurnMaker,
    answer_loss,
    build_batch,
    live_cut,
    run_llm,
    state_logits,
)
from training.common import (
    DATA_DIR,
    RUNS_DIR,
    Checkpointer,
    Clips,
    Progress,
    add_run_args,
    start_run,
)
from training.train_audio import add_finetune_args, build_audio, load_exported_audio, load_llm
from training.turns import IGNORE

log = logging.getLogger("state")


def make_examples(
    maker: TurnMaker,
    rng: np.random.Generator,
    count: int,
    history_share: float,
    ood_share: float = 0.0,
    cut_share: float = 0.0,
    long_share: float = 0.0,
    stretched_share: float = 0.0,
    greeting_share: float = 0.0,
) -> list[Example]:
    """Questions, ignorable sounds (40 %) and, with issue 19's options, out-of-domain speech, long
    sentences and questions with extra pauses between words, and greetings (shares of all turns)."""
    examples = []
    for _ in range(count):
        history = []
        if rng.random() < history_share:  # heard during or after an earlier answer
            past = maker.question()
            past.answer_cut = None if rng.random() < 0.3 else int(rng.integers(0, 8))
            history.append(past)
        draw = rng.random()
        bounds = np.cumsum([ood_share, long_share, stretched_share, greeting_share])
        if draw < bounds[0]:
            turn = maker.out_of_domain(min_trail=0.5)
        elif draw < bounds[1]:
            turn = maker.stretched(long_sentence=True)
        elif draw < bounds[2]:
            turn = maker.stretched(long_sentence=False)
        elif draw < bounds[3]:
            turn = maker.question(min_trail=0.5, greeting=True)
        elif draw < max(0.6, bounds[3] + 0.2):
            turn = maker.question(min_trail=0.5)
        else:
            turn = maker.ignorable(min_trail=0.5)
        if turn.answer is not None and rng.random() < cut_share:
            turn = live_cut(turn, rng)
        examples.append(Example(turn, history))
    return examples


def validate(audio, llm_folder) -> dict:
    """Through the runtime's listen loop: when the head answers, and whether it ever answers noise."""
    from training.evaluate import listen_and_answer, listening_model
    from training.synth import noise_clip, place

    model = listening_model(audio, llm_folder)
    clips = Clips(DATA_DIR / "questions.npz")
    val = np.nonzero(clips.columns["split"] == 1)[0][::2]
    rng = np.random.default_rng(7)
    delays, early, never, correct = [], 0, 0, 0
    for index in val:
        placed = place(clips[int(index)], rng, lead_s=0.3, trail_s=1.0, snr_db=30.0)
        text, states = listen_and_answer(model, placed.samples)
        correct += text == domain.PAIRS[int(clips.columns["label"][index])].answer
        end_chunk = (placed.end - 1) // CHUNK
        answered = [i for i, s in enumerate(states) if s == "ss"]
        if not answered:
            never += 1
        elif answered[0] < end_chunk:
            early += 1
        else:
            delays.append(answered[0] - end_chunk)
    ignore = Clips(DATA_DIR / "ignore.npz")
    answered_noise, ignored_noise, trials = 0, 0, 0
    for i in range(0, len(ignore), 8):
        for sound in (ignore[i], noise_clip(rng)):
            placed = place(sound, rng, lead_s=0.3, trail_s=1.0, snr_db=30.0)
            _, states = listen_and_answer(model, placed.samples, max_new_tokens=1)
            trials += 1
            answered_noise += "ss" in states
            ignored_noise += "el" in states
    return {
        "questions": len(val),
        "answered_within_2_chunks": sum(d <= 2 for d in delays),
        "answered_early": early,
        "never_answered": never,
        "mean_delay_chunks": float(np.mean(delays)) if delays else None,
        "text_exact": correct,
        "ignore_trials": trials,
        "ignore_answered": answered_noise,
        "ignore_said_ignore": ignored_noise,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--adapter-lr", type=float, default=2e-4)
    parser.add_argument("--answer-weight", type=float, default=1.0)
    parser.add_argument(
        "--history", type=float, default=0.35, help="share of turns heard after an earlier one"
    )
    parser.add_argument("--long-pauses", type=float, default=0.0, help="share of long sentences with pauses")
    parser.add_argument(
        "--stretched", type=float, default=0.0, help="share of questions with extra pauses between words"
    )
    parser.add_argument("--greetings", type=float, default=0.0, help="share of other greetings")
    parser.add_argument(
        "--babble", type=float, default=0.3, help="with --augmented: share of augmented turns with babble"
    )
    parser.add_argument(
        "--run-name", default="state", help="folder under training/runs for the checkpoint and audio.pt"
    )
    add_finetune_args(parser)
    add_run_args(parser)
    args = parser.parse_args()
    start_run(args)
    llm_folder = RUNS_DIR / "llm" / "hf"
    llm, pieces = load_llm(llm_folder)
    if args.init_from is not None:  # an exported model's listening side, head included
        audio = load_exported_audio(args.init_from, llm.config.hidden_size, pieces.im_end)
    else:
        audio = build_audio(llm.config.hidden_size, pieces.im_end)
        audio.load_state_dict(torch.load(RUNS_DIR / "audio" / "audio.pt", weights_only=True))
    if args.init_from is None:
        with torch.no_grad():  # start from "listen", the safe state (a resumed run loads its own head below)
            audio.predictor_head.weight.mul_(0.1)
            audio.predictor_head.bias.zero_()
            audio.predictor_head.bias[0] = 2.0
    # else: the audio stage's output already carries the exported (trained) head; keep it.
    audio.encoder.requires_grad_(False)
    groups = [{"params": [*audio.predictor_head.parameters(), audio.prompt_embeddings.weight], "lr": args.lr}]
    if args.adapter_lr > 0:
        groups.append({"params": list(audio.adpter.parameters()), "lr": args.adapter_lr})
    else:  # the adapter stays as it is
        audio.adpter.requires_grad_(False)
    optimiser = torch.optim.AdamW(groups, weight_decay=0.0)
    base_lrs = [g["lr"] for g in groups]
    ckpt = Checkpointer(args.run_name, args.save_every)
    step = 0
    if state := ckpt.load(args.resume):
        audio.load_state_dict(state["audio"]), optimiser.load_state_dict(state["optimiser"])
        step = state["step"]
    rng = np.random.default_rng(1000 + step)
    maker = TurnMaker(rng, augmented=args.augmented, augment_share=args.augment_share)
    maker.babble_share = args.babble
    budget = args.minutes * 60
    budget_end = time.perf_counter() + budget
    progress = Progress("state", 0, every=20)
    audio.train()
    while time.perf_counter() < budget_end:
        step += 1
        spent = 1.0 - (budget_end - time.perf_counter()) / budget
        for group, base in zip(optimiser.param_groups, base_lrs, strict=True):
            group["lr"] = base * min(1.0, step / 20) * max(0.1, 1.0 - spent)
        batch = build_batch(
            audio,
            llm,
            pieces,
            make_examples(
                maker,
                rng,
                args.batch,
                args.history,
                args.ood,
                args.live_cut,
                args.long_pauses,
                args.stretched,
                args.greetings,
            ),
        )
        hidden = run_llm(llm, batch)
        logits, labels = state_logits(audio, hidden, batch)
        state_loss = F.cross_entropy(logits[:, :3], labels, ignore_index=IGNORE)
        answers = answer_loss(llm, hidden, batch)
        loss = state_loss + args.answer_weight * answers
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            valid = labels != IGNORE
            accuracy = (logits[:, :3].argmax(-1)[valid] == labels[valid]).float().mean()
        progress.update(step, state=state_loss.item(), answer=answers.item(), chunk_acc=accuracy.item())
        ckpt.maybe_save(step, {"audio": audio.state_dict(), "optimiser": optimiser.state_dict()})
    ckpt.maybe_save(step, {"audio": audio.state_dict(), "optimiser": optimiser.state_dict()}, force=True)
    torch.save(audio.state_dict(), ckpt.dir / "audio.pt")
    seconds = ckpt.seconds
    figures = {"steps": step, "train_seconds": round(seconds, 1), **validate(audio.eval(), llm_folder)}
    ckpt.record(figures)
    log.info("state figures: %s", figures)


if __name__ == "__main__":
    main()
