"""Stage 3: the speech encoder and adapter (+ prompt embeddings) against the frozen LLM.

Audio vectors replace the typed question: the frozen LLM must produce the answer from them, as in
the published model's second stage. A CTC head on the encoder output (training only, not saved),
reading the question's letters, stands in for the published first stage (CTC-trained encoder) and
makes the encoder learn words quickly. The encoder trains through `training.streaming`, the exact
chunk-by-chunk streaming computation inference runs. Global CMVN comes from the training audio.

Writes RUNS_DIR/audio/{state.pt, audio.pt, figures.json}.
Usage: python -m training.train_audio [--minutes 14] [--resume]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import torch

from app.model.fixtures.tiny import CHAT_TEMPLATE
from app.model.speech_in.adapter import AdapterConfig
from app.model.speech_in.audio_llm import AudioLLM, AudioLLMConfig
from app.model.speech_in.cmvn import CmvnStats
from app.model.speech_in.encoder import EncoderConfig
from training import domain
from training.audio_turns import (
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
from training.streaming import check_equivalence
from training.turns import IGNORE, Pieces

log = logging.getLogger("audio")

ENCODER = dict(
    input_dim=80,
    subsampling_input_dim=80,
    subsampling_output_dim=64,
    transformer_input_dim=64,
    attention_dim=128,
    attention_heads=4,
    linear_units=512,
    num_blocks=4,
    chunk_size=4,
    left_chunks=16,
    output_dim=128,
)


def load_llm(folder):
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    llm = Qwen2ForCausalLM.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    for p in llm.parameters():
        p.requires_grad_(False)
    return llm, Pieces.from_tokenizer(AutoTokenizer.from_pretrained(str(folder)))


def build_audio(llm_hidden: int, im_end: int) -> AudioLLM:
    config = AudioLLMConfig(
        encoder=EncoderConfig(**ENCODER),
        adapter=AdapterConfig(enc_out_dim=ENCODER["output_dim"], llm_embed_dim=llm_hidden),
        prompt_num=25,
        task_num=20,
        num_states=4,
        chat_template=CHAT_TEMPLATE,
        eod_id=im_end,
    )
    return AudioLLM(config, llm_hidden)


def training_cmvn(count: int = 300) -> CmvnStats:
    from app.model.speech_in.frontend import fbank_whole

    clips = Clips(DATA_DIR / "questions.npz")
    rng = np.random.default_rng(1)
    picks = rng.choice(len(clips), size=min(count, len(clips)), replace=False)
    return CmvnStats.from_features(np.concatenate([fbank_whole(clips[int(i)]) for i in picks]))


def load_exported_audio(model_dir, llm_hidden: int, im_end: int) -> AudioLLM:
    """The encoder, adapter, prompts, state head and CMVN of an exported model (fp32), to fine-tune."""
    from app.model.checkpoint_io.layout import load_audio_llm
    from app.model.fixtures.tiny import CHECKPOINT_DIR

    exported = load_audio_llm(
        model_dir / CHECKPOINT_DIR, llm_hidden, device=torch.device("cpu"), dtype=torch.float32
    )
    audio = build_audio(llm_hidden, im_end)
    audio.load_state_dict(exported.state_dict())
    log.info("starting from the audio side of %s", model_dir)
    return audio


def add_finetune_args(parser) -> None:
    """Issue 19's options, shared by the audio and state stages."""
    parser.add_argument(
        "--init-from", type=Path, default=None, help="fine-tune an exported model (e.g. models/trained)"
    )
    parser.add_argument(
        "--augmented",
        action="store_true",
        help="rooms, babble, phone lines, levels, pauses (training.augment)",
    )
    parser.add_argument(
        "--augment-share",
        type=float,
        default=1.0,
        help="with --augmented: share of recordings through the full augmentation (the rest: the light recipe)",
    )
    parser.add_argument(
        "--live-cut",
        type=float,
        default=0.0,
        help="share of questions cut where the live engine answers (0-2 chunks after the last word)",
    )
    parser.add_argument(
        "--ood", type=float, default=0.0, help="share of out-of-domain turns (answered with domain.SORRY)"
    )


