"""The names of the LLM's linear-weight forms (`llm_weights`), apart from torch so settings and the CLI
can read them cheaply; `compact_linear.py` builds them."""

from __future__ import annotations

from typing import Literal, get_args

# `dtype`: the linear layers as loaded, in the model's dtype (fp32 on a CPU by default).
LinearWeights = Literal["auto", "dtype", "bfloat16", "int8"]
LINEAR_WEIGHTS: tuple[str, ...] = get_args(LinearWeights)
