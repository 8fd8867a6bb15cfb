"""Stage 1: the codec. A training-only encoder + the project's CodecDecoder, with a 1024-code VQ.

The encoder turns 24 kHz audio into one vector per 600 samples (40 Hz); an EMA vector quantiser
snaps it to the generator's codebook (straight-through gradients); the generator (the published
HiFiGAN-V1 shape, `app.model.speech_out.codec`) makes the waveform back. Losses: log-mel L1 and
multi-resolution STFT; no GAN. The first `--vq-start` steps run without quantisation, then the
codebook is initialised by k-means on encoder outputs.

Writes RUNS_DIR/codec/{state.pt, codec/ (published layout), encoder.pt, figures.json}.
Usage: python -m training.train_codec [--minutes 26] [--resume]
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

from app.model.speech_out.codec import CodecConfig, CodecDecoder, save_codec
from training.common import (
    DATA_DIR,
    Checkpointer,
    Clips,
    Progress,
    add_run_args,
    start_run,
)
from training.spectral import LogMel, MultiResolutionSTFTLoss

log = logging.getLogger("codec")

CHANNELS = 128
TOKEN_SAMPLES = 600


class CodecEncoder(nn.Module):
    """Training only: 24 kHz waveform -> (B, latent_dim, T) with T = samples // 600."""

    def __init__(self, latent_dim: int, width: int = 256) -> None:
        super().__init__()
        self.mel = LogMel(24000, n_fft=1024, hop=TOKEN_SAMPLES // 2, win=1024, n_mels=80)
        self.net = nn.Sequential(
            nn.Conv1d(80, width, 5, padding=2),
            nn.GELU(),
            nn.Conv1d(width, width, 4, stride=2, padding=1),
            nn.GELU(),
            nn.Conv1d(width, width, 3, padding=1),
            nn.GELU(),
            nn.Conv1d(width, latent_dim, 1),
        )

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        tokens = wave.shape[-1] // TOKEN_SAMPLES
        mel = self.mel(wave)[..., : 2 * tokens]
        return self.net((mel + 5.0) / 4.0)


class EMAQuantizer:
    """EMA vector quantisation into a given embedding table (updated in place, no gradients)."""

    def __init__(self, table: torch.Tensor, decay: float = 0.99) -> None:
        self.table = table
        self.decay = decay
        self.counts = torch.ones(table.shape[0])
        self.sums = table.detach().clone()

    def nearest(self, z: torch.Tensor) -> torch.Tensor:
        """(N, D) vectors -> (N,) code ids."""
        table = self.table.detach()
        distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ table.T + table.pow(2).sum(1)[None]
        return distances.argmin(1)

    def kmeans_init(self, z: torch.Tensor, iterations: int = 12) -> None:
        generator = torch.Generator().manual_seed(0)
        centres = z[torch.randperm(len(z), generator=generator)[: self.table.shape[0]]].clone()
        for _ in range(iterations):
            ids = (z.pow(2).sum(1, keepdim=True) - 2 * z @ centres.T + centres.pow(2).sum(1)[None]).argmin(1)
            counts = torch.bincount(ids, minlength=len(centres)).float()
            sums = torch.zeros_like(centres).index_add_(0, ids, z)
            used = counts > 0
            centres[used] = sums[used] / counts[used, None]
            dead = (~used).nonzero().flatten()
            centres[dead] = z[torch.randint(len(z), (len(dead),), generator=generator)]
        with torch.no_grad():
            self.table.copy_(centres)
        self.counts = torch.ones(len(centres))
        self.sums = centres.clone()

    def update(self, z: torch.Tensor, ids: torch.Tensor) -> None:
        counts = torch.bincount(ids, minlength=self.table.shape[0]).float()
        sums = torch.zeros_like(self.sums).index_add_(0, ids, z.detach())
        self.counts.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.sums.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.counts.sum()
        smoothed = (self.counts + 1e-5) / (n + self.table.shape[0] * 1e-5) * n
        with torch.no_grad():
            self.table.copy_(self.sums / smoothed[:, None])

    def restart_dead(self, z: torch.Tensor, threshold: float = 0.03) -> int:
        dead = (self.counts < threshold).nonzero().flatten()
        if len(dead):
            picks = z[torch.randint(len(z), (len(dead),))].detach()
            with torch.no_grad():
                self.table[dead] = picks
            self.sums[dead] = picks
            self.counts[dead] = 1.0
        return len(dead)


def build_codec() -> CodecDecoder:
    codec = CodecDecoder(CodecConfig.tiny(channels=CHANNELS), latent_dim=CHANNELS)
    for module in codec.generator.modules():
        if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
            nn.init.normal_(module.weight, 0.0, 0.02)
            weight_norm(module)
    nn.init.normal_(codec.quantizer.quantizer_modules[0].embedding.weight, 0.0, 1.0)
    for book in codec.quantizer.quantizer_modules_globaltokens:
        nn.init.zeros_(book.embedding.weight)
    return codec


def strip_weight_norm(codec: CodecDecoder) -> CodecDecoder:
    for module in codec.generator.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
    return codec


def random_crops(clips: Clips, rng: np.random.Generator, batch: int, tokens: int) -> torch.Tensor:
    length = tokens * TOKEN_SAMPLES
    out = np.zeros((batch, length), dtype=np.float32)
    for row in range(batch):
        clip = clips[int(rng.integers(len(clips)))]
        if len(clip) > length:
            start = int(rng.integers(len(clip) - length)) // TOKEN_SAMPLES * TOKEN_SAMPLES
            clip = clip[start : start + length]
        out[row, : len(clip)] = clip
    return torch.from_numpy(out)


def tokenise(encoder: CodecEncoder, table: torch.Tensor, wave: np.ndarray) -> list[int]:
    """Codec token ids of a 24 kHz clip (padded to whole tokens)."""
    padded = np.pad(wave, (0, -len(wave) % TOKEN_SAMPLES)).astype(np.float32)
    with torch.no_grad():
        z = encoder(torch.from_numpy(padded)[None])[0].T
        distances = z.pow(2).sum(1, keepdim=True) - 2 * z @ table.T + table.pow(2).sum(1)[None]
        return distances.argmin(1).tolist()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=26.0, help="wall-time budget of this run")
    parser.add_argument("--steps", type=int, default=100000, help="upper bound on steps")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=24, help="crop length in codec tokens (25 ms each)")
    parser.add_argument("--vq-start", type=int, default=300)
    parser.add_argument("--lr", type=float, default=1e-3)
    add_run_args(parser)
    args = parser.parse_args()
    start_run(args)
    rng = np.random.default_rng(0)
    clips = Clips(DATA_DIR / "codec.npz")

    codec, encoder = build_codec(), CodecEncoder(CHANNELS)
    table = codec.quantizer.quantizer_modules[0].embedding.weight
    table.requires_grad_(False)
    quantizer = EMAQuantizer(table)
    params = [p for p in list(codec.parameters()) + list(encoder.parameters()) if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=args.lr, betas=(0.8, 0.99), weight_decay=0.0)
    mel_loss_fn = LogMel(24000, n_fft=1024, hop=240, win=1024, n_mels=80)
    stft_loss_fn = MultiResolutionSTFTLoss()
    ckpt = Checkpointer("codec", args.save_every)
    step = 0
    if state := ckpt.load(args.resume):
        codec.load_state_dict(state["codec"]), encoder.load_state_dict(state["encoder"])
        optimiser.load_state_dict(state["optimiser"])
        quantizer.counts, quantizer.sums = state["vq_counts"], state["vq_sums"]
        step = state["step"]
        rng = np.random.default_rng(step)

    budget_end = time.perf_counter() + args.minutes * 60
    progress = Progress("codec", args.steps, every=25)
    style_ids = torch.tensor(codec.global_tokens)
    while step < args.steps and time.perf_counter() < budget_end:
        step += 1
        if step == args.vq_start + 1 and not (args.resume and step > args.vq_start + 1):
            with torch.no_grad():
                samples = torch.cat(
                    [
                        encoder(random_crops(clips, rng, 32, 64)).transpose(1, 2).reshape(-1, CHANNELS)
                        for _ in range(6)
                    ]
                )
            quantizer.kmeans_init(samples)
            log.info("codebook initialised by k-means on %d encoder vectors", len(samples))
        for group in optimiser.param_groups:
            # Warm up, then halve for the last 30% of the time budget and again for the last 10%.
            spent = 1.0 - (budget_end - time.perf_counter()) / (args.minutes * 60)
            group["lr"] = (
                args.lr * min(1.0, step / 50) * (0.5 if spent > 0.7 else 1.0) * (0.5 if spent > 0.9 else 1.0)
            )
        wave = random_crops(clips, rng, args.batch, args.tokens)
        z = encoder(wave)  # (B, D, T)
        commit = z.new_zeros(())
        if step > args.vq_start:
            flat = z.transpose(1, 2).reshape(-1, CHANNELS)
            ids = quantizer.nearest(flat.detach())
            quantised = table[ids]
            commit = F.mse_loss(flat, quantised.detach())
            quantizer.update(flat, ids)
            latent = (flat + (quantised - flat).detach()).reshape(z.shape[0], -1, CHANNELS).transpose(1, 2)
        else:
            latent = z
        style = codec.quantizer.global_vector(style_ids.tolist())
        out = codec.generator(latent, style).squeeze(1)
        mel = F.l1_loss(mel_loss_fn(out), mel_loss_fn(wave))
        stft = stft_loss_fn(out, wave)
        loss = mel + stft + 0.25 * commit
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimiser.step()
        if step > args.vq_start and step % 50 == 0:
            restarted = quantizer.restart_dead(flat)
            if restarted:
                log.info("restarted %d unused codes", restarted)
        progress.update(step, mel=mel.item(), stft=stft.item(), commit=commit.item())
        ckpt.maybe_save(
            step,
            {
                "codec": codec.state_dict(),
                "encoder": encoder.state_dict(),
                "optimiser": optimiser.state_dict(),
                "vq_counts": quantizer.counts,
                "vq_sums": quantizer.sums,
            },
        )
    ckpt.maybe_save(
        step,
        {
            "codec": codec.state_dict(),
            "encoder": encoder.state_dict(),
            "optimiser": optimiser.state_dict(),
            "vq_counts": quantizer.counts,
            "vq_sums": quantizer.sums,
        },
        force=True,
    )
    export(codec, encoder, ckpt, step)