def set_cmvn(audio: AudioLLM, cmvn: CmvnStats) -> None:
    mean, istd = cmvn.mean_istd()
    audio.encoder.global_cmvn.mean.copy_(torch.from_numpy(mean))
    audio.encoder.global_cmvn.istd.copy_(torch.from_numpy(istd))


def validate(audio: AudioLLM, llm_folder, limit: int = 100) -> dict:
    """Greedy text answers, through the runtime's pipeline, on the held-out-prosody recordings."""
    from training.evaluate import listen_and_answer, listening_model
    from training.synth import place

    model = listening_model(audio, llm_folder)
    clips = Clips(DATA_DIR / "questions.npz")
    val = np.nonzero(clips.columns["split"] == 1)[0][:limit]
    rng = np.random.default_rng(123)
    correct = 0
    for index in val:
        placed = place(clips[int(index)], rng, lead_s=0.3, trail_s=0.5, snr_db=30.0)
        text, _ = listen_and_answer(model, placed.samples)
        expected = domain.PAIRS[int(clips.columns["label"][index])].answer
        correct += text == expected
        if text != expected:
            log.info("val miss: %r answered %r", expected, text)
    return {"val_exact": f"{correct}/{len(val)}", "val_accuracy": correct / max(len(val), 1)}


LETTERS = "abcdefghijklmnopqrstuvwxyz' "


def letters(text: str) -> list[int]:
    return [
        LETTERS.index(c)
        for c in " ".join(text.lower().replace("?", " ").replace(".", " ").split())
        if c in LETTERS
    ]


