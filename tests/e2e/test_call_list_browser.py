"""A CRM's call list: twenty new recordings that need a rendition, each in an <audio preload=metadata>.

Every player asks at once, more than `max_conversions` conversions; a
browser never retries a media element that got `503`, so the requests past
the limit must wait their turn. All twenty must load, then seek and play,
in real headless Chromium against a real 2-worker `serve`. Bounded waits
only; nothing here asserts how fast anything is.
"""

from __future__ import annotations

import html
import http.server
import threading
from collections.abc import Iterator

import pytest
from support.browser import chromium
from support.http import HOST
from support.keys import new_key
from support.processes import Gateway, running_gateway
from support.recordings import make_audio

PLAYERS = 20
SECONDS = 60
CODECS = (["-c:a", "gsm_ms"], ["-c:a", "adpcm_g726", "-b:a", "32k"], ["-c:a", "adpcm_ima_wav"])
WAIT_MS = 90_000
ALL_LOADED = f"""() => {{
    const players = [...document.querySelectorAll('audio')];
    return players.length === {PLAYERS} && players.every((p) => p.readyState >= 1 || p.error);
}}"""
STATES = """() => [...document.querySelectorAll('audio')].map((p) => ({
    duration: p.duration, error: p.error && p.error.code, ready: p.readyState}))"""
SEEK_AND_PLAY = "(n) => { const p = document.querySelectorAll('audio')[n]; p.playbackRate = 4; p.currentTime = 30; return p.play(); }"
PLAYED = "(n) => { const p = document.querySelectorAll('audio')[n]; return !p.seeking && p.currentTime > 32; }"
PAUSE = "(n) => document.querySelectorAll('audio')[n].pause()"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    root = tmp_path_factory.mktemp("call-list") / "storage"
    for number in range(PLAYERS):
        make_audio(root / f"calls/call-{number:02}.wav", SECONDS, CODECS[number % len(CODECS)])
    work = tmp_path_factory.mktemp("call-list-gateway")
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(work / "cache")}  # the defaults otherwise: 2 conversions at once
    with running_gateway(root, [new_key()], work, workers=2, extra_env=env) as running:
        yield running


@pytest.fixture(scope="module")
def page_url(gateway: Gateway) -> Iterator[str]:
    """The call list, served from an origin of its own, as a CRM's page is."""
    players = "\n".join(
        f'<p>Call {n}</p><audio preload="metadata" controls src="{html.escape(gateway.link(f"/calls/call-{n:02}.wav"))}?inline=1"></audio>'
        for n in range(PLAYERS)
    )
    body = f"<!doctype html><meta charset=utf-8><title>Calls</title>{players}".encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((HOST, 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/calls.html"
    finally:
        server.shutdown()
        server.server_close()


def test_twenty_new_recordings_on_one_page_all_load_seek_and_play(page_url: str) -> None:
    with chromium() as browser:
        page = browser.new_page()
        page.goto(page_url)
        page.wait_for_function(ALL_LOADED, timeout=WAIT_MS)
        states = page.evaluate(STATES)
        assert [state["error"] for state in states] == [None] * PLAYERS, states
        assert all(abs(state["duration"] - SECONDS) <= 1 for state in states), states
        for number in range(PLAYERS):
            page.evaluate(SEEK_AND_PLAY, number)
            page.wait_for_function(PLAYED, arg=number, timeout=WAIT_MS)
            page.evaluate(PAUSE, number)
