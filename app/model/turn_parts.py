"""Pieces of a spoken turn shared by the offline pipeline and the engine.

They turn model outputs into the next model inputs for one session; neither batching nor
scheduling lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.model.checkpoint_io.layout import FreezeOmni
from app.model.speech_out.speech_decoder import reshape_llm_vectors
from app.model.speech_out.text_segments import Segment, post_process


def system_prefill_embeds(model: FreezeOmni, role: str | None) -> torch.Tensor:
    """The system prompt's embeddings, without the closing <|im_end|> (fed at the next turn)."""
    return model.llm.embed(model.tokenize(model.template.system_text(role)))


def turn_opening_embeds(model: FreezeOmni) -> torch.Tensor:
    """[<|im_end|>, "\\n<|im_start|>user\\n", prompt embeddings]: what precedes a turn's first audio."""
    tokens = model.llm.embed(model.prompt_tokens.turn_opening)
    prompts = model.audio.prompt_embeddings.weight.to(tokens.dtype)
    return torch.cat([tokens, prompts])


def text_turn_embeds(model: FreezeOmni, text: str) -> torch.Tensor:
    """A typed user turn: the same opening without audio prompts, then the text tokens."""
    return model.llm.embed([*model.prompt_tokens.turn_opening, *model.tokenize(text)])


def instructions_embeds(model: FreezeOmni, instructions: str) -> torch.Tensor:
    """A system message inside the conversation (`<|im_end|>`, newline, the system header, the text),
    left open like the system prompt: the next turn's opening closes it."""
    return model.llm.embed(
        [model.prompt_tokens.im_end, *model.tokenize("\n" + model.template.system_text(instructions))]
    )


def answer_start_embeds(model: FreezeOmni) -> torch.Tensor:
    """The assistant header (`<|im_end|>`, newline, `<|im_start|>assistant`, newline): opens the answer."""
    return model.llm.embed(model.prompt_tokens.assistant_suffix)


def segment_condition(model: FreezeOmni, segment: Segment) -> tuple[torch.Tensor, torch.Tensor]:
    """(prefix, text) rows for the speech decoder, both reshaped to its width.

    The prefix is the LLM hidden states of the segment's tokens; the text is the post-processed
    segment re-tokenised and embedded with the LLM's own embedding table (lengths may differ).
    """
    width = model.decoder.config.hidden_size
    hidden = torch.stack([h.to(model.decoder.dtype) for h in segment.hidden_rows])
    text_ids = model.tokenize(post_process(segment.text)) or [model.eod_id]
    text = model.llm.embed(text_ids).to(model.decoder.dtype)
    return reshape_llm_vectors(hidden, width), reshape_llm_vectors(text, width)


@dataclass
class IncrementalDetokenizer:
    """Text pieces of an answer token by token; a partial UTF-8 character waits for its end."""

    tokenizer: object
    ids: list[int] = field(default_factory=list)
    emitted: str = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece = text[len(self.emitted) :] if text.startswith(self.emitted) else ""
        self.emitted = text
        return piece
