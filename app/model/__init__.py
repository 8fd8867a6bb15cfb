"""The Freeze-Omni model: PyTorch modules, checkpoint I/O, the offline pipeline. No asyncio, no sockets.

Grouped by the stage each file serves:

    speech_in/      fbank front end, CMVN, streaming encoder, adapter, the audio LLM module
    llm/            Qwen2 runtime, slot KV cache, shared decoder layers, sampling, duplex rules
    speech_out/     speech decoder, text segmentation, codec, streaming codec decoding
    checkpoint_io/  weight files, the published layout, where the default model lives
    fixtures/       the tiny random model (tests, `make-tiny`)
    pipeline.py     the offline turn; turn_parts.py: the turn pieces the engine shares
    wav.py          WAV files in and out; threads.py: torch's CPU thread count

The rest of the app imports from here only: `from app.model import FreezeOmni, load_freeze_omni`.
Names are resolved on first use (PEP 562), so importing one light name (the CLI's choices) does
not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# Where each public name lives, by module (relative to this package).
_PUBLIC: dict[str, tuple[str, ...]] = {
    "checkpoint_io.layout": ("FreezeOmni", "load_freeze_omni", "resolve_dtype", "save_freeze_omni"),
    "checkpoint_io.weights": ("CheckpointError",),
    "checkpoint_io.defaults": ("TRAINED_MODEL_ROOT", "ensure_default_model"),
    "fixtures.tiny": ("TinyPaths", "make_tiny"),
    "audio_constants": ("CHUNK_SAMPLES", "CHUNK_SECONDS", "INPUT_RATE", "OUTPUT_RATE"),
    "pipeline": (
        "InferOptions",
        "OfflinePipeline",
        "TurnResult",
        "pad_to_chunks",
    ),
    "turn_parts": (
        "IncrementalDetokenizer",
        "answer_start_embeds",
        "instructions_embeds",
        "segment_condition",
        "system_prefill_embeds",
        "text_turn_embeds",
        "turn_opening_embeds",
    ),
    "speech_in.frontend": ("FbankConfig", "StreamingFbank"),
    "speech_in.encoder": ("EncoderState",),
    "llm.duplex": ("ListenState", "decide_state"),
    "llm.kv_cache": ("SlotKVCache",),
    "llm.linear_weights": ("LINEAR_WEIGHTS", "LinearWeights"),
    "llm.qwen2": ("LLMRow",),
    "llm.sampling": ("sample_llm_token", "sample_top_k"),
    "llm.sampling_settings": ("LLMSampling",),
    "speech_out.speech_decoder": ("SegmentInput",),
    "speech_out.text_segments": (
        "SEGMENTATIONS",
        "SERVER_SEGMENTATION",
        "Segment",
        "Segmenter",
        "post_process",
    ),
    "speech_out.codec": ("CodecDecoder",),
    "speech_out.codec_stream": ("CodecChunker", "DecodeWindow", "decode_windows"),
    "threads": ("set_torch_threads",),
    "wav": ("WavError", "read_wav", "read_wav_bytes", "resample", "wav_bytes", "write_wav"),
}
_MODULE_OF = {name: module for module, names in _PUBLIC.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