def export(codec: CodecDecoder, encoder: CodecEncoder, ckpt: Checkpointer, step: int) -> None:
    """Write the codec in the published layout plus the encoder, then measure intelligibility."""
    from app.model.speech_out.codec import load_codec
    from training import domain
    from training.asr import transcribe, word_error_rate

    seconds = ckpt.seconds
    codec = strip_weight_norm(codec).eval()
    save_codec(codec, ckpt.dir / "codec")
    torch.save(encoder.state_dict(), ckpt.dir / "encoder.pt")
    loaded = load_codec(ckpt.dir / "codec")
    answers = Clips(DATA_DIR / "answers.npz")
    texts = domain.answers()
    table = loaded.quantizer.quantizer_modules[0].embedding.weight
    encoder.eval()
    originals, rebuilt, used = [], [], set()
    for index in range(len(texts)):
        wave = answers[index]
        ids = tokenise(encoder, table, wave)
        used.update(ids)
        with torch.no_grad():
            audio = loaded(torch.tensor([ids])).numpy()[0]
        originals.append(transcribe(wave, 24000, texts))
        rebuilt.append(transcribe(audio, 24000, texts))
    figures = {
        "steps": step,
        "train_seconds": round(seconds, 1),
        "wer_original": word_error_rate(texts, originals),
        "wer_reconstructed": word_error_rate(texts, rebuilt),
        "codes_used_by_answers": len(used),
    }
    ckpt.record(figures)
    log.info("codec figures: %s", figures)


if __name__ == "__main__":
    main()
