"""The speech codec's decoder: TiCodec-variant codebook lookup plus a HiFiGAN-V1 generator.

Token ids (B, T) from the speech decoder become a (B, T * samples_per_token) waveform at
`sampling_rate` (published: 600 samples per token at 24 kHz, 40 tokens/s). A fixed set of eight
"global" tokens, looked up in their own small codebooks, gives the one style vector the published
model ever uses: the system has a single voice.

Parameter names follow the published `codec/final.pt` (`generator.conv_pre`, `generator.ups.i`,
`generator.resblocks.i.convs1.j`, `quantizer.quantizer_modules.0.embedding`, ...), whose convs carry
weight norm as `weight_g`/`weight_v`; `load_codec_state_dict` folds those into plain weights. The
unused codec encoder is never built.

The latent width (codebook vectors, the generator's first conv input) is not a model.json key: the
published codec has it at 512 whatever `upsample_initial_channel` says, so `load_codec` reads it
from the checkpoint's codebook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from app.model.audio_constants import OUTPUT_RATE
from app.model.checkpoint_io.weights import (
    MODEL_WRAPPER_KEY,
    CheckpointError,
    WeightSet,
    load_state_dict_checked,
    read_torch_checkpoint,
    unwrap_model_key,
)

RESBLOCK_SLOPE = 0.1
# The published generator uses this slope before conv_post too; a model.json may say otherwise.
PUBLISHED_FINAL_SLOPE = RESBLOCK_SLOPE
PUBLISHED_LATENT_DIM = 512
CONFIG_FILE = "model.json"
CHECKPOINT_FILE = "final.pt"

# Keys of the published model.json that only training reads (mel loss, optimiser); a fresh config
# writes these placeholders so the file has the published shape. Loading keeps what the file says.
_TRAINING_ONLY_DEFAULTS: dict[str, Any] = {
    "num_gpus": 0,
    "batch_size": 16,
    "learning_rate": 0.0002,
    "adam_b1": 0.5,
    "adam_b2": 0.9,
    "lr_decay": 0.999,
    "seed": 1234,
    "segment_size": 24000,
    "num_mels": 80,
    "num_freq": 1025,
    "n_fft": 1024,
    "hop_size": 240,
    "win_size": 1024,
    "fmin": 0,
    "fmax": 8000,
    "fmax_for_loss": None,
    "num_workers": 4,
}


def _default(value: Any) -> Any:
    return field(default_factory=lambda: json.loads(json.dumps(value)))


@dataclass
class CodecConfig:
    """Hyper-parameters of `codec/model.json`; every dimension of the model comes from here.

    Unknown keys (the training-only ones: `num_mels`, `n_fft`, `learning_rate`, ...) are kept in
    `extra` and written back by `to_json`, never read. `residul_layer` keeps the published spelling.

    `final_leaky_relu_slope` is ours, not a published key: the slope of the LeakyReLU before the
    generator's `conv_post`. Absent, it is the published 0.1 (the slope used everywhere in the
    generator). The embedded trained model (models/trained) was trained with 0.01 and its
    model.json says so, which keeps its output unchanged.
    """

    resblock: str = "1"
    upsample_rates: list[int] = _default([8, 5, 5, 3])
    upsample_kernel_sizes: list[int] = _default([16, 11, 11, 5])
    upsample_initial_channel: int = 512
    resblock_kernel_sizes: list[int] = _default([3, 7, 11])
    resblock_dilation_sizes: list[list[int]] = _default([[1, 3, 5], [1, 3, 5], [1, 3, 5]])
    sampling_rate: int = OUTPUT_RATE
    n_code_groups: int = 1
    residul_layer: int = 1
    n_codes: int = 1024
    global_code_num: int = 8
    global_feature_conv: list[int] = _default([128, 64, 128, 3, 1])
    global_tokens: list[int] = _default([473, 975, 419, 219, 565, 121, 550, 616])
    final_leaky_relu_slope: float = PUBLISHED_FINAL_SLOPE
    extra: dict[str, Any] = _default(_TRAINING_ONLY_DEFAULTS)

    def __post_init__(self) -> None:
        self._validate()

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> CodecConfig:
        """Build from the parsed `model.json`, keeping unknown keys in `extra`."""
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    @classmethod
    def from_file(cls, path: str | Path) -> CodecConfig:
        """Read a `model.json` file."""
        return cls.from_json(json.loads(Path(path).read_text()))

    def to_json(self) -> dict[str, Any]:
        """The complete `model.json` content: model keys plus the kept training-only keys."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        return json.loads(json.dumps({**out, **self.extra}))

    @classmethod
    def tiny(cls, channels: int = 32, n_codes: int = 1024) -> CodecConfig:
        """A small config with the published timing (600 samples per token at 24 kHz).

        The global vector is as wide as the second upsampling stage's output, `channels // 4`, split
        over the published eight global codebooks, so `channels` must be a multiple of 32.
        """
        global_dim = channels // 4
        published = cls.__dataclass_fields__["global_tokens"].default_factory()
        return cls(
            upsample_initial_channel=channels,
            n_codes=n_codes,
            global_feature_conv=[global_dim, max(1, global_dim // 2), global_dim, 3, 1],
            global_tokens=[t % n_codes for t in published],
        )

    @property
    def samples_per_token(self) -> int:
        """Output samples per codec token: the product of the upsampling rates."""
        return math.prod(self.upsample_rates)

    @property
    def global_dim(self) -> int:
        """Width of the global style vector (the global encoder's output channels)."""
        return self.global_feature_conv[2]

    def stage_channels(self, stage: int) -> int:
        """Channels after upsampling stage `stage` (0-based)."""
        return self.upsample_initial_channel // 2 ** (stage + 1)

    @property
    def global_stage(self) -> int:
        """The upsampling stage after which the global vector is added: the one as wide as it.

        The published code names the stage by index (the second); with the published widths
        (512 -> 256 -> 128 -> ...) and a 128-wide vector both rules pick the same stage.
        """
        for stage in range(len(self.upsample_rates)):
            if self.stage_channels(stage) == self.global_dim:
                return stage
        raise ValueError(f"no upsampling stage has {self.global_dim} channels for the global vector")

    def _validate(self) -> None:
        if self.resblock != "1":
            raise ValueError(f"only resblock '1' (HiFiGAN ResBlock1) is supported, got {self.resblock!r}")
        if self.n_code_groups != 1 or self.residul_layer != 1:
            raise ValueError("only a single codebook (n_code_groups 1, residul_layer 1) is supported")
        if len(self.upsample_rates) != len(self.upsample_kernel_sizes):
            raise ValueError("upsample_rates and upsample_kernel_sizes differ in length")
        for u, k in zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True):
            # (k - u) even makes ConvTranspose1d output exactly u samples per input sample.
            if k < u or (k - u) % 2:
                raise ValueError(f"upsample kernel {k} with rate {u} would not give exactly {u}x samples")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must halve cleanly at every stage")
        if len(self.resblock_kernel_sizes) != len(self.resblock_dilation_sizes):
            raise ValueError("resblock_kernel_sizes and resblock_dilation_sizes differ in length")
        if any(k % 2 == 0 for k in self.resblock_kernel_sizes):
            raise ValueError("resblock kernels must be odd for 'same' padding")
        if len(self.global_tokens) != self.global_code_num:
            raise ValueError(f"{len(self.global_tokens)} global_tokens for {self.global_code_num} codebooks")
        if self.global_dim % self.global_code_num:
            raise ValueError("the global vector does not split evenly over the global codebooks")
        if not all(0 <= t < self.n_codes for t in self.global_tokens):
            raise ValueError("a global token is outside the codebook")
        if not 0 <= self.final_leaky_relu_slope <= 1:
            raise ValueError(f"final_leaky_relu_slope {self.final_leaky_relu_slope} is not in [0, 1]")
        _ = self.global_stage


class ResBlock1(nn.Module):
    """HiFiGAN ResBlock1: per dilation, leaky -> dilated conv -> leaky -> conv, plus the input."""

    def __init__(self, channels: int, kernel_size: int, dilations: Sequence[int]) -> None:
        super().__init__()
        self.convs1 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2) for _ in dilations
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv1, conv2 in zip(self.convs1, self.convs2, strict=True):
            xt = conv1(F.leaky_relu(x, RESBLOCK_SLOPE))
            xt = conv2(F.leaky_relu(xt, RESBLOCK_SLOPE))
            x = xt + x
        return x


