"""Every recording plays in a real browser: headless Chromium (Debian's) through a real gateway.

Ten-minute 8 kHz mono WAVs in GSM 6.10, G.726, IMA ADPCM, µ-law and PCM,
made here with ffmpeg. Each is opened with its `?inline=1` link, as a user
clicking it would: Chromium shows its media player for the link and the
test drives that element. It must load, report the duration within a
second of the truth, seek to 20 s before the end and play from there.

The control: the same GSM, G.726 and IMA ADPCM files from a gateway with
inline renditions turned off must fail to play (the element reports an
error), which proves these tests would notice if the renditions stopped.

Waits are bounded for liveness only; nothing asserts how fast anything is.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from support.browser import chromium
from support.keys import new_key
from support.ops import metric, scrape
from support.processes import Gateway, running_gateway
from support.recordings import make_audio
from support.storage import FIXED_MTIME

SECONDS = 600
SEEK_BEFORE_END = 20
WAIT_MS = 60_000  # liveness bound per wait
MEDIA_ERR_SRC_NOT_SUPPORTED = 4
NETWORK_NO_SOURCE = 3

RECORDINGS = {
    "gsm.wav": ["-c:a", "gsm_ms"],
    "g726.wav": ["-c:a", "adpcm_g726", "-b:a", "32k"],
    "ima.wav": ["-c:a", "adpcm_ima_wav"],
    "ulaw.wav": ["-c:a", "pcm_mulaw"],
    "pcm.wav": ["-c:a", "pcm_s16le"],
}
NOT_PLAYABLE_AS_STORED = ["gsm.wav", "g726.wav", "ima.wav"]
LONG = "hour-gsm.wav"  # an hour of GSM: its rendition takes a second or two to write, long enough to seek into
LONG_SECONDS = 3600

ELEMENT = "document.querySelector('video, audio')"
STATE = f"""() => {{
    const m = {ELEMENT};
    return m && {{duration: m.duration, time: m.currentTime, error: m.error && m.error.code,
                  ready: m.readyState, network: m.networkState, paused: m.paused, src: m.currentSrc}};
}}"""
# Chromium's player for a link holds the media in a <source> child: a failure to play shows as
# NETWORK_NO_SOURCE on the element (the error event goes to the <source>), not as element.error.
SETTLED = f"""() => {{
    const m = {ELEMENT};
    return !!m && (m.readyState >= 1 || m.error !== null || m.networkState === HTMLMediaElement.NETWORK_NO_SOURCE);
}}"""
# A second element given the same URL as its src reports the decoder's verdict as element.error.
VERDICT = """(src) => new Promise((resolve) => {
    const probe = new Audio();
    probe.onerror = () => resolve(probe.error.code);
    probe.onloadedmetadata = () => resolve(`plays: ${probe.duration} s`);
    probe.src = src;
})"""
SEEK_AND_PLAY = f"(at) => {{ const m = {ELEMENT}; m.currentTime = at; return m.play(); }}"
PLAYED_PAST = f"(at) => {{ const m = {ELEMENT}; return !m.seeking && m.currentTime > at + 1; }}"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("transcode-browser") / "storage"
    for name, codec in RECORDINGS.items():
        make_audio(base / name, SECONDS, codec)
        os.utime(base / name, (FIXED_MTIME, FIXED_MTIME))
    make_audio(base / LONG, LONG_SECONDS, RECORDINGS["gsm.wav"])
    return base


@pytest.fixture(scope="module")
def converting(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("transcode-browser-gateway")
    with running_gateway(root, [new_key()], work, extra_env={"GATEWAY_TRANSCODE_CACHE_DIR": str(work / "cache")}) as gw:
        yield gw


@pytest.fixture(scope="module")
def not_converting(root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("transcode-browser-off")
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(work / "cache"), "GATEWAY_TRANSCODE_INLINE": "false"}
    with running_gateway(root, [new_key()], work, extra_env=env) as gw:
        yield gw


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


def open_player(browser: Browser, url: str) -> tuple[Page, dict]:
    """Open a link as a user would; return the page and its media element's state once it settled."""
    page = browser.new_page()
    page.goto(url, wait_until="commit", timeout=WAIT_MS)
    page.wait_for_function(SETTLED, timeout=WAIT_MS)
    return page, page.evaluate(STATE)


@pytest.mark.parametrize("name", list(RECORDINGS))
def test_each_wav_plays_inline_with_its_duration_and_seeks_near_the_end(
    browser: Browser, converting: Gateway, name: str
) -> None:
    url = converting.link(f"/{name}") + "?inline=1"
    page, state = open_player(browser, url)
    try:
        assert state["error"] is None, state
        assert str(page.evaluate(VERDICT, url)).startswith("plays"), state
        assert abs(state["duration"] - SECONDS) < 1, state
        seek_near_the_end_and_play(page, state["duration"])
    finally:
        page.close()


def seek_near_the_end_and_play(page: Page, duration: float) -> None:
    """Seek to SEEK_BEFORE_END seconds before the end; it must play on past the seek point."""
    seek_to = duration - SEEK_BEFORE_END
    page.evaluate(SEEK_AND_PLAY, seek_to)
    page.wait_for_function(PLAYED_PAST, arg=seek_to, timeout=WAIT_MS)
    after = page.evaluate(STATE)
    assert after["error"] is None and not after["paused"], after
    assert seek_to + 1 < after["time"] <= duration, after


def test_a_long_call_plays_and_seeks_while_its_rendition_is_still_being_written(
    browser: Browser, converting: Gateway
) -> None:
    """The player learns the hour's duration from the first response and seeks near its end
    before the converter has written that far: the read waits for the bytes, then it plays."""
    url = converting.link(f"/{LONG}") + "?inline=1"
    page, state = open_player(browser, url)
    try:
        converting_then = metric(scrape(converting.base_url), "gateway_active_conversions", format="wav")
        assert converting_then == 1, "the conversion ended before the player had its metadata: nothing was shown"
        assert state["error"] is None, state
        assert abs(state["duration"] - LONG_SECONDS) < 1, state
        seek_near_the_end_and_play(page, state["duration"])
    finally:
        page.close()


@pytest.mark.parametrize("name", NOT_PLAYABLE_AS_STORED)
def test_control_the_same_files_without_renditions_do_not_play(
    browser: Browser, not_converting: Gateway, name: str
) -> None:
    url = not_converting.link(f"/{name}") + "?inline=1"
    page, state = open_player(browser, url)
    try:
        assert state["ready"] == 0 and state["network"] == NETWORK_NO_SOURCE, state
        assert page.evaluate(VERDICT, url) == MEDIA_ERR_SRC_NOT_SUPPORTED
    finally:
        page.close()
