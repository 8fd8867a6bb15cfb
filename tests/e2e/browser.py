"""Debian's Chromium under Playwright, with a WAV as the microphone: shared by the browser tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
FAKE_MIC_RATE = 48000  # Chromium's fake capture device runs at 48 kHz

_FLAGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required",
    "--no-sandbox",
    "--disable-gpu",
    # Without these Chromium keeps calling home, and this machine's network refuses it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def unavailable(reason: str) -> None:
    """Skip when the browser is missing, except in CI (.ci/run installs it: there it is a failure)."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so the browser tests must run)")
    pytest.skip(reason)


@contextmanager
def chromium_with_mic(mic_wav: Path) -> Iterator[object]:
    """Headless Chromium whose microphone plays `mic_wav` (16-bit, FAKE_MIC_RATE) in a loop."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright package is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=[*_FLAGS, f"--use-file-for-fake-audio-capture={mic_wav}"]
        )
        try:
            yield browser
        finally:
            browser.close()


def wait_connected(page, timeout_ms: int = 20_000) -> None:
    """Until the page says it is connected."""
    page.wait_for_function("document.body.classList.contains('connected')", timeout=timeout_ms)
    page.wait_for_function(
        "document.querySelector('#notice').textContent.startsWith('Connected.')", timeout=timeout_ms
    )
