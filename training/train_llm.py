"""Stage 2: the tiny LLM. A Qwen2-shaped causal LM (transformers' Qwen2ForCausalLM) that answers the
domain's questions in the chat template, saved as a Hugging Face folder our runtime loads.

The tokenizer is `app.model.fixtures.tiny_llm`'s byte-level BPE, trained on a corpus covering the domain.
Training sequences follow inference's exact turn structure (`training.turns`), with one to three
turns; earlier answers are sometimes cut short, as a barge-in leaves them in the history.

Writes RUNS_DIR/llm/{state.pt, hf/ (config, safetensors, tokenizer), figures.json}.
Usage: python -m training.train_llm [--steps 500] [--resume]
"""

from __future__ import annotations

import argparse
import logging
import random
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

from app.model.fixtures import tiny_llm
from training import domain
from training.common import Checkpointer, Progress, add_run_args, start_run
from training.turns import IGNORE, Pieces, text_dialog

log = logging.getLogger("llm")

LLM_DIMS = {
    "hidden_size": 384,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
}


def write_domain_tokenizer(folder: Path, vocab_size: int = 640) -> int:
    """The tiny tokenizer recipe, trained on the built-in corpus plus the whole domain."""
    corpus = tiny_llm._CORPUS + "\n" + domain.domain_corpus() + "\n"
    with mock.patch.object(tiny_llm, "_CORPUS", corpus):
        return tiny_llm.write_tokenizer(folder, vocab_size)


def build_model(vocab: int, im_end: int, pad: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=(vocab + 63) // 64 * 64,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=im_end,
        pad_token_id=pad,
        attn_implementation="sdpa",
        **LLM_DIMS,
    )
    return Qwen2ForCausalLM(config)


def sample_turn(rng: random.Random, other_share: float) -> list:
    """A typed question and its answer: mostly the 50 pairs; some greetings and out-of-domain
    questions (answered with `domain.SORRY`) when `other_share` > 0."""
    if rng.random() < other_share:
        if rng.random() < 0.3:
            greeting = domain.PAIRS[domain.GREETING_PAIR]
            return [rng.choice(domain.TRAIN_GREETINGS), greeting.answer, None]
        sentence = rng.choice(domain.OUT_OF_DOMAIN_TRAIN + domain.LONG_SENTENCES_TRAIN)
        return [sentence, domain.SORRY, None]
    pair = rng.choice(domain.PAIRS)
    return [pair.question, pair.answer, None]


def sample_dialog(
    pieces: Pieces, rng: random.Random, other_share: float = 0.0
) -> tuple[list[int], list[int]]:
    turns = [sample_turn(rng, other_share) for _ in range(rng.choice([1, 1, 2, 2, 3]))]
    for turn in turns[:-1]:
        if rng.random() < 0.4:  # barge-in: the earlier answer stops anywhere
            turn[2] = rng.randint(0, len(pieces.encode(turn[1])))
    return text_dialog(pieces, [tuple(t) for t in turns])


def batch_tensors(samples: list[tuple[list[int], list[int]]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(ids) for ids, _ in samples)
    ids = torch.full((len(samples), longest), pad, dtype=torch.long)
    targets = torch.full((len(samples), longest), IGNORE, dtype=torch.long)
    for row, (seq, tgt) in enumerate(samples):
        ids[row, : len(seq)] = torch.tensor(seq)
        targets[row, : len(tgt)] = torch.tensor(tgt)
    return ids, targets


def greedy_text_answers(folder: Path, questions: list[str] | None = None) -> list[str]:
    """Each question as a typed turn through our own runtime, greedy: the answers it gives."""
    from transformers import AutoTokenizer

    from app.model.llm.qwen2 import LLMRow, load_qwen2

    llm = load_qwen2(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pieces = Pieces.from_tokenizer(tokenizer)
    out = []
    for question in questions or [pair.question for pair in domain.PAIRS]:
        cache = llm.new_cache(1, 512)
        slot = cache.allocate()
        llm.forward_rows([LLMRow(slot, llm.embed(pieces.system))], cache)
        llm.forward_rows([LLMRow(slot, llm.embed(pieces.opening + pieces.encode(question)))], cache)
        step = llm.forward_rows([LLMRow(slot, llm.embed(pieces.suffix), want_logits=True)], cache)
        ids: list[int] = []
        while len(ids) < 40:
            token = int(step.logits[0].argmax())
            if token == pieces.im_end:
                break
            ids.append(token)
            step = llm.forward_rows([LLMRow(slot, llm.embed([token]), want_logits=True)], cache)
        out.append(tokenizer.decode(ids, skip_special_tokens=True))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument(
        "--other-share",
        type=float,
        default=0.2,
        help="share of turns that are greetings or out-of-domain questions (answered with SORRY)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune an exported model's LLM (e.g. models/trained) instead of starting from scratch; "
        "its tokenizer is kept",
    )
    add_run_args(parser)
    args = parser.parse_args()
    start_run(args)
    rng = random.Random(0)
    ckpt = Checkpointer("llm", args.save_every)
    folder = ckpt.dir / "hf"
    folder.mkdir(parents=True, exist_ok=True)
    from transformers import AutoTokenizer

    if args.init_from is not None:
        from app.model.fixtures.tiny import LLM_DIR

        AutoTokenizer.from_pretrained(str(args.init_from / LLM_DIR)).save_pretrained(folder)
    else:
        vocab = write_domain_tokenizer(folder)

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    pieces = Pieces.from_tokenizer(tokenizer)
    pad = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    if args.init_from is not None:
        from transformers import Qwen2ForCausalLM

        from app.model.fixtures.tiny import LLM_DIR

        model = Qwen2ForCausalLM.from_pretrained(str(args.init_from / LLM_DIR), torch_dtype=torch.float32)
        log.info("fine-tuning the LLM of %s", args.init_from)
    else:
        model = build_model(vocab, pieces.im_end, pad)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    step = 0
    if state := ckpt.load(args.resume):
        model.load_state_dict(state["model"]), optimiser.load_state_dict(state["optimiser"])
        step = state["step"]
        rng = random.Random(step)
    progress = Progress("llm", args.steps, every=25)
    model.train()
    while step < args.steps:
        step += 1
        for group in optimiser.param_groups:
            group["lr"] = args.lr * min(1.0, step / 30) * max(0.05, 1 - step / args.steps)
        ids, targets = batch_tensors(
            [sample_dialog(pieces, rng, args.other_share) for _ in range(args.batch)], pad
        )
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        progress.update(step, loss=loss.item())
        ckpt.maybe_save(step, {"model": model.state_dict(), "optimiser": optimiser.state_dict()})
    ckpt.maybe_save(step, {"model": model.state_dict(), "optimiser": optimiser.state_dict()}, force=True)
    model.eval().save_pretrained(folder, safe_serialization=True)
    seconds = ckpt.seconds
    answers = greedy_text_answers(folder)
    correct = sum(a == p.answer for a, p in zip(answers, domain.PAIRS, strict=True))
    for answer, pair in zip(answers, domain.PAIRS, strict=True):
        if answer != pair.answer:
            log.info("wrong: %r -> %r", pair.question, answer)
    ckpt.record(
        {"steps": step, "train_seconds": round(seconds, 1), "text_turn_exact": f"{correct}/{len(answers)}"}
    )
    log.info("typed questions answered exactly: %d/%d", correct, len(answers))
    sorry = greedy_text_answers(
        folder, ["What is the capital of Peru?", "Turn off the radio.", "Hello world."]
    )
    log.info("held-out typed turns: %s", sorry)


if __name__ == "__main__":
    main()
