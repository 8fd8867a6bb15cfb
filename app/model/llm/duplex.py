"""The duplex side of the audio LLM: the chat template pieces, prompt embeddings and state head.

Quirks of the published model kept on purpose:
- the `<|im_end|>` that closes the system prompt or an assistant turn is never fed when sampled;
  it is prepended at the next turn opening, so the KV stream stays well formed;
- the turn opening is [<|im_end|>, "\\n<|im_start|>user\\n", 25 prompt embeddings, 2 audio vectors];
- the state rule drops the 4th logit, softmaxes the first 3 and checks state 2 before state 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

AUDIO_PLACEHOLDER = "<audio>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


class ListenState(StrEnum):
    """What the state head decides after a listen chunk."""

    LISTEN = "cl"  # state 0: keep listening
    ANSWER = "ss"  # state 1: the user's turn is over, start speaking
    IGNORE = "el"  # state 2: stop listening, do not answer


@dataclass(frozen=True)
class StateDecision:
    """The decision and the probabilities of states 0..2 it came from."""

    state: ListenState
    probs: tuple[float, float, float]


def decide_state(logits: torch.Tensor, threshold: float = 0.5) -> StateDecision:
    """Apply the published rule to one chunk's 4 state logits."""
    probs = torch.softmax(logits.float()[:3], dim=-1)
    p = (float(probs[0]), float(probs[1]), float(probs[2]))
    if p[2] > threshold:
        return StateDecision(ListenState.IGNORE, p)
    if p[1] > threshold:
        return StateDecision(ListenState.ANSWER, p)
    return StateDecision(ListenState.LISTEN, p)


@dataclass(frozen=True)
class ChatTemplate:
    """The three text pieces cut from train.yaml's `chat_template`."""

    default_role: str  # e.g. "You are a helpful assistant."
    user_prefix: str  # "\n<|im_start|>user\n"
    assistant_suffix: str  # "<|im_end|>\n<|im_start|>assistant\n"

    @classmethod
    def parse(cls, template: str) -> ChatTemplate:
        system_head = f"{IM_START}system\n"
        if AUDIO_PLACEHOLDER not in template or not template.startswith(system_head):
            raise ValueError(f"chat_template must start with {system_head!r} and hold {AUDIO_PLACEHOLDER!r}")
        before, suffix = template.split(AUDIO_PLACEHOLDER, 1)
        role_block, prefix = before.split(IM_END, 1)
        return cls(default_role=role_block[len(system_head) :], user_prefix=prefix, assistant_suffix=suffix)

    def system_text(self, role: str | None) -> str:
        """What the system prefill feeds: the role without its closing <|im_end|>."""
        return f"{IM_START}system\n{role if role else self.default_role}"


@dataclass(frozen=True)
class PromptTokens:
    """Token ids of the fixed template pieces, tokenised once at load."""

    im_end: int
    user_prefix: list[int]
    assistant_suffix: list[int]

    @property
    def turn_opening(self) -> list[int]:
        return [self.im_end, *self.user_prefix]
