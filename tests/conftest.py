"""Shared fixtures: tiny checkpoints made here, once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.model.tiny_llm import write_tiny_qwen2


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny Qwen2 folder with a local tokenizer."""
    return write_tiny_qwen2(tmp_path_factory.mktemp("tiny_qwen2"))
