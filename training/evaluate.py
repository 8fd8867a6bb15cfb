"""Measuring a stage with the runtime's own code: the offline pipeline's listen and answer loops.

The audio modules under training are wrapped, without the speech side, in the runtime's
`FreezeOmni` record, so `OfflinePipeline` listens and answers exactly as `infer` will.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from app.model.checkpoint_io.layout import FreezeOmni
from app.model.llm.duplex import IM_END, ChatTemplate, PromptTokens
from app.model.llm.qwen2 import LLMRow, load_qwen2
from app.model.pipeline import InferOptions, OfflinePipeline
from app.model.speech_in.audio_llm import AudioLLM
from app.model.turn_parts import system_prefill_embeds


def listening_model(audio: AudioLLM, llm_folder: Path) -> FreezeOmni:
    """A FreezeOmni holding a frozen copy of `audio` and the LLM; no speech decoder or codec."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(llm_folder))
    llm = load_qwen2(llm_folder)
    template = ChatTemplate.parse(audio.config.chat_template)
    encode = lambda text: list(tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    prompt_tokens = PromptTokens(
        im_end=tokenizer.convert_tokens_to_ids(IM_END),
        user_prefix=encode(template.user_prefix),
        assistant_suffix=encode(template.assistant_suffix),
    )
    frozen = copy.deepcopy(audio).eval()
    return FreezeOmni(
        frozen, llm, tokenizer, None, None, None, template, prompt_tokens, torch.device("cpu"), torch.float32
    )  # type: ignore[arg-type]


def listen_and_answer(
    model: FreezeOmni, samples: np.ndarray, max_new_tokens: int = 40
) -> tuple[str, list[str]]:
    """The greedy text answer to a recording and the state decision after each chunk."""
    pipeline = OfflinePipeline(model)
    options = InferOptions.greedy(max_new_tokens=max_new_tokens)
    with torch.inference_mode():
        cache = model.llm.new_cache(num_slots=1, max_len=1024)
        slot = cache.allocate()
        model.llm.forward_rows([LLMRow(slot, system_prefill_embeds(model, None))], cache)
        _, states = pipeline._listen(np.asarray(samples, dtype=np.float32), slot, cache)
        token_ids, _ = pipeline._answer(slot, cache, options, torch.Generator().manual_seed(0))
    return model.tokenizer.decode(token_ids, skip_special_tokens=True), states
