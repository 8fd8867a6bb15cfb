"""Loading and saving the published Freeze-Omni checkpoint layout, plus a Hugging Face Qwen2 folder.

    MODEL_PATH/audiollm/{train.yaml, global_cmvn, final.pt}
    MODEL_PATH/decoder/{model.json, final.pt}
    MODEL_PATH/codec/{model.json, final.pt}
    MODEL_PATH/server.json
    LLM_PATH/{config.json, *.safetensors | pytorch_model*.bin, tokenizer files}

Missing or mis-shaped tensors always fail with a precise message; content the model does not use
(training state, EMA copies, a data-parallel prefix) is skipped and logged unless `strict` (see
`weights.load_state_dict_checked`). CMVN, the configs and server.json are checked the same way in
both modes. Device and dtype are options; the codec has a dtype of its own (`codec_dtype`: fp32 unless
asked; the server asks for `auto`, bf16 where the hardware computes it natively, as the published code
ran it under bf16 autocast). The LLM's linear layers may hold compact weights (`llm_weights`: bf16 or
int8 in place of fp32 on a CPU, `llm/compact_linear.py`; as loaded unless asked, the server asks for `auto`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from app.model.checkpoint_io.weights import (
    CheckpointError,
    WeightSet,
    load_state_dict_checked,
    read_torch_checkpoint,
    unwrap_model_key,
)
from app.model.llm.compact_linear import compact_linears, resolve_linear_weights
from app.model.llm.duplex import IM_END, ChatTemplate, PromptTokens
from app.model.llm.qwen2 import Qwen2Runtime, load_qwen2
from app.model.speech_in.audio_llm import AudioLLM, AudioLLMConfig
from app.model.speech_in.cmvn import CmvnStats
from app.model.speech_out.codec import CodecDecoder, load_codec, resolve_codec_dtype, save_codec
from app.model.speech_out.codec_stream import ServerConfig
from app.model.speech_out.speech_decoder import SpeechDecoder, SpeechDecoderConfig

log = logging.getLogger(__name__)

TRAIN_YAML = "audiollm/train.yaml"
CMVN_FILE = "audiollm/global_cmvn"
AUDIOLLM_WEIGHTS = "audiollm/final.pt"
DECODER_JSON = "decoder/model.json"
DECODER_WEIGHTS = "decoder/final.pt"
CODEC_DIR = "codec"
SERVER_JSON = "server.json"


@dataclass
class FreezeOmni:
    """Every model piece and the fixed text pieces, loaded and ready to run."""

    audio: AudioLLM
    llm: Qwen2Runtime
    tokenizer: Any
    decoder: SpeechDecoder
    codec: CodecDecoder
    server: ServerConfig
    template: ChatTemplate
    prompt_tokens: PromptTokens
    device: torch.device
    dtype: torch.dtype

    @property
    def eod_id(self) -> int:
        return self.prompt_tokens.im_end

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))


@contextmanager
def _timed(what: str) -> Iterator[None]:
    start = time.perf_counter()
    log.info("loading %s ...", what)
    yield
    log.info("loaded %s in %.2f s", what, time.perf_counter() - start)


def _require(path: Path, hint: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {hint}")
    return path


def resolve_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """'auto' means fp32 on CPU and bf16 on accelerators."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name not in table:
        raise ValueError(f"unknown dtype {name!r}; use one of auto, {', '.join(table)}")
    return table[name]


def load_audio_llm(
    model_path: Path, llm_hidden: int, *, device: torch.device, dtype: torch.dtype, strict: bool = False
) -> AudioLLM:
    """Build from train.yaml and load final.pt; CMVN from the checkpoint if there, else the JSON file."""
    train_yaml = _require(model_path / TRAIN_YAML, "--model-path must hold the Freeze-Omni layout")
    config = AudioLLMConfig.from_train_yaml(yaml.safe_load(train_yaml.read_text()))
    with torch.device("meta"):
        audio = AudioLLM(config, llm_hidden)
    path = _require(model_path / AUDIOLLM_WEIGHTS, "the audio LLM weights are missing")
    weights = WeightSet()
    content = unwrap_model_key(read_torch_checkpoint(path), str(path), weights)
    weights.add_checkpoint(content, str(path), strict=strict)
    cmvn_keys = {"encoder.global_cmvn.mean", "encoder.global_cmvn.istd"}
    load_state_dict_checked(audio, weights, strict=strict, device=device, dtype=dtype, optional=cmvn_keys)
    if not cmvn_keys <= set(weights.keys()):
        stats = CmvnStats.from_json(
            _require(model_path / CMVN_FILE, "no CMVN in final.pt nor a global_cmvn file")
        )
        mean, istd = stats.mean_istd()
        audio.encoder.global_cmvn.mean = torch.as_tensor(mean, dtype=torch.float32, device=device)
        audio.encoder.global_cmvn.istd = torch.as_tensor(istd, dtype=torch.float32, device=device)
    # CMVN is applied to raw fbank values; keep it in fp32 whatever the model dtype.
    audio.encoder.global_cmvn.float()
    return audio.eval()


