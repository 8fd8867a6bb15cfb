"""`training.train_state_head`: its decision rule is the runtime's, and its timing counts are right."""

from __future__ import annotations

import numpy as np
import torch

from app.model.llm.duplex import decide_state
from training.train_state_head import KINDS, figures, head_states


def test_the_head_states_follow_the_runtime_rule() -> None:
    generator = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(4, 16, generator=generator), torch.randn(4, generator=generator)
    hidden = torch.randn(300, 16, generator=generator).numpy()
    states = head_states(weight, bias, hidden)
    logits = torch.from_numpy(hidden) @ weight.T + bias
    expected = [("cl", "ss", "el").index(decide_state(row).state.value) for row in logits]
    assert states.tolist() == expected
    assert len(set(expected)) == 3  # the check covered every state


def test_figures_count_when_each_turn_is_first_answered() -> None:
    # Three questions (answered on time, early, never) and a noise that gets answered late.
    offsets = [np.arange(-3, 4)] * 4
    states = [
        np.array([0, 0, 0, 0, 1, 1, 1]),  # first answer 1 chunk after the end
        np.array([0, 1, 0, 0, 0, 1, 1]),  # inside the speech
        np.zeros(7, dtype=np.int64),
        np.array([0, 0, 0, 2, 2, 2, 1]),
    ]
    kinds = [KINDS.index("question")] * 3 + [KINDS.index("ignorable")]
    data = {
        "offset": np.concatenate(offsets),
        "example": np.repeat(np.arange(4), 7),
        "kind": np.repeat(kinds, 7),
    }
    shuffled = np.random.default_rng(0).permutation(28)  # order must not matter
    result = figures(np.concatenate(states)[shuffled], {k: v[shuffled] for k, v in data.items()})
    assert result["question"] == {"count": 3, "within_2": 1, "early": 1, "late": 0, "never": 1, "answered": 2}
    assert result["ignorable"] == {
        "count": 1,
        "within_2": 0,
        "early": 0,
        "late": 1,
        "never": 0,
        "answered": 1,
    }