def ctc_loss(
    head: torch.nn.Linear, encoded: torch.Tensor, examples: list[Example], pieces: Pieces, blank: int
) -> torch.Tensor:
    """CTC of the question's letters over each current turn's encoder frames (4 per chunk)."""
    log_probs = head(encoded).log_softmax(-1).transpose(0, 1)  # (T, B, letters + blank)
    targets = [letters(e.turn.question or "") for e in examples]
    return torch.nn.functional.ctc_loss(
        log_probs,
        torch.tensor([t for ids in targets for t in ids]),
        input_lengths=torch.tensor([4 * len(e.turn.feats) for e in examples]),
        target_lengths=torch.tensor([len(ids) for ids in targets]),
        blank=blank,
        zero_infinity=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=14.0)
    parser.add_argument("--batch", type=int, default=12)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--ctc-weight", type=float, default=0.5)
    parser.add_argument("--history", type=float, default=0.2, help="share of examples after an earlier turn")
    parser.add_argument(
        "--state-weight",
        type=float,
        default=0.0,
        help="also train the state head (chunk labels, as train_state) with this weight; adds ignorable sounds",
    )
    parser.add_argument(
        "--ignorable", type=float, default=0.3, help="share of ignorable sounds when --state-weight > 0"
    )
    parser.add_argument(
        "--long-pauses",
        type=float,
        default=0.0,
        help="share of long sentences with pauses between words (answered SORRY at their end only)",
    )
    parser.add_argument(
        "--greetings",
        type=float,
        default=0.0,
        help='share of other greetings ("Hello world.", answered like "Hello."; needs --augmented)',
    )
    parser.add_argument(
        "--run-name",
        default="audio",
        help="folder under training/runs for the checkpoint (copy the shipped `audio` there to resume a try)",
    )
    add_finetune_args(parser)
    add_run_args(parser)
    args = parser.parse_args()
    start_run(args)
    llm_folder = RUNS_DIR / "llm" / "hf"
    llm, pieces = load_llm(llm_folder)
    if args.init_from is not None:
        audio = load_exported_audio(args.init_from, llm.config.hidden_size, pieces.im_end)
    else:
        audio = build_audio(llm.config.hidden_size, pieces.im_end)
        with torch.no_grad():
            audio.prompt_embeddings.weight.normal_(0.0, float(llm.model.embed_tokens.weight.std()))
        set_cmvn(audio, training_cmvn())
    log.info(
        "streaming training path matches forward_chunks (max diff %.2e)",
        check_equivalence(audio.encoder, audio.adpter),
    )
    blank = len(LETTERS)
    ctc_head = torch.nn.Linear(ENCODER["output_dim"], blank + 1)
    trained = [*audio.encoder.parameters(), *audio.adpter.parameters(), audio.prompt_embeddings.weight]
    trained += list(ctc_head.parameters())
    if args.state_weight > 0:
        trained += list(audio.predictor_head.parameters())
    audio.encoder.global_cmvn.requires_grad_(False)
    trained = [p for p in trained if p.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=args.lr, weight_decay=0.01)
    ckpt = Checkpointer(args.run_name, args.save_every)
    step = 0
    if state := ckpt.load(args.resume):
        audio.load_state_dict(state["audio"])
        try:
            optimiser.load_state_dict(state["optimiser"])
        except ValueError:  # the trained set changed (e.g. --state-weight added the head): fresh moments
            log.info("optimiser state does not fit the trained parameters; starting it afresh")
        ctc_head.load_state_dict(state["ctc_head"])
        step = state["step"]
    rng = np.random.default_rng(step)
    maker = TurnMaker(rng, augmented=args.augmented, augment_share=args.augment_share)
    budget = args.minutes * 60
    budget_end = time.perf_counter() + budget
    progress = Progress("audio", 0, every=20)
    audio.train()
    while time.perf_counter() < budget_end:
        step += 1
        spent = 1.0 - (budget_end - time.perf_counter()) / budget
        for group in optimiser.param_groups:
            group["lr"] = args.lr * min(1.0, step / 40) * max(0.1, 1.0 - spent)
        examples = []
        for _ in range(args.batch):
            history = []
            if rng.random() < args.history:
                past = maker.question()
                past.answer_cut = None if rng.random() < 0.5 else int(rng.integers(0, 8))
                history.append(past)
            draw = rng.random()
            if args.state_weight > 0 and draw < args.ignorable:
                turn = maker.ignorable(min_trail=0.5)
            elif draw < args.ignorable * (args.state_weight > 0) + args.ood:
                turn = maker.out_of_domain(min_trail=0.5 if args.state_weight > 0 else 0.1)
            elif draw < args.ignorable * (args.state_weight > 0) + args.ood + args.long_pauses:
                turn = maker.out_of_domain(min_trail=0.5, long_only=True)
            elif (
                draw < args.ignorable * (args.state_weight > 0) + args.ood + args.long_pauses + args.greetings
            ):
                turn = maker.question(min_trail=0.5 if args.state_weight > 0 else 0.1, greeting=True)
            else:
                turn = maker.question(min_trail=0.5 if args.state_weight > 0 else 0.1)
            if turn.answer is not None and rng.random() < args.live_cut:
                turn = live_cut(turn, rng)
            examples.append(Example(turn, history))
        batch = build_batch(audio, llm, pieces, examples)
        hidden = run_llm(llm, batch)
        answers = answer_loss(llm, hidden, batch)
        ctc = ctc_loss(ctc_head, batch.encoded, examples, pieces, blank)
        loss = answers + args.ctc_weight * ctc
        states = torch.zeros(())
        if args.state_weight > 0:
            logits, labels = state_logits(audio, hidden, batch)
            states = torch.nn.functional.cross_entropy(logits[:, :3], labels, ignore_index=IGNORE)
            loss = loss + args.state_weight * states
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        progress.update(step, answer=answers.item(), ctc=ctc.item(), state=states.item())
        state = {
            "audio": audio.state_dict(),
            "optimiser": optimiser.state_dict(),
            "ctc_head": ctc_head.state_dict(),
        }
        ckpt.maybe_save(step, state)
    state = {
        "audio": audio.state_dict(),
        "optimiser": optimiser.state_dict(),
        "ctc_head": ctc_head.state_dict(),
    }
    ckpt.maybe_save(step, state, force=True)
    torch.save(audio.state_dict(), ckpt.dir / "audio.pt")
    seconds = ckpt.seconds
    figures = {"steps": step, "train_seconds": round(seconds, 1), **validate(audio.eval(), llm_folder)}
    ckpt.record(figures)
    log.info("audio figures: %s", figures)


if __name__ == "__main__":
    main()
