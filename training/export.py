"""Assemble the trained stages into models/trained/, the repo's embedded default model.

    models/trained/checkpoints/   the published Freeze-Omni layout (save_freeze_omni), fp16 weights
                                  except the codec (fp32, as the runtime runs it) and CMVN
    models/trained/Qwen2-tiny/    the Hugging Face Qwen2 folder (fp16 safetensors + tokenizer)
    models/trained/domain.json    the questions it knows, their answers, and what it ignores

fp16 storage is checked, not assumed: every held-out question is answered with the fp16 files and
with fp32 copies, and the text and codec tokens must be the same.
Usage: python -m training.export [--out models/trained]
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from app.model.checkpoint_io.layout import load_freeze_omni, save_freeze_omni
from app.model.fixtures.tiny import CHECKPOINT_DIR, LLM_DIR
from app.model.speech_in.cmvn import CmvnStats
from app.model.speech_out.codec import load_codec
from app.model.speech_out.codec_stream import ServerConfig
from app.model.speech_out.speech_decoder import SpeechDecoder
from training import domain
from training.common import DATA_DIR, MODEL_DIR, RUNS_DIR, Clips, setup_logging, setup_threads
from training.train_audio import build_audio
from training.train_decoder import decoder_config

log = logging.getLogger("export")


def trained_audio_path(audio_from: Path | None = None) -> Path:
    if audio_from is not None:
        return audio_from
    for path in (RUNS_DIR / "state" / "audio.pt", RUNS_DIR / "audio" / "audio.pt"):
        if path.exists():
            return path
    raise FileNotFoundError("no trained audio stage: run training.train_audio (and train_state) first")


def write_model(
    out: Path, dtype: torch.dtype, codec_dir: Path | None = None, audio_from: Path | None = None
) -> None:
    from transformers import AutoTokenizer, Qwen2ForCausalLM

    hf = RUNS_DIR / "llm" / "hf"
    llm = Qwen2ForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32)
    llm.to(dtype).save_pretrained(out / LLM_DIR, safe_serialization=True)
    AutoTokenizer.from_pretrained(str(hf)).save_pretrained(out / LLM_DIR)
    im_end = AutoTokenizer.from_pretrained(str(hf)).convert_tokens_to_ids("<|im_end|>")
    audio = build_audio(llm.config.hidden_size, im_end)
    audio.load_state_dict(torch.load(trained_audio_path(audio_from), weights_only=True))
    decoder = SpeechDecoder(decoder_config(llm.config.hidden_size))
    decoder.load_state_dict(torch.load(RUNS_DIR / "decoder" / "decoder.pt", weights_only=True))
    codec = load_codec(codec_dir or RUNS_DIR / "codec" / "codec")
    mean = audio.encoder.global_cmvn.mean.double().numpy()
    istd = audio.encoder.global_cmvn.istd.double().numpy()
    # The JSON stats file is written from the trained CMVN buffers (final.pt carries them too).
    cmvn = CmvnStats(mean_stat=mean.tolist(), var_stat=(1.0 / istd**2 + mean**2).tolist(), frame_num=1.0)
    save_freeze_omni(
        out / CHECKPOINT_DIR,
        audio=audio,
        cmvn=cmvn,
        decoder=decoder,
        codec=codec,
        server=ServerConfig(),
        dtype=dtype,
    )


def compare(fp16_root: Path, fp32_root: Path, count: int) -> str:
    from app.model.pipeline import InferOptions, OfflinePipeline
    from training.synth import place

    half = OfflinePipeline(load_freeze_omni(fp16_root / CHECKPOINT_DIR, fp16_root / LLM_DIR))
    full = OfflinePipeline(load_freeze_omni(fp32_root / CHECKPOINT_DIR, fp32_root / LLM_DIR))
    clips = Clips(DATA_DIR / "questions.npz")
    val = np.nonzero(clips.columns["split"] == 1)[0][:: max(1, 100 // count)][:count]
    rng = np.random.default_rng(3)
    same = 0
    for index in val:
        samples = place(clips[int(index)], rng, lead_s=0.3, trail_s=0.5, snr_db=30.0).samples
        a, b = half.run(samples, InferOptions.greedy()), full.run(samples, InferOptions.greedy())
        same += a.text == b.text and a.codec_ids == b.codec_ids
    return f"{same}/{len(val)}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=MODEL_DIR)
    parser.add_argument("--check", type=int, default=10, help="held-out questions to compare fp16 with fp32")
    parser.add_argument(
        "--codec-from",
        type=Path,
        default=None,
        help="take the codec from an exported model (e.g. a copy of models/trained) instead of training.train_codec's",
    )
    parser.add_argument(
        "--audio-from",
        type=Path,
        default=None,
        help="the listening side's audio.pt (default: training/runs/state, else training/runs/audio)",
    )
    args = parser.parse_args()
    setup_logging()
    setup_threads(1)
    codec_dir = args.codec_from / CHECKPOINT_DIR / "codec" if args.codec_from is not None else None
    if codec_dir is not None and args.out.resolve() in codec_dir.resolve().parents:
        raise SystemExit(
            f"--codec-from {args.codec_from} is inside --out {args.out}: copy it elsewhere first"
        )
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    write_model(args.out, torch.float16, codec_dir, args.audio_from)
    (args.out / "domain.json").write_text(
        json.dumps(
            {
                "system_role": domain.SYSTEM_ROLE,
                "pairs": [{"question": p.question, "answer": p.answer} for p in domain.PAIRS],
                "ignored": domain.BACKCHANNELS + ["noise", "coughs", "hum", "clicks"],
                "greetings": domain.TRAIN_GREETINGS,
                "anything_else": domain.SORRY,
            },
            indent=2,
        )
        + "\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        write_model(Path(tmp), torch.float32, codec_dir, args.audio_from)
        log.info(
            "fp16 files give the same text and codec tokens as fp32 on %s held-out turns",
            compare(args.out, Path(tmp), args.check),
        )
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    log.info("wrote %s: %.1f MB", args.out, size / 1e6)


if __name__ == "__main__":
    main()
