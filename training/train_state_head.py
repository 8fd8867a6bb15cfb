"""Issue 19: the state head alone, on the frozen shipped model (the text answer path is untouched).

The head is one linear layer on the LLM's post-norm hidden state at each chunk's last vector, and
nothing else reads its output: training only it leaves every answer the model gives unchanged,
bit for bit. The rest of the model is frozen, so the hidden states are computed once, without
gradients, and stored; the head is then fitted to them in seconds.

1. `collect`: spoken turns through the frozen encoder, adapter, prompts and LLM (training
   audio only, issue 19's augmentation with more babble), saved in shards of per-chunk hidden
   states with their labels (0 listen while the user speaks, pauses included; 1 answer after a
   question; 2 ignore after noise and backchannels; none on the chunk where the sound ends).
   Long sentences and questions get extra pauses between words (80-400 ms). Resumable: each shard
   is a file, and a rerun adds shards until `--shards` exist.
2. `fit`: cross-entropy over the first three logits (the inference rule softmaxes those), starting
   from the shipped head, with more weight on pauses inside speech and on the two chunks after its
   end; then an answer-bias shift chosen on validation shards (other seeds) so that no pause inside
   speech is answered while as many questions as possible are answered within 2 chunks. Reports the
   shipped and the new head on the validation shards, per kind of turn, the way the runtime
   decides (`decide_state`).
3. `export`: a copy of the model with only `predictor_head` replaced (`--out`).

Usage: python -m training.train_state_head collect --init-from models/trained --shards 40
       python -m training.train_state_head fit --init-from models/trained
       python -m training.train_state_head export --init-from models/trained --out training/runs/state_head_model
Writes training/runs/state_head/{shard_*.npz, val_*.npz, head.pt, figures.json}.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.model.fixtures.tiny import CHECKPOINT_DIR, LLM_DIR
from app.model.llm.duplex import decide_state
from training.audio_turns import (
    ANSWER,
    IGNORE_STATE,
    Example,
    Turn,
    TurnMaker,
    build_batch,
    run_llm,
)
from training.common import MODEL_DIR, RUNS_DIR, setup_logging, setup_threads
from training.train_audio import load_exported_audio, load_llm
from training.turns import IGNORE

log = logging.getLogger("state_head")

WORK = RUNS_DIR / "state_head"
# Kinds of turn, stored per example so the figures can be split by them.
KINDS = ["question", "paused_question", "long_sentence", "out_of_domain", "greeting", "ignorable"]
SHARES = [0.34, 0.12, 0.16, 0.07, 0.05, 0.26]


class HeadTurns(TurnMaker):
    """TurnMaker by kind of turn (`KINDS`)."""

    def turn(self, kind: str) -> Turn:
        if kind == "question":
            return self.question(min_trail=0.5)
        if kind == "greeting":
            return self.question(min_trail=0.5, greeting=True)
        if kind == "out_of_domain":
            return self.out_of_domain(min_trail=0.5)
        if kind == "ignorable":
            return self.ignorable(min_trail=0.5)
        return self.stretched(long_sentence=kind == "long_sentence")


def load_frozen(model_dir: Path):
    llm, pieces = load_llm(model_dir / LLM_DIR)
    audio = load_exported_audio(model_dir, llm.config.hidden_size, pieces.im_end).eval()
    audio.requires_grad_(False)
    return llm, pieces, audio


def collect_shard(
    llm, pieces, audio, maker: HeadTurns, rng, examples: int, batch: int, history: float
) -> dict:
    """Per chunk: hidden state (fp16), label, example index, chunk offset from the end, kind."""
    hidden_rows, labels, example_ids, offsets, kinds = [], [], [], [], []
    made = 0
    while made < examples:
        picked = [int(rng.choice(len(KINDS), p=SHARES)) for _ in range(min(batch, examples - made))]
        batch_examples = []
        for kind in picked:
            past = []
            if rng.random() < history:  # heard during or after an earlier answer
                earlier = maker.question()
                earlier.answer_cut = None if rng.random() < 0.3 else int(rng.integers(0, 8))
                past.append(earlier)
            batch_examples.append(Example(maker.turn(KINDS[kind]), past))
        with torch.no_grad():
            built = build_batch(audio, llm, pieces, batch_examples, answer_loss=False)
            hidden = run_llm(llm, built)
        for row, (example, kind) in enumerate(zip(batch_examples, picked, strict=True)):
            turn = example.turn
            hidden_rows.append(hidden[row, built.state_positions[row]].half().numpy())
            labels.append(turn.labels)
            example_ids.append(np.full(len(turn.labels), made + row))
            end_chunk = (
                int(np.nonzero(turn.labels == IGNORE)[0][0])
                if (turn.labels == IGNORE).any()
                else len(turn.labels)
            )
            offsets.append(np.arange(len(turn.labels)) - end_chunk)
            kinds.append(np.full(len(turn.labels), kind))
        made += len(picked)
    return {
        "hidden": np.concatenate(hidden_rows),
        "labels": np.concatenate(labels),
        "example": np.concatenate(example_ids),
        "offset": np.concatenate(offsets),
        "kind": np.concatenate(kinds),
    }


def collect(args) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    llm, pieces, audio = load_frozen(args.init_from)
    # Validation first, so `fit` can run on the shards collected so far.
    jobs = [(f"val_{i:03d}", 9000 + i) for i in range(args.val_shards)]
    jobs += [(f"shard_{i:03d}", 1000 + i) for i in range(args.shards)]
    for name, seed in jobs:
        path = WORK / f"{name}.npz"
        if path.exists():
            continue
        started = time.perf_counter()
        rng = np.random.default_rng(seed)
        maker = HeadTurns(rng, augmented=True, augment_share=args.augment_share)
        maker.babble_share = args.babble
        shard = collect_shard(llm, pieces, audio, maker, rng, args.examples, args.batch, args.history)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **shard)
        tmp.replace(path)
        log.info(
            "%s: %d examples, %d chunks in %.0f s",
            name,
            args.examples,
            len(shard["labels"]),
            time.perf_counter() - started,
        )


def load_shards(prefix: str) -> dict[str, np.ndarray]:
    files = sorted(WORK.glob(f"{prefix}_*.npz"))
    if not files:
        raise SystemExit(f"no {prefix} shards in {WORK}: run `collect` first")
    parts = [dict(np.load(f)) for f in files]
    out = {}
    for key in parts[0]:
        if key == "example":  # make example ids unique across shards
            base, ids = 0, []
            for part in parts:
                ids.append(part[key] + base)
                base += int(part[key].max()) + 1
            out[key] = np.concatenate(ids)
        else:
            out[key] = np.concatenate([p[key] for p in parts])
    return out


def head_states(weight: torch.Tensor, bias: torch.Tensor, hidden: np.ndarray) -> np.ndarray:
    """The runtime's decision per chunk (`decide_state` on the head's logits): 0, 1 or 2."""
    logits = torch.from_numpy(hidden).float() @ weight.float().T + bias.float()
    probs = torch.softmax(logits[:, :3], dim=-1)
    states = np.zeros(len(hidden), dtype=np.int64)
    answer, ignore = (probs[:, 1] > 0.5).numpy(), (probs[:, 2] > 0.5).numpy()
    states[answer] = ANSWER
    states[ignore] = IGNORE_STATE  # decide_state checks ignore first
    for row in range(0, len(hidden), max(1, len(hidden) // 50)):  # the same rule as the runtime's
        assert decide_state(logits[row]).state.value == ("cl", "ss", "el")[states[row]], row
    return states


def figures(states: np.ndarray, data: dict[str, np.ndarray]) -> dict:
    """Per kind of turn: first answer relative to the end (within 2 chunks, early, late, never)."""
    out: dict = {}
    order = np.lexsort((data["offset"], data["example"]))
    example, offset, kind = (data[k][order] for k in ("example", "offset", "kind"))
    state = states[order]
    bounds = np.flatnonzero(np.diff(example)) + 1
    for ex_offset, ex_kind, ex_state in zip(
        np.split(offset, bounds), np.split(kind, bounds), np.split(state, bounds), strict=True
    ):
        name = KINDS[int(ex_kind[0])]
        row = out.setdefault(
            name, {"count": 0, "within_2": 0, "early": 0, "late": 0, "never": 0, "answered": 0}
        )
        row["count"] += 1
        fired = ex_offset[ex_state == ANSWER]
        if len(fired) == 0:
            row["never"] += 1
            continue
        row["answered"] += 1
        first = int(fired[0])
        row["early" if first < 0 else "within_2" if first <= 2 else "late"] += 1
    return out


def score(fig: dict) -> float:
    """What the issue asks, as one number for choosing the bias shift: never early, always in time."""
    speech = [k for k in KINDS if k != "ignorable"]
    early = sum(fig[k]["early"] for k in speech if k in fig)
    in_time = sum(fig[k]["within_2"] for k in speech if k in fig)
    noise_answered = fig.get("ignorable", {}).get("answered", 0)
    return in_time - 4.0 * early - 4.0 * noise_answered


def fit(args) -> None:
    train, val = load_shards("shard"), load_shards("val")
    shipped = torch.load(
        args.init_from / CHECKPOINT_DIR / "audiollm" / "final.pt", map_location="cpu", weights_only=True
    )
    weight0 = shipped["predictor_head.weight"].float()
    bias0 = shipped["predictor_head.bias"].float()
    before = figures(head_states(weight0, bias0, val["hidden"]), val)
    log.info("shipped head on validation: %s", json.dumps(before))

    hidden = torch.from_numpy(train["hidden"]).float()
    labels = torch.from_numpy(train["labels"])
    kinds, offsets = train["kind"], train["offset"]
    sample_weight = np.ones(len(labels), dtype=np.float32)
    inside = (train["labels"] == 0) & np.isin(
        kinds, [KINDS.index("paused_question"), KINDS.index("long_sentence")]
    )
    sample_weight[inside] = args.pause_weight
    sample_weight[(offsets >= 1) & (offsets <= 2) & (train["labels"] == ANSWER)] = args.onset_weight
    sample_weight = torch.from_numpy(sample_weight)
    weight = torch.nn.Parameter(weight0[:3].clone())
    bias = torch.nn.Parameter(bias0[:3].clone())
    optimiser = torch.optim.Adam([weight, bias], lr=args.lr)
    valid = labels != IGNORE
    hidden, labels, sample_weight = hidden[valid], labels[valid], sample_weight[valid]
    generator = torch.Generator().manual_seed(0)
    started = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(labels), generator=generator)
        total = 0.0
        for start in range(0, len(order), args.fit_batch):
            idx = order[start : start + args.fit_batch]
            logits = hidden[idx] @ weight.T + bias
            loss = (F.cross_entropy(logits, labels[idx], reduction="none") * sample_weight[idx]).sum()
            loss = loss / sample_weight[idx].sum()
            loss = loss + args.anchor * ((weight - weight0[:3]) ** 2).sum()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += float(loss.detach()) * len(idx)
        if epoch % 5 == 0 or epoch == args.epochs - 1:
            log.info("epoch %d loss %.4f", epoch, total / len(order))
    new_weight = torch.cat([weight.detach(), weight0[3:]])
    new_bias = torch.cat([bias.detach(), bias0[3:]])
    # The answer-bias shift: the best score on the validation shards.
    shifts = {}
    for shift in np.arange(-3.0, 3.01, 0.25):
        trial = new_bias.clone()
        trial[ANSWER] += float(shift)
        fig = figures(head_states(new_weight, trial, val["hidden"]), val)
        shifts[round(float(shift), 2)] = (score(fig), fig)
    best = max(shifts, key=lambda s: (shifts[s][0], -abs(s))) if args.shift is None else args.shift
    if best not in shifts:
        trial = new_bias.clone()
        trial[ANSWER] += best
        shifts[best] = (0.0, figures(head_states(new_weight, trial, val["hidden"]), val))
    new_bias[ANSWER] += best
    after = shifts[best][1]
    log.info("new head (answer bias shift %+.2f) on validation: %s", best, json.dumps(after))
    WORK.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": new_weight, "bias": new_bias}, WORK / "head.pt")
    result = {
        "train_chunks": int(len(labels)),
        "train_examples": int(len(np.unique(train["example"]))),
        "val_examples": int(len(np.unique(val["example"]))),
        "fit_seconds": round(time.perf_counter() - started, 1),
        "answer_bias_shift": best,
        "shipped_head": before,
        "new_head": after,
        "score_by_shift": {str(k): v[0] for k, v in shifts.items()},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    (WORK / "figures.json").write_text(json.dumps(result, indent=2))


def export(args) -> None:
    """A copy of `--init-from` whose only change is the state head (fp16 like the rest)."""
    head = torch.load(WORK / "head.pt", weights_only=True)
    if args.out.exists():
        shutil.rmtree(args.out)
    shutil.copytree(args.init_from, args.out)
    path = args.out / CHECKPOINT_DIR / "audiollm" / "final.pt"
    state = torch.load(path, map_location="cpu", weights_only=False)
    dtype = state["predictor_head.weight"].dtype
    state["predictor_head.weight"] = head["weight"].to(dtype)
    state["predictor_head.bias"] = head["bias"].to(dtype)
    torch.save(state, path)
    log.info("wrote %s (only predictor_head differs from %s)", args.out, args.init_from)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("step", choices=["collect", "fit", "export"])
    parser.add_argument(
        "--init-from", type=Path, default=MODEL_DIR, help="the exported model whose head is trained"
    )
    parser.add_argument("--shards", type=int, default=40, help="training shards to collect")
    parser.add_argument("--val-shards", type=int, default=4, help="validation shards (other seeds)")
    parser.add_argument("--examples", type=int, default=48, help="turns per shard")
    parser.add_argument("--batch", type=int, default=12, help="turns per forward (collect)")
    parser.add_argument("--fit-batch", type=int, default=2048, help="chunks per step (fit)")
    parser.add_argument(
        "--history", type=float, default=0.35, help="share of turns heard after an earlier one"
    )
    parser.add_argument(
        "--augment-share", type=float, default=0.7, help="share through the full augmentation"
    )
    parser.add_argument("--babble", type=float, default=0.5, help="share of augmented turns with babble")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--pause-weight", type=float, default=3.0, help="loss weight of listen chunks in pauses"
    )
    parser.add_argument(
        "--onset-weight", type=float, default=2.0, help="loss weight of the 2 chunks after the end"
    )
    parser.add_argument("--anchor", type=float, default=1e-3, help="L2 pull towards the shipped head")
    parser.add_argument(
        "--shift", type=float, default=None, help="answer-bias shift to use (default: the best on validation)"
    )
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "state_head_model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    setup_logging()
    setup_threads(args.threads)
    torch.manual_seed(0)
    {"collect": collect, "fit": fit, "export": export}[args.step](args)


if __name__ == "__main__":
    main()
