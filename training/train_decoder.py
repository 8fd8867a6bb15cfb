"""Stage 5: the speech decoder, on the codec tokens of the answers, conditioned as inference does.

For every answer the LLM's own greedy reply is cut into segments by the runtime's `Segmenter`; a
segment's prefix is the LLM's post-norm hidden states of its tokens and its text is the
post-processed segment re-tokenised and embedded with the LLM's table, both reshaped to the
decoder width (`app.model.turn_parts.segment_condition`). Prefixes come from typed turns and, when
the audio stage has run, from spoken turns too, so the decoder does not depend on how the
question arrived. Targets: the codec tokens of the segment spoken in the answer voice.

Training runs the decoder's own layers with the published training mask: the conditioning block
[BOS, pre_nn(text)] sees the prefix and itself, SOS and the targets are causal after it; rotary
positions restart at 0 for the prefix and for the AR stream.

Writes RUNS_DIR/decoder/{state.pt, decoder.pt, figures.json}.
Usage: python -m training.train_decoder [--minutes 5] [--resume]
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.model.llm.transformer import build_layout
from app.model.speech_out.codec import load_codec
from app.model.speech_out.speech_decoder import SpeechDecoder, SpeechDecoderConfig, reshape_llm_vectors
from app.model.speech_out.text_segments import post_process
from training import domain
from training.common import (
    RUNS_DIR,
    Checkpointer,
    Progress,
    add_run_args,
    start_run,
)
from training.synth import espeak
from training.train_codec import CodecEncoder, tokenise

log = logging.getLogger("decoder")

SILENCE_S = 0.1  # around each segment, so the decoder learns a clean start and end


@dataclass
class Condition:
    prefix: torch.Tensor  # (P, width)
    text: torch.Tensor  # (L, width)


@dataclass
class Target:
    text: str
    tokens: list[int]
    conditions: list[Condition]


def decoder_config(llm_hidden: int) -> SpeechDecoderConfig:
    return SpeechDecoderConfig(
        hidden_size=llm_hidden // 4, codec_vocab=1024, num_heads=4, intermediate_size=384, num_blocks=4
    )


def collect_conditions(width: int, spoken_per_pair: int) -> dict[str, list[Condition]]:
    """Segment text -> conditions seen for it, from typed turns and (if trained) spoken turns."""
    from transformers import AutoTokenizer

    from app.model.llm.qwen2 import LLMRow, load_qwen2
    from app.model.pipeline import InferOptions, OfflinePipeline
    from app.model.turn_parts import system_prefill_embeds, text_turn_embeds
    from training.common import DATA_DIR, Clips
    from training.evaluate import listening_model
    from training.train_audio import build_audio

    folder = RUNS_DIR / "llm" / "hf"
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    llm = load_qwen2(folder)
    audio_path = next(
        (p for p in (RUNS_DIR / "state" / "audio.pt", RUNS_DIR / "audio" / "audio.pt") if p.exists()), None
    )
    audio = build_audio(llm.config.hidden_size, tokenizer.convert_tokens_to_ids("<|im_end|>"))
    if audio_path is not None:
        audio.load_state_dict(torch.load(audio_path, weights_only=True))
        log.info("spoken-turn prefixes from %s", audio_path)
    model = listening_model(audio, folder)
    pipeline = OfflinePipeline(model)
    options = InferOptions.greedy(max_new_tokens=60)
    found: dict[str, list[Condition]] = {}

    def condition(segment) -> Condition:
        hidden = torch.stack(list(segment.hidden_rows))
        ids = model.tokenize(post_process(segment.text)) or [model.eod_id]
        return Condition(
            reshape_llm_vectors(hidden, width).clone(), reshape_llm_vectors(llm.embed(ids), width).clone()
        )

    questions = Clips(DATA_DIR / "questions.npz")
    labels, splits = questions.columns["label"], questions.columns["split"]
    rng = np.random.default_rng(5)
    every_input = []
    for index, pair in enumerate(domain.PAIRS):
        inputs = [("text", pair.question)]
        if audio_path is not None:
            picks = rng.choice(
                np.nonzero((labels == index) & (splits == 0))[0], spoken_per_pair, replace=False
            )
            inputs += [("audio", questions[int(i)]) for i in picks]
        every_input += inputs
    if (DATA_DIR / "ood.npz").exists():  # the SORRY answer, typed and spoken
        ood = Clips(DATA_DIR / "ood.npz")
        every_input += [
            ("text", q) for q in domain.OUT_OF_DOMAIN_TRAIN[:: max(1, len(domain.OUT_OF_DOMAIN_TRAIN) // 6)]
        ]
        if audio_path is not None:
            every_input += [
                ("audio", ood[int(i)]) for i in rng.choice(len(ood), 2 * spoken_per_pair, replace=False)
            ]
    with torch.inference_mode():
        for kind, item in every_input:
            cache = llm.new_cache(1, 1024)
            slot = cache.allocate()
            llm.forward_rows([LLMRow(slot, system_prefill_embeds(model, None))], cache)
            if kind == "text":
                llm.forward_rows([LLMRow(slot, text_turn_embeds(model, item))], cache)
            else:
                samples = np.concatenate([np.zeros(4000, np.float32), item, np.zeros(6000, np.float32)])
                pipeline._listen(samples, slot, cache)
            _, segments = pipeline._answer(slot, cache, options, torch.Generator())
            for segment in segments:
                found.setdefault(segment.text, []).append(condition(segment))
    return found


def build_targets(conditions: dict[str, list[Condition]]) -> list[Target]:
    state = torch.load(RUNS_DIR / "codec" / "encoder.pt", weights_only=True)
    codec = load_codec(RUNS_DIR / "codec" / "codec")
    encoder = CodecEncoder(codec.latent_dim)
    encoder.load_state_dict(state)
    encoder.eval()
    table = codec.quantizer.quantizer_modules[0].embedding.weight
    voice, speed, pitch = domain.ANSWER_VOICE
    pad = np.zeros(int(SILENCE_S * 24000), dtype=np.float32)
    targets = []
    for text, conds in conditions.items():
        wave = np.concatenate([pad, espeak(text.strip(), voice, speed, pitch, rate=24000), pad])
        targets.append(Target(text, tokenise(encoder, table, wave), conds))
    return targets


def exported_tokens(model_dir) -> dict[str, list[int]]:
    """Segment text -> the codec tokens an exported model's own decoder speaks for it (greedy, after
    a typed question): the targets that keep a fine-tuned decoder saying what it said."""
    from app.model.checkpoint_io.layout import load_freeze_omni
    from app.model.fixtures.tiny import TinyPaths
    from app.model.llm.qwen2 import LLMRow
    from app.model.pipeline import InferOptions, OfflinePipeline
    from app.model.turn_parts import system_prefill_embeds, text_turn_embeds

    paths = TinyPaths(model_dir)
    model = load_freeze_omni(paths.model_path, paths.llm_path)
    pipeline = OfflinePipeline(model)
    width = model.decoder.config.hidden_size
    out: dict[str, list[int]] = {}
    with torch.inference_mode():
        for pair in domain.PAIRS:
            cache = model.llm.new_cache(1, 1024)
            slot = cache.allocate()
            model.llm.forward_rows([LLMRow(slot, system_prefill_embeds(model, None))], cache)
            model.llm.forward_rows([LLMRow(slot, text_turn_embeds(model, pair.question))], cache)
            _, segments = pipeline._answer(
                slot, cache, InferOptions.greedy(max_new_tokens=60), torch.Generator()
            )
            for segment in segments:
                hidden = torch.stack(list(segment.hidden_rows)).float()
                ids = model.tokenize(post_process(segment.text)) or [model.eod_id]
                cond = Condition(
                    reshape_llm_vectors(hidden, width),
                    reshape_llm_vectors(model.llm.embed(ids).float(), width),
                )
                out[segment.text] = greedy_tokens(model.decoder.float(), cond, 400)
    return out


def build_targets_from_export(conditions: dict[str, list[Condition]], model_dir) -> list[Target]:
    """Targets without the codec's encoder: the exported decoder's own tokens for what it already
    says, analysis by synthesis through the exported codec (`training.codec_invert`) for new text."""
    import json

    from training.codec_invert import inverted_tokens

    cache_path = RUNS_DIR / "decoder" / "targets_from_export.json"
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    known: dict[str, list[int]] = json.loads(cache_path.read_text()) if cache_path.exists() else {}
    if not known:
        known = exported_tokens(model_dir)
        cache_path.write_text(json.dumps(known))
    # Only what it should say: a garbled reply heard while collecting prefixes is no target.
    from transformers import AutoTokenizer

    wanted = {*domain.answers(), *sorry_segments(AutoTokenizer.from_pretrained(str(RUNS_DIR / "llm" / "hf")))}
    targets = []
    for text, conds in conditions.items():
        if text.strip() not in wanted:
            log.info("skipping segment %r (not an answer)", text)
            continue
        tokens = known.get(text) or inverted_tokens(text.strip(), model_dir)
        targets.append(Target(text, tokens, conds))
    return targets


def sorry_segments(tokenizer) -> list[str]:
    """domain.SORRY as the server's segmenter cuts it (stripped): "Sorry," (a first segment may end
    at a comma), then one segment per sentence."""
    from app.model.speech_out.text_segments import SERVER_SEGMENTATION, Segmenter

    segmenter = Segmenter.for_rule(SERVER_SEGMENTATION)
    out = []
    for token in tokenizer.encode(domain.SORRY, add_special_tokens=False):
        if (segment := segmenter.push(token, None, tokenizer.decode([token]))) is not None:
            out.append(segment.text.strip())
    if (segment := segmenter.flush()) is not None:
        out.append(segment.text.strip())
    return out


def training_forward(decoder: SpeechDecoder, conds: list[Condition], tokens: list[list[int]]) -> torch.Tensor:
    """Teacher-forced logits (B, T+1, vocab) for SOS, t1..tT, with the inference-time mask."""
    cfg = decoder.config
    text_lengths = [c.text.shape[0] for c in conds]
    layout = build_layout(
        text_lengths,
        decoder.rotary_emb_pre_nn,
        dtype=torch.float32,
        device=torch.device("cpu"),
        bidirectional=text_lengths,
    )
    x = layout.pad([c.text for c in conds])
    for layer in decoder.layers_pre_nn:
        x = layer(x, layout)
    conditioned = [x[i, :n] for i, n in enumerate(text_lengths)]

    batch = len(conds)
    prefix_lengths = [c.prefix.shape[0] for c in conds]
    rows = []
    special = decoder.embedding(torch.tensor([cfg.bos, cfg.sos]))
    for cond, ids in zip(conditioned, tokens, strict=True):
        rows.append(
            torch.cat(
                [special[:1], cond, special[1:], decoder.embedding(torch.tensor(ids, dtype=torch.long))]
            )
        )
    max_len = max(p + r.shape[0] for p, r in zip(prefix_lengths, rows, strict=True))
    d = cfg.layer_dims()
    caches = [
        (
            torch.zeros(batch, max_len, d.num_kv_heads, d.head_dim),
            torch.zeros(batch, max_len, d.num_kv_heads, d.head_dim),
        )
        for _ in range(cfg.num_blocks)
    ]
    slots = list(range(batch))
    layout = build_layout(
        prefix_lengths,
        decoder.rotary_emb_prefix,
        dtype=torch.float32,
        device=torch.device("cpu"),
        slots=slots,
        past_lengths=[0] * batch,
        bidirectional=prefix_lengths,
    )
    h = layout.pad([c.prefix for c in conds])
    for index, layer in enumerate(decoder.layers_prefix):
        h = layer(h, layout, caches[index])

    layout = build_layout(
        [r.shape[0] for r in rows],
        decoder.rotary_emb,
        dtype=torch.float32,
        device=torch.device("cpu"),
        slots=slots,
        past_lengths=prefix_lengths,
        rope_starts=[0] * batch,
        bidirectional=[c.shape[0] + 1 for c in conditioned],
    )
    x = layout.pad(rows)
    for index, layer in enumerate(decoder.layers):
        x = layer(x, layout, caches[index])
    logits = decoder.out_fnn(decoder.norm(x))
    # Keep SOS .. last token: the positions that predict t1 .. EOS.
    starts = [c.shape[0] + 1 for c in conditioned]
    length = max(len(t) for t in tokens) + 1
    out = logits.new_zeros(batch, length, logits.shape[-1])
    for row, (start, ids) in enumerate(zip(starts, tokens, strict=True)):
        out[row, : len(ids) + 1] = logits[row, start : start + len(ids) + 1]
    return out


def greedy_tokens(decoder: SpeechDecoder, cond: Condition, limit: int) -> list[int]:
    """The runtime's own greedy loop (prepare_segments + forward_ar), as the pipeline speaks."""
    from app.model.speech_out.speech_decoder import SegmentInput

    cache = decoder.new_cache(1, cond.prefix.shape[0] + cond.text.shape[0] + 2 + limit)
    slot = cache.allocate()
    rows = decoder.prepare_segments([SegmentInput(slot, cond.prefix, cond.text)], cache)
    logits = decoder.forward_ar(rows, cache, [cond.prefix.shape[0]])
    ids: list[int] = []
    while len(ids) < limit:
        token = int(decoder.mask_non_codes(logits[0]).argmax())
        if token == decoder.config.eos:
            break
        ids.append(token)
        logits = decoder.forward_ar(decoder.token_rows([slot], [token]), cache, [cond.prefix.shape[0]])
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--spoken-per-pair", type=int, default=4)
    parser.add_argument("--prefix-noise", type=float, default=0.1, help="relative noise on the prefix")
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="fine-tune an exported model's decoder (e.g. models/trained); targets come from its decoder "
        "and codec (no codec encoder needed)",
    )
    add_run_args(parser)
    args = parser.parse_args()
    start_run(args)
    ckpt = Checkpointer("decoder", args.save_every)
    import json

    from app.model.llm.qwen2 import Qwen2Config

    llm_hidden = Qwen2Config.from_folder(RUNS_DIR / "llm" / "hf").hidden_size
    config = decoder_config(llm_hidden)
    started = time.perf_counter()
    conditions = collect_conditions(config.hidden_size, args.spoken_per_pair)
    if args.init_from is not None:
        targets = build_targets_from_export(conditions, args.init_from)
    else:
        targets = build_targets(conditions)
    log.info(
        "%d segments, %d conditions, %d tokens, prepared in %.0f s",
        len(targets),
        sum(len(t.conditions) for t in targets),
        sum(len(t.tokens) for t in targets),
        time.perf_counter() - started,
    )
    decoder = SpeechDecoder(config)
    if args.init_from is not None:
        from app.model.checkpoint_io.layout import load_speech_decoder
        from app.model.fixtures.tiny import CHECKPOINT_DIR

        exported = load_speech_decoder(
            args.init_from / CHECKPOINT_DIR, device=torch.device("cpu"), dtype=torch.float32
        )
        decoder.load_state_dict(exported.state_dict())
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=args.lr, weight_decay=0.0)
    step = 0
    if state := ckpt.load(args.resume):
        decoder.load_state_dict(state["decoder"]), optimiser.load_state_dict(state["optimiser"])
        step = state["step"]
    rng = np.random.default_rng(step)
    budget = args.minutes * 60
    budget_end = time.perf_counter() + budget
    progress = Progress("decoder", 0, every=25)
    decoder.train()
    while time.perf_counter() < budget_end:
        step += 1
        spent = 1.0 - (budget_end - time.perf_counter()) / budget
        for group in optimiser.param_groups:
            group["lr"] = args.lr * min(1.0, step / 30) * max(0.05, 1.0 - spent)
        picks = [targets[int(i)] for i in rng.integers(len(targets), size=args.batch)]
        conds = []
        for target in picks:
            cond = target.conditions[int(rng.integers(len(target.conditions)))]
            noise = args.prefix_noise * cond.prefix.std() * torch.randn_like(cond.prefix)
            conds.append(Condition(cond.prefix + noise, cond.text))
        tokens = [t.tokens for t in picks]
        logits = training_forward(decoder, conds, tokens)
        labels = torch.full(logits.shape[:2], -100, dtype=torch.long)
        for row, ids in enumerate(tokens):
            labels[row, : len(ids) + 1] = torch.tensor([*ids, config.eos])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), 1.0)
        optimiser.step()
        progress.update(step, loss=loss.item())
        ckpt.maybe_save(step, {"decoder": decoder.state_dict(), "optimiser": optimiser.state_dict()})
    ckpt.maybe_save(step, {"decoder": decoder.state_dict(), "optimiser": optimiser.state_dict()}, force=True)
    decoder.eval()
    torch.save(decoder.state_dict(), ckpt.dir / "decoder.pt")
    (ckpt.dir / "targets.json").write_text(json.dumps({t.text: t.tokens for t in targets}))
    seconds = ckpt.seconds
    exact = total = 0
    for target in targets:
        for cond in target.conditions:
            exact += greedy_tokens(decoder, cond, len(target.tokens) + 20) == target.tokens
            total += 1
    figures = {
        "steps": step,
        "train_seconds": round(seconds, 1),
        "segments": len(targets),
        "greedy_exact": f"{exact}/{total}",
    }
    ckpt.record(figures)
    log.info("decoder figures: %s", figures)


if __name__ == "__main__":
    main()
