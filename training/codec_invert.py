"""Codec tokens of a new sentence without the codec's encoder: analysis by synthesis.

The codec's training-only encoder is not part of the exported model, so a new answer's target
tokens are found through the frozen generator instead: per 600-sample token, a distribution over
the 1024 codes whose expected codebook vector drives the generator; log-mel + multi-resolution
STFT loss against the espeak-ng recording; the temperature anneals so each distribution ends on
one code, and the last steps run straight-through on the hard choice (what the runtime plays).

Usage: python -m training.codec_invert "Sorry, I only know a few questions." [--steps 300]
       (prints the tokens and pocketsphinx's transcription of their decoded audio)
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.model.speech_out.codec import CodecDecoder, load_codec
from training.common import MODEL_DIR, RUNS_DIR, setup_logging, setup_threads
from training.spectral import LogMel, MultiResolutionSTFTLoss

log = logging.getLogger("codec_invert")


def invert(
    codec: CodecDecoder, wave: np.ndarray, steps: int = 300, lr: float = 0.1, seed: int = 0
) -> list[int]:
    """Token ids whose decoded audio matches the 24 kHz `wave` (padded to whole tokens)."""
    torch.manual_seed(seed)
    hop = codec.samples_per_token
    padded = torch.from_numpy(np.pad(wave, (0, -len(wave) % hop)).astype(np.float32))[None]
    count = padded.shape[1] // hop
    for p in codec.parameters():
        p.requires_grad_(False)
    table = codec.quantizer.quantizer_modules[0].embedding.weight  # (codes, D)
    style = codec.style_vector()
    mel = LogMel(codec.config.sampling_rate, 1024, 240, 1024)
    stft = MultiResolutionSTFTLoss()
    target_mel = mel(padded)
    logits = (0.01 * torch.randn(count, table.shape[0])).requires_grad_(True)
    optimiser = torch.optim.Adam([logits], lr=lr)
    hard_from = int(0.8 * steps)
    for step in range(steps):
        tau = max(0.03, 1.0 * (0.03 / 1.0) ** (step / max(hard_from, 1)))
        probs = torch.softmax(logits / tau, dim=-1)
        if step >= hard_from:
            hard = F.one_hot(probs.argmax(-1), table.shape[0]).to(probs.dtype)
            probs = hard + probs - probs.detach()
        latent = (probs @ table).T[None]
        out = codec.generator(latent, style).squeeze(1)
        loss = F.l1_loss(mel(out), target_mel) + stft(out, padded)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("invert step %d/%d loss %.4f tau %.3f", step, steps, loss.item(), tau)
    return logits.argmax(-1).tolist()


def inverted_tokens(text: str, model_dir: Path = MODEL_DIR, steps: int = 250) -> list[int]:
    """Codec tokens of `text` in the answer voice (0.1 s of silence around it, as the decoder's
    targets), cached in RUNS_DIR/decoder/inverted.json so a rerun or resume does not redo them."""
    from training import domain
    from training.synth import espeak

    cache = RUNS_DIR / "decoder" / "inverted.json"
    known = json.loads(cache.read_text()) if cache.exists() else {}
    if text not in known:
        codec = load_codec(model_dir / "checkpoints" / "codec").float().eval()
        voice, speed, pitch = domain.ANSWER_VOICE
        pad = np.zeros(int(0.1 * 24000), dtype=np.float32)
        wave = np.concatenate([pad, espeak(text, voice, speed, pitch, rate=24000), pad])
        log.info("codec tokens of %r by analysis by synthesis (%d steps)", text, steps)
        known[text] = invert(codec, wave, steps)
        cache.parent.mkdir(parents=True, exist_ok=True)
        known = {**(json.loads(cache.read_text()) if cache.exists() else {}), text: known[text]}
        cache.write_text(json.dumps(known))
    return known[text]


def main() -> None:
    from training import domain
    from training.asr import transcribe

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("texts", nargs="+", help="sentences (each one segment)")
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument(
        "--model", type=Path, default=MODEL_DIR, help="the exported model whose codec to invert"
    )
    args = parser.parse_args()
    setup_logging()
    setup_threads(1)
    codec = load_codec(args.model / "checkpoints" / "codec").float().eval()
    figures = {}
    for text in args.texts:
        tokens = inverted_tokens(text, args.model, args.steps)
        with torch.no_grad():
            audio = codec(torch.tensor([tokens]))[0].numpy()
        heard = transcribe(audio, 24000, [text, *domain.answers(), *domain.OUT_OF_DOMAIN_TRAIN])
        figures[text] = {"tokens": len(tokens), "heard": heard}
        log.info("%r -> %d tokens, pocketsphinx hears %r", text, len(tokens), heard)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
