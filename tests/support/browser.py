"""Headless Chromium (Debian's package) driven by Playwright, for playback tests.

Playwright's own browser download cannot run here (and is not wanted): it
drives /usr/bin/chromium through `executable_path`. The flags keep Chromium
off the network it cannot reach anyway and let media play without a user
gesture.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator

from playwright.sync_api import Browser, sync_playwright

CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
    "--mute-audio",
]


def chromium_path() -> str:
    """The Debian Chromium; a missing one is an error (tests/run installs it), never a skip."""
    path = shutil.which("chromium")
    if path is None:
        raise RuntimeError("chromium is not installed: run tests/run, which installs Debian's chromium")
    return path


@contextlib.contextmanager
def chromium() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
