"""Small helpers for the futures callers wait on: set once, never on a waiter that has gone."""

from __future__ import annotations

import asyncio
from typing import Any


def resolve(future: asyncio.Future, result: Any) -> None:
    """Set a result unless the waiter has gone (cancelled) or it was already set."""
    if not future.done():
        future.set_result(result)


def reject(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)


def copy_future(source: asyncio.Future, target: asyncio.Future) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
    elif source.exception() is not None:
        target.set_exception(source.exception())
    else:
        target.set_result(source.result())
