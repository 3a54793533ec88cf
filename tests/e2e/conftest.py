"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from .cdp import Chromium


@pytest.fixture
async def chromium(tmp_path, netns):
    """Headless Chromium (fake camera and microphone), confined to loopback; nothing left behind."""
    browser = Chromium(tmp_path / "chromium")
    await browser.start()
    try:
        yield browser
    finally:
        await browser.close()
        assert browser.processes() == [], "chromium left processes behind"
