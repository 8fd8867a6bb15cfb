"""A tiny Freeze-Omni made here: random weights (fixed seed), small dims, the published layout.

    DIR/checkpoints/...   the Freeze-Omni layout (audiollm, decoder, codec, server.json)
    DIR/Qwen2-tiny/       a Hugging Face Qwen2 folder with a locally built tokenizer

It is the embedded default and the test fixture. Its answers are noise-like, but every stage runs
the real code, and a turn takes a fraction of a second on two CPU cores.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from app.model.adapter import AdapterConfig
from app.model.audio_llm import AudioLLM, AudioLLMConfig
from app.model.checkpoint import save_freeze_omni
from app.model.cmvn import CmvnStats
from app.model.codec import CodecConfig, CodecDecoder, init_unit_gain
from app.model.codec_stream import ServerConfig
from app.model.encoder import EncoderConfig
from app.model.frontend import fbank_whole
from app.model.speech_decoder import SpeechDecoder, SpeechDecoderConfig
from app.model.tiny_llm import write_tiny_qwen2

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LLM_DIR = "Qwen2-tiny"
# The published template after YAML folding, verbatim.
CHAT_TEMPLATE = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    "<audio><|im_end|>\n<|im_start|>assistant\n"
)


@dataclass(frozen=True)
class TinyPaths:
    """Where a tiny model lives."""

    root: Path

    @property
    def model_path(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def llm_path(self) -> Path:
        return self.root / LLM_DIR

    def exists(self) -> bool:
        return (self.model_path / "server.json").is_file() and (self.llm_path / "config.json").is_file()


def _synthetic_cmvn(seed: int) -> CmvnStats:
    """CMVN stats from a few seconds of chirps and noise, so normalised features are O(1)."""
    rng = np.random.default_rng(seed)
    t = np.arange(16000 * 4) / 16000
    chirp = 0.3 * np.sin(2 * np.pi * (200 + 600 * t) * t)
    signal = (chirp + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)
    return CmvnStats.from_features(fbank_whole(signal))


def _encoder_config() -> EncoderConfig:
    width = 64
    return EncoderConfig(
        input_dim=80,
        subsampling_input_dim=80,
        subsampling_output_dim=width,
        transformer_input_dim=width,
        attention_dim=width,
        attention_heads=4,
        linear_units=2 * width,
        num_blocks=2,
        chunk_size=4,
        left_chunks=16,
        output_dim=width,
    )


def make_tiny(root: str | Path, *, seed: int = 0) -> TinyPaths:
    """Write the tiny model under `root` (overwriting), deterministically for a given seed."""
    paths = TinyPaths(Path(root))
    llm_hidden = 64
    write_tiny_qwen2(paths.llm_path, hidden_size=llm_hidden, seed=seed)
    from transformers import AutoTokenizer

    im_end = AutoTokenizer.from_pretrained(str(paths.llm_path)).convert_tokens_to_ids("<|im_end|>")

    saved_rng = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        audio_config = AudioLLMConfig(
            encoder=_encoder_config(),
            adapter=AdapterConfig(enc_out_dim=64, llm_embed_dim=llm_hidden),
            prompt_num=25,
            task_num=20,
            num_states=4,
            chat_template=CHAT_TEMPLATE,
            eod_id=im_end,
        )
        audio = AudioLLM(audio_config, llm_hidden).eval()
        with torch.no_grad():
            # A random head would answer or ignore at random; leaning to "listen" leaves the end of
            # a turn to the server's silence fallback, which is predictable. Tests that need the
            # head to fire set this bias themselves.
            audio.predictor_head.bias[0] += 4.0
        cmvn = _synthetic_cmvn(seed)
        mean, istd = cmvn.mean_istd()
        audio.encoder.global_cmvn.mean.copy_(torch.from_numpy(mean))
        audio.encoder.global_cmvn.istd.copy_(torch.from_numpy(istd))

        codec = init_unit_gain(CodecDecoder(CodecConfig.tiny(channels=32), latent_dim=32), seed).eval()
        decoder_config = SpeechDecoderConfig(
            hidden_size=llm_hidden // 4,
            codec_vocab=codec.config.n_codes,
            num_heads=2,
            intermediate_size=32,
            num_blocks=4,
        )
        decoder = SpeechDecoder(decoder_config).eval()
        with torch.no_grad():
            # A random decoder almost never picks EOS; this bias ends a segment after about
            # 40 tokens (1 s of speech), measured under greedy decoding.
            decoder.out_fnn.bias[decoder_config.eos] += 0.8
    finally:
        torch.random.set_rng_state(saved_rng)
    save_freeze_omni(
        paths.model_path, audio=audio, cmvn=cmvn, decoder=decoder, codec=codec, server=ServerConfig()
    )
    log.info("wrote tiny Freeze-Omni to %s and its LLM to %s", paths.model_path, paths.llm_path)
    return paths
