"""`FREEZE_OMNI_TORCH_THREADS`: the thread count is a setting, applied by the server and the CLI."""

from __future__ import annotations

import pytest
import torch

from app.config import Settings
from app.model import set_torch_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_default_is_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FREEZE_OMNI_TORCH_THREADS", raising=False)
    assert Settings().torch_threads == 1
    monkeypatch.setenv("FREEZE_OMNI_TORCH_THREADS", "3")
    assert Settings().torch_threads == 3


def test_set_torch_threads_applies_the_count(restore_threads) -> None:
    assert set_torch_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert set_torch_threads(2) == 2
    assert set_torch_threads(0) == 2  # 0 leaves the pool as it is
    with pytest.raises(ValueError, match="0 .* or more"):
        set_torch_threads(-1)