def load_speech_decoder(
    model_path: Path, *, device: torch.device, dtype: torch.dtype, strict: bool = False
) -> SpeechDecoder:
    config = SpeechDecoderConfig.from_file(
        _require(model_path / DECODER_JSON, "the speech decoder config is missing")
    )
    with torch.device("meta"):
        decoder = SpeechDecoder(config)
    path = _require(model_path / DECODER_WEIGHTS, "the speech decoder weights are missing")
    weights = WeightSet()
    # The published loader accepts the state dict bare or under a `model` key.
    content = unwrap_model_key(read_torch_checkpoint(path), str(path), weights)
    weights.add_checkpoint(content, str(path), strict=strict)
    weights.drop_suffix("inv_freq")  # rotary tables some exports carry; we compute them
    load_state_dict_checked(decoder, weights, strict=strict, device=device, dtype=dtype)
    return decoder.eval()


def load_freeze_omni(
    model_path: str | Path,
    llm_path: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    codec_dtype: str | torch.dtype = "float32",
    llm_weights: str = "dtype",
    strict: bool = False,
) -> FreezeOmni:
    """Load every piece, logging what is loaded and how long it took.

    With `strict`, a weight file holding anything the model does not use is an error (the
    published loaders skip such content; so do we by default, with a log line).
    """
    model_path, llm_path = Path(model_path), Path(llm_path)
    device = torch.device(device)
    dtype = resolve_dtype(dtype, device)
    llm_weights = resolve_linear_weights(llm_weights, device, dtype)
    total = time.perf_counter()
    with _timed(f"LLM from {llm_path} ({dtype}, {device}, linear weights {llm_weights})"):
        llm = load_qwen2(llm_path, device=device, dtype=dtype)
        compact_linears(llm, llm_weights)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(llm_path))
    with _timed(f"speech encoder, adapter and state head from {model_path / 'audiollm'}"):
        audio = load_audio_llm(model_path, llm.config.hidden_size, device=device, dtype=dtype, strict=strict)
    with _timed(f"speech decoder from {model_path / 'decoder'}"):
        decoder = load_speech_decoder(model_path, device=device, dtype=dtype, strict=strict)
    if llm.config.hidden_size % decoder.config.hidden_size:
        raise CheckpointError(
            f"LLM hidden size {llm.config.hidden_size} is not a multiple of the speech decoder's "
            f"{decoder.config.hidden_size}: the checkpoint and --llm-path do not belong together"
        )
    codec_dtype = resolve_codec_dtype(codec_dtype, device)
    with _timed(f"codec from {model_path / CODEC_DIR} ({codec_dtype})"):
        codec_dir = _require(model_path / CODEC_DIR, "the codec folder is missing")
        codec = load_codec(codec_dir, device=device, strict=strict, dtype=codec_dtype)
    server = ServerConfig.from_file(_require(model_path / SERVER_JSON, "server.json is missing"))

    template = ChatTemplate.parse(audio.config.chat_template)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if im_end is None or im_end == tokenizer.unk_token_id:
        raise CheckpointError(f"the tokenizer in {llm_path} has no {IM_END} token: not a Qwen chat tokenizer")
    if audio.config.eod_id is not None and audio.config.eod_id != im_end:
        log.warning(
            "train.yaml eod_id %s differs from the tokenizer's %s id %s; using the tokenizer's",
            audio.config.eod_id,
            IM_END,
            im_end,
        )
    encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    prompt_tokens = PromptTokens(
        im_end=im_end,
        user_prefix=encode(template.user_prefix),
        assistant_suffix=encode(template.assistant_suffix),
    )
    log.info("model ready in %.2f s", time.perf_counter() - total)
    return FreezeOmni(audio, llm, tokenizer, decoder, codec, server, template, prompt_tokens, device, dtype)


def save_freeze_omni(
    model_path: str | Path,
    *,
    audio: AudioLLM,
    cmvn: CmvnStats,
    decoder: SpeechDecoder,
    codec: CodecDecoder,
    server: ServerConfig,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the published layout (weights stored in `dtype`)."""
    model_path = Path(model_path)
    for sub in ("audiollm", "decoder", CODEC_DIR):
        (model_path / sub).mkdir(parents=True, exist_ok=True)
    (model_path / TRAIN_YAML).write_text(yaml.safe_dump(audio.config.to_train_yaml(), sort_keys=True))
    cmvn.to_json(model_path / CMVN_FILE)

    def cast(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in state.items()}

    audio_state = cast(audio.state_dict())
    for key in ("encoder.global_cmvn.mean", "encoder.global_cmvn.istd"):
        audio_state[key] = audio.state_dict()[key].float()
    torch.save(audio_state, model_path / AUDIOLLM_WEIGHTS)
    (model_path / DECODER_JSON).write_text(json.dumps(decoder.config.to_model_json(), indent=2))
    torch.save(cast(decoder.state_dict()), model_path / DECODER_WEIGHTS)
    save_codec(codec, model_path / CODEC_DIR)
    (model_path / SERVER_JSON).write_text(json.dumps(server.to_json(), indent=2))
    return model_path
