"""Token sampling rules of the published model, one row at a time with the row's own generator.

Each session owns a `torch.Generator`, so batching sessions together never changes what any one of
them samples.
"""

from __future__ import annotations

import torch

from app.model.llm.sampling_settings import LLMSampling


def sample_llm_token(logits: torch.Tensor, settings: LLMSampling, generator: torch.Generator | None) -> int:
    """Temperature, softmax, top-k renormalised, top-p (always keeping the best), one draw.

    The published order is kept: top-k then top-p over the renormalised top-k probabilities.
    """
    logits = logits.float()
    if settings.greedy:
        return int(logits.argmax())
    probs = torch.softmax(logits / max(settings.temperature, 1e-5), dim=-1)
    k = min(settings.top_k, probs.shape[-1]) if settings.top_k > 0 else probs.shape[-1]
    top_probs, top_ids = probs.topk(k)
    top_probs = top_probs / top_probs.sum()
    cumulative = top_probs.cumsum(-1)
    keep = cumulative - top_probs < settings.top_p
    keep[0] = True
    top_probs = torch.where(keep, top_probs, torch.zeros_like(top_probs))
    top_probs = top_probs / top_probs.sum()
    choice = torch.multinomial(top_probs.cpu(), 1, generator=generator)
    return int(top_ids[int(choice)])


def sample_top_k(
    logits: torch.Tensor, k: int, generator: torch.Generator | None, greedy: bool = False
) -> int:
    """The speech decoder's rule: softmax, keep the k best, renormalise, draw. No temperature."""
    logits = logits.float()
    if greedy or k <= 1:
        return int(logits.argmax())
    probs = torch.softmax(logits, dim=-1)
    top_probs, top_ids = probs.topk(min(k, probs.shape[-1]))
    choice = torch.multinomial((top_probs / top_probs.sum()).cpu(), 1, generator=generator)
    return int(top_ids[int(choice)])
