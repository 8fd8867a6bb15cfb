"""Reliability fixtures: a live server of its own (tests here patch server code for one victim session)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import LiveServer
from tests.routes.conftest import SHORT_ANSWER_TOKENS


@pytest.fixture(scope="module")
def fault_server(start_server: Callable[..., LiveServer]) -> LiveServer:
    """Short greedy answers; room for a victim and a bystander."""
    return start_server(max_answer_tokens=SHORT_ANSWER_TOKENS, top_k=1)
