"""LLM sampling settings, kept free of torch so the CLI's `--help` and the settings can read the defaults."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LLMSampling:
    """LLM sampling settings; server defaults of the published model (top_p 0.8, top_k 20, T 0.8).

    These defaults are the one source: `Settings` and the `infer` command take theirs from here.
    """

    temperature: float = 0.8
    top_k: int = 20
    top_p: float = 0.8
    greedy: bool = False