class CodecGenerator(nn.Module):
    """HiFiGAN-V1 generator with the global style vector added after one upsampling stage.

    Kept as published: each stage averages its resblocks' outputs; the style vector is added,
    broadcast over time, right after the stage as wide as it (the second of four); the last
    activation before `conv_post` is a LeakyReLU with the same 0.1 slope as everywhere else
    (`config.final_leaky_relu_slope`, which a model.json may change). `latent_dim` is the
    codebook's width: 512 in the published codec, whatever `upsample_initial_channel` is.
    """

    def __init__(self, config: CodecConfig, latent_dim: int = PUBLISHED_LATENT_DIM) -> None:
        super().__init__()
        c0 = config.upsample_initial_channel
        self.num_kernels = len(config.resblock_kernel_sizes)
        self.global_stage = config.global_stage
        self.final_slope = config.final_leaky_relu_slope
        self.conv_pre = nn.Conv1d(latent_dim, c0, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ConvTranspose1d(c0 // 2**i, c0 // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(config.upsample_rates, config.upsample_kernel_sizes, strict=True))
        )
        self.resblocks = nn.ModuleList(
            ResBlock1(config.stage_channels(i), k, d)
            for i in range(len(self.ups))
            for k, d in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = nn.Conv1d(config.stage_channels(len(self.ups) - 1), 1, 7, padding=3)

    def forward(self, latent: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """(B, latent_dim, T) latent and (G,) or (B, G) style -> (B, 1, T * samples_per_token)."""
        x = self.conv_pre(latent)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, RESBLOCK_SLOPE))
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            summed = blocks[0](x)
            for block in blocks[1:]:
                summed = summed + block(x)
            x = summed / self.num_kernels
            if i == self.global_stage:
                x = x + style.reshape(-1, style.shape[-1], 1)
        return torch.tanh(self.conv_post(F.leaky_relu(x, self.final_slope)))


class _Codebook(nn.Module):
    """One codebook; a module of its own so parameter names match `quantizer_modules.i.embedding`."""

    def __init__(self, n_codes: int, dim: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n_codes, dim)


class CodecQuantizer(nn.Module):
    """The decode side of the quantizer: the token codebook and the global-token codebooks."""

    def __init__(self, config: CodecConfig, latent_dim: int = PUBLISHED_LATENT_DIM) -> None:
        super().__init__()
        self.quantizer_modules = nn.ModuleList([_Codebook(config.n_codes, latent_dim)])
        global_part = config.global_dim // config.global_code_num
        self.quantizer_modules_globaltokens = nn.ModuleList(
            _Codebook(config.n_codes, global_part) for _ in range(config.global_code_num)
        )

    def lookup(self, token_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, latent_dim, T) codebook vectors."""
        return self.quantizer_modules[0].embedding(token_ids).transpose(1, 2)

    def global_vector(self, global_tokens: Sequence[int]) -> torch.Tensor:
        """Concatenate global token k's vector from global codebook k, for each k: (global_dim,)."""
        codebooks = self.quantizer_modules_globaltokens
        return torch.cat(
            [book.embedding.weight[token] for book, token in zip(codebooks, global_tokens, strict=True)]
        )


class CodecDecoder(nn.Module):
    """Codec token ids (B, T) -> waveform (B, T * samples_per_token) in the single published voice.

    Runs in its parameters' dtype with autocast turned off, so an fp32 codec stays fp32 inside a
    bf16 autocast region. The published code ran the codec under bf16 autocast; `load_codec` takes
    the dtype (`resolve_codec_dtype`: bf16 where the hardware computes it natively, as it is cheaper
    there, else fp32). `latent_dim` is the codebook's width (`load_codec` takes it from the checkpoint).
    """

    def __init__(self, config: CodecConfig, latent_dim: int = PUBLISHED_LATENT_DIM) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = latent_dim
        # A plain tuple, not a buffer, so the model can be built on the meta device and loaded
        # without anything outside the checkpoint to restore.
        self.global_tokens = tuple(config.global_tokens)
        self.quantizer = CodecQuantizer(config, latent_dim)
        self.generator = CodecGenerator(config, latent_dim)

    @property
    def samples_per_token(self) -> int:
        """Output samples per token."""
        return self.config.samples_per_token

    def style_vector(self) -> torch.Tensor:
        """The fixed global style vector, (global_dim,)."""
        return self.quantizer.global_vector(self.global_tokens)

    def forward(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Decode (B, T) token ids to a (B, T * samples_per_token) waveform in [-1, 1]."""
        if token_ids.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(token_ids.shape)}")
        with torch.autocast(device_type=token_ids.device.type, enabled=False):
            latent = self.quantizer.lookup(token_ids)
            return self.generator(latent, self.style_vector()).squeeze(1)


class CodecCheckpointError(CheckpointError, ValueError):
    """A codec checkpoint does not fit the model; the message names each offending key."""


def fold_weight_norm(weight_g: torch.Tensor, weight_v: torch.Tensor) -> torch.Tensor:
    """Fold a weight-norm pair into a plain weight: w = g * v / ||v||.

    The norm runs over every axis of v except the one g keeps (torch's `dim`, default 0; for a
    ConvTranspose1d weight (in, out, k) that is the input-channel axis, as torch does). g of rank 0
    means a norm over the whole tensor.
    """
    if weight_g.dim() == 0:
        kept: int | None = None
    else:
        big = [d for d in range(weight_g.dim()) if weight_g.shape[d] != 1]
        if len(big) > 1 or weight_g.dim() != weight_v.dim():
            raise ValueError(
                f"weight_g {tuple(weight_g.shape)} does not fit weight_v {tuple(weight_v.shape)}"
            )
        kept = big[0] if big else 0
    v = weight_v.float()
    axes = [d for d in range(v.dim()) if d != kept]
    norm = v.pow(2).sum(dim=axes, keepdim=True).sqrt() if axes else v.abs()
    return (v * (weight_g.float() / norm)).to(weight_v.dtype)


_NORM_PAIRS = (
    ("weight_g", "weight_v"),
    ("parametrizations.weight.original0", "parametrizations.weight.original1"),
)


def _split_suffix(key: str, suffix: str) -> str | None:
    """The module prefix (with its trailing dot, or empty) when `key` names `suffix`, else None."""
    if key == suffix:
        return ""
    return key[: -len(suffix)] if key.endswith("." + suffix) else None


def fold_weight_norm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace every weight-norm pair (`weight_g`/`weight_v`, or torch's parametrization
    `original0`/`original1`) with its folded `weight`; other keys pass through."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        for g_suffix, v_suffix in _NORM_PAIRS:
            g_prefix, v_prefix = _split_suffix(key, g_suffix), _split_suffix(key, v_suffix)
            prefix = g_prefix if g_prefix is not None else v_prefix
            if prefix is None:
                continue
            partner = prefix + (v_suffix if g_prefix is not None else g_suffix)
            if partner not in state_dict:
                raise CodecCheckpointError(f"{key} has no matching {partner}")
            if g_prefix is not None:
                out[prefix + "weight"] = fold_weight_norm(value, state_dict[partner])
            break
        else:
            out[key] = value
    return out


def codec_state_dict(model: CodecDecoder, weight_norm: bool = False) -> dict[str, dict[str, torch.Tensor]]:
    """The model's weights in the published nested layout `{generator, quantizer, encoder}`.

    With `weight_norm`, generator weights are written split as `weight_g`/`weight_v` (norm kept on
    axis 0), the form the published checkpoint has. The encoder is not part of our model: `{}`.
    """
    nested: dict[str, dict[str, torch.Tensor]] = {"generator": {}, "quantizer": {}, "encoder": {}}
    for key, value in model.state_dict().items():
        section, _, name = key.partition(".")
        value = value.detach().clone()
        if weight_norm and section == "generator" and name.endswith(".weight"):
            stem = name[: -len(".weight")]
            axes = list(range(1, value.dim()))
            nested[section][stem + ".weight_g"] = value.pow(2).sum(dim=axes, keepdim=True).sqrt()
            nested[section][stem + ".weight_v"] = value
        else:
            nested[section][name] = value
    return nested


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


CODEC_SECTIONS = ("generator", "quantizer")
UNUSED_CODEC_SECTIONS = ("encoder",)  # published, but decoding never uses it


def load_codec_state_dict(
    model: CodecDecoder,
    checkpoint: Mapping[str, Any],
    source: str = "codec checkpoint",
    *,
    strict: bool = True,
) -> None:
    """Load a `{generator, quantizer[, encoder]}` checkpoint, folding weight norm.

    The encoder section is part of the published layout and ignored (decoding never uses it).
    A missing or wrongly-shaped tensor raises a `CheckpointError` naming the key, `source` and the
    shapes. Anything else (discriminators, optimizer state, step counters, unused tensors, a
    `model` wrapper's siblings) is an error with `strict`, else skipped and logged; without
    `strict` a data-parallel `module.` prefix is removed. A model built on the meta device is given
    the checkpoint's tensors.
    """
    weights = WeightSet()
    checkpoint = unwrap_model_key(checkpoint, source, weights)
    if not isinstance(checkpoint, Mapping):
        raise CodecCheckpointError(f"{source} holds a {type(checkpoint).__name__}, not a dict of sections")
    for section in CODEC_SECTIONS:
        if not isinstance(checkpoint.get(section), Mapping):
            raise CodecCheckpointError(f"{source} has no '{section}' section (expected generator, quantizer)")
    for key, value in checkpoint.items():
        if key in CODEC_SECTIONS:
            section = WeightSet()
            section.add_checkpoint(value, source, strict=strict)
            weights.add(fold_weight_norm_state_dict(section.tensors), source, prefix=f"{key}.")
            weights.skipped += [replace(e, name=f"{key}.{e.name}") for e in section.skipped]
            weights.prefix_stripped.update(section.prefix_stripped)
        elif key not in UNUSED_CODEC_SECTIONS:
            weights.skip(str(key), value, source)
    load_state_dict_checked(model, weights, strict=strict, device="cpu", dtype=torch.float32)


_LATENT_KEYS = (
    ("quantizer", "quantizer_modules.0.embedding.weight"),
    ("generator", "conv_pre.weight"),
    ("generator", "conv_pre.weight_v"),
)


def checkpoint_latent_dim(checkpoint: Any) -> int:
    """The latent width a codec checkpoint holds: its codebook's (else conv_pre's input) width.

    The published codec's is 512 while `upsample_initial_channel` may differ; a checkpoint with
    neither tensor gets the published 512 (and then fails to load, naming what is missing).
    """
    content = checkpoint
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get(MODEL_WRAPPER_KEY), Mapping):
        content = checkpoint[MODEL_WRAPPER_KEY]
    if not isinstance(content, Mapping):
        return PUBLISHED_LATENT_DIM
    for section, name in _LATENT_KEYS:
        tensors = content.get(section)
        if not isinstance(tensors, Mapping):
            continue
        for key, value in tensors.items():
            if (
                (key == name or key.endswith("." + name))
                and isinstance(value, torch.Tensor)
                and value.dim() >= 2
            ):
                return int(value.shape[1])
    return PUBLISHED_LATENT_DIM


CODEC_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}
# CPU flags of native bf16 dot products (AVX512-BF16, AMX): there a bf16 codec costs about 0.7x fp32.
NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 dot products natively (read from /proc/cpuinfo; False elsewhere)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)


def resolve_codec_dtype(name: str | torch.dtype, device: torch.device | str) -> torch.dtype:
    """The codec's dtype: `auto` is bf16 on CUDA and on a CPU with native bf16, fp32 elsewhere.

    bf16 is how the published code ran the codec (autocast); on this project's CPU (AVX512-BF16) a
    60-token window took 34 ms against 48 ms in fp32, the waveforms 41 dB apart (SNR of the difference).
    """
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        device = torch.device(device)
        native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
        return torch.bfloat16 if native else torch.float32
    if name not in CODEC_DTYPES:
        raise ValueError(f"unknown codec dtype {name!r}; use auto, float32 or bfloat16")
    return CODEC_DTYPES[name]


def load_codec(
    codec_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    strict: bool = False,
    dtype: str | torch.dtype = torch.float32,
) -> CodecDecoder:
    """Build the codec from `codec_dir/model.json`, load `codec_dir/final.pt`, in `dtype` (see
    `resolve_codec_dtype`; fp32 unless asked), eval mode."""
    codec_dir = Path(codec_dir)
    config_path, weights_path = codec_dir / CONFIG_FILE, codec_dir / CHECKPOINT_FILE
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the codec needs model.json and final.pt")
    checkpoint = read_torch_checkpoint(weights_path)
    model = CodecDecoder(CodecConfig.from_file(config_path), latent_dim=checkpoint_latent_dim(checkpoint))
    load_codec_state_dict(model, checkpoint, source=str(weights_path), strict=strict)
    return model.to(device=device, dtype=resolve_codec_dtype(dtype, device)).eval()


def save_codec(model: CodecDecoder, codec_dir: str | Path, weight_norm: bool = True) -> None:
    """Write `model.json` and `final.pt` in the published layout (weight norm split by default)."""
    codec_dir = Path(codec_dir)
    codec_dir.mkdir(parents=True, exist_ok=True)
    (codec_dir / CONFIG_FILE).write_text(json.dumps(model.config.to_json(), indent=2))
    torch.save(codec_state_dict(model, weight_norm=weight_norm), codec_dir / CHECKPOINT_FILE)


def init_unit_gain(model: CodecDecoder, seed: int = 0) -> CodecDecoder:
    """Re-draw every conv with unit gain and zero bias, so random tokens give audio-like output.

    PyTorch's default init makes a random generator's output nearly constant (std ~3e-4): a tiny
    random codec would be silent, and tests comparing its output would pass trivially.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv1d | nn.ConvTranspose1d):
                weight = module.weight
                if isinstance(module, nn.Conv1d):
                    fan_in = weight.shape[1] * weight.shape[2]
                else:
                    fan_in = weight.shape[0] * weight.shape[2] / module.stride[0]
                weight.copy_(torch.randn(weight.shape, generator=generator) / math.sqrt(fan_in))
                if module.bias is not None:
                    module.bias.zero_()
    return model
