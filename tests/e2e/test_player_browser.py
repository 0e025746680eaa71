"""The listening page through a real `storage-gateway serve`, in Debian's headless Chromium.

A stereo call (a caller at 440 Hz on the left whose voice rises, an agent
at 1000 Hz on the right whose voice falls) is stored as IMA ADPCM, a codec
browsers refuse: the page plays it through the gateway's PCM WAV rendition
and draws the gateway's own split peaks. The page must load with no console
error and no request to another origin, draw a waveform that is not blank,
play, seek where the waveform is clicked, change speed, mute a channel; a
screenshot of it must not be blank. The page of a masked link asks for
nothing that is not masked; a gateway that cannot make peaks still plays.

A CRM page on another origin (a small http.server on another local port,
listed in GATEWAY_CORS_ORIGINS) fetches a range of the recording and its
peaks with fetch(), plays it in its own `<audio crossorigin>` and frames
the page; the same from a port that is not listed fails.

Waits are bounded for liveness only; nothing asserts how fast anything is.
"""

from __future__ import annotations

import http.server
import math
import struct
import threading
import wave
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from playwright.sync_api import Browser
from support.browser import chromium
from support.http import HOST
from support.keys import new_key
from support.player import (
    WAIT_MS,
    Watched,
    assert_painted,
    colour_census,
    current_time,
    lane_pixels,
    open_watched,
    wait_drawn,
    wait_playing,
    wave_box,
)
from support.processes import Gateway, running_gateway
from support.recordings import ffmpeg

from gateway.links.issuing import Issuer
from gateway.links.masks import canonical
from gateway.links.signing import LinkSigner

RATE = 8000
SECONDS = 20
CALL = "/calls/stereo-call.wav"  # IMA ADPCM: played through the rendition
PCM = "/calls/pcm-call.wav"


def _stereo_pcm(target: Path) -> None:
    """20 s of 8 kHz 16-bit stereo: the caller's 440 Hz rises from quiet to loud, the agent's 1000 Hz falls."""
    frames = []
    for n in range(SECONDS * RATE):
        t = n / RATE
        caller = 0.1 + 0.8 * t / SECONDS
        agent = 0.9 - 0.8 * t / SECONDS
        frames += [
            int(32767 * caller * math.sin(2 * math.pi * 440 * t)),
            int(32767 * agent * math.sin(2 * math.pi * 1000 * t)),
        ]
    target.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(target), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(struct.pack(f"<{len(frames)}h", *frames))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import subprocess

    base = tmp_path_factory.mktemp("player-browser") / "storage"
    _stereo_pcm(base / PCM.lstrip("/"))
    subprocess.run(
        [ffmpeg(), "-nostdin", "-loglevel", "error", "-y", "-i", str(base / PCM.lstrip("/")), "-c:a", "adpcm_ima_wav",
         str(base / CALL.lstrip("/"))],
        check=True,
    )  # fmt: skip
    return base


class Crm(http.server.ThreadingHTTPServer):
    """A page on another origin: a blank page whose script the test runs (page.evaluate)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), _CrmPage)

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"


class _CrmPage(http.server.BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = b"<!DOCTYPE html><html><head><title>CRM</title></head><body><h1>Call 300</h1></body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def crms() -> Iterator[tuple[Crm, Crm]]:
    """Two CRM origins: the first is allowed by the gateway, the second is not."""
    servers = (Crm(), Crm())
    threads = [threading.Thread(target=server.serve_forever, daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


@pytest.fixture(scope="module")
def edge(root: Path, crms: tuple[Crm, Crm], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("player-gateway")
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(work / "cache"), "GATEWAY_CORS_ORIGINS": crms[0].origin}
    with running_gateway(root, [new_key()], work, extra_env=env) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def opened(browser: Browser) -> Iterator[list]:
    contexts: list = []
    yield contexts
    for context in contexts:
        context.close()


def open_page(browser: Browser, opened: list, edge: Gateway, target: str, **options: object) -> Watched:
    context, watched = open_watched(browser, edge.base_url + target, edge.base_url, **options)  # type: ignore[arg-type]
    opened.append(context)
    return watched


def test_the_page_plays_seeks_speeds_up_and_mutes_a_channel(browser: Browser, opened: list, edge: Gateway) -> None:
    watched = open_page(browser, opened, edge, edge.target(CALL) + "?player=1")
    page = watched.page
    wait_drawn(watched)
    assert page.locator("h1").inner_text() == "stereo-call.wav"
    assert page.locator(".time").inner_text() == "0:00 / 0:20"

    # The gateway's split peaks: Caller over Agent, both painted, louder where the voice is.
    caller, agent = lane_pixels(watched)
    assert_painted(caller)
    assert_painted(agent)
    assert caller["first"] < caller["last"] and agent["first"] > agent["last"], (caller, agent)

    # It plays, through the rendition (the ADPCM original would not).
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.5)
    source = watched.js("document.querySelector('audio').currentSrc")
    assert dict(parse_qsl(urlsplit(source).query)) == {"inline": "1"}

    # A click at 3/4 of the waveform seeks to 3/4 of the call.
    box = wave_box(watched)
    page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] * 0.25)
    assert abs(current_time(watched) - SECONDS * 0.75) < 1.5, current_time(watched)
    wait_playing(watched, SECONDS * 0.75 - 1)

    # Twice as fast, the pitch kept.
    page.select_option("[data-role=speed]", "2")
    assert watched.js(
        "[document.querySelector('audio').playbackRate, document.querySelector('audio').preservesPitch]"
    ) == [
        2,
        True,
    ]

    # Listen to the agent alone: the caller's gain is 0, the agent's 1.
    page.get_by_role("button", name="Mute Caller").click()
    rows = page.locator(".channel")
    assert [rows.nth(i).get_attribute("data-gain") for i in (0, 1)] == ["0", "1"]
    assert page.locator(".lane").nth(0).get_attribute("data-audible") == "false"
    page.get_by_role("button", name="Back 10 seconds").click()
    wait_playing(watched, current_time(watched) + 0.3)  # and it still plays, through the graph

    colours, share = colour_census(page.screenshot(full_page=True))
    assert colours > 20 and share > 0.02, (colours, share)
    watched.assert_clean()
    asked = [url for url in watched.requests if not url.startswith("data:")]
    assert any("peaks=1&split=1" in url for url in asked) and any("_player/wavesurfer.min.js" in url for url in asked)


def test_the_page_works_at_phone_width(browser: Browser, opened: list, edge: Gateway) -> None:
    watched = open_page(browser, opened, edge, edge.target(CALL) + "?player=1", width=360, height=740)
    wait_drawn(watched)
    assert watched.js("document.scrollingElement.scrollWidth") <= 360
    for lane in lane_pixels(watched):
        assert_painted(lane)
    watched.page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.3)
    watched.assert_clean()


def test_the_page_of_a_masked_link_asks_only_for_masked_views(browser: Browser, opened: list, edge: Gateway) -> None:
    issuer = Issuer(edge.key, LinkSigner([edge.key]), edge.base_url, require_signed=False)
    issued = issuer.issue(CALL.lstrip("/"), player=True, mask=canonical([[5, 10]]), expires_in=600)
    watched = open_page(browser, opened, edge, issued.record_url.removeprefix(edge.base_url))
    wait_drawn(watched)
    page = watched.page
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.3)
    watched.assert_clean()
    token = urlsplit(issued.record_url).path
    views = [url for url in watched.requests if urlsplit(url).path == token]
    assert len(views) >= 3, views  # the page, its audio, its peaks
    for url in views:
        params = dict(parse_qsl(urlsplit(url).query))
        assert params["mask"] == "5-10" and "sig" in params and "exp" in params, url
    for link in page.locator(".downloads a").all():
        assert "mask=5-10" in (link.get_attribute("href") or "")
    assert page.locator(".downloads a").first.inner_text() == "Download WAV"


def test_the_page_plays_when_no_peaks_can_be_made(browser: Browser, opened: list, root: Path, tmp_path: Path) -> None:
    """Every conversion runs out of CPU time at once here (415), so no peaks; the PCM original still plays."""
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path / "cache"), "GATEWAY_TRANSCODE_MAX_CPU_SECONDS": "0.000001"}
    with running_gateway(root, [new_key()], tmp_path, extra_env=env) as starved:
        watched = open_page(
            browser,
            opened,
            starved,
            starved.target(PCM) + "?player=1",
            expect_failure_from="peaks=1",
            failure_status=415,
        )
        watched.wait_for("document.querySelector('.wave').dataset.state === 'failed'", what="the waveform given up")
        watched.page.get_by_role("button", name="Play").click()
        wait_playing(watched, 0.5)
        watched.page.get_by_role("button", name="Mute Agent").click()
        assert watched.page.locator(".channel").nth(1).get_attribute("data-gain") == "0"
        watched.assert_clean()


# What a CRM page does with a link: fetch a range and the peaks, play it in its own <audio>, frame the page.
_EMBED = """
async ([link, peaks]) => {
  const result = {};
  try {
    const ranged = await fetch(link, {headers: {Range: 'bytes=0-1023'}});
    const body = await ranged.arrayBuffer();
    result.range = {status: ranged.status, contentRange: ranged.headers.get('Content-Range'),
                    etag: ranged.headers.get('ETag'), bytes: body.byteLength};
  } catch (error) {
    result.range = {error: String(error)};
  }
  try {
    const document_ = await (await fetch(peaks)).json();
    result.peaks = {channels: document_.channels, length: document_.length};
  } catch (error) {
    result.peaks = {error: String(error)};
  }
  result.audio = await new Promise((resolve) => {
    const audio = new Audio();
    audio.crossOrigin = 'anonymous';
    audio.addEventListener('timeupdate', () => { if (audio.currentTime > 0.5) resolve({played: audio.currentTime}); });
    audio.addEventListener('error', () => resolve({error: audio.error && audio.error.code}));
    audio.src = link;
    audio.play().catch(() => {});
  });
  return result;
}
"""


def test_a_page_on_an_allowed_origin_fetches_plays_and_frames_a_call(
    browser: Browser, opened: list, edge: Gateway, crms: tuple[Crm, Crm]
) -> None:
    crm = crms[0]
    context = browser.new_context()
    opened.append(context)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(crm.origin + "/call/300", timeout=WAIT_MS)
    link = edge.base_url + edge.target(CALL) + "?inline=1"
    result = page.evaluate(_EMBED, [link, edge.base_url + edge.target(CALL) + "?peaks=1&split=1"])
    assert result["range"]["status"] == 206, result
    assert result["range"]["contentRange"].startswith("bytes 0-1023/") and result["range"]["bytes"] == 1024
    assert result["range"]["etag"]  # exposed: a player can revalidate
    assert result["peaks"]["channels"] == 2 and 900 < result["peaks"]["length"] <= 1000, result
    assert result["audio"].get("played", 0) > 0.5, result
    assert errors == []

    # The page itself, framed by the CRM: drawn and playing inside the frame.
    page.evaluate("(url) => { const f = document.createElement('iframe'); f.src = url; f.width = 900;"
                  " f.height = 600; document.body.append(f); }", edge.base_url + edge.target(CALL) + "?player=1")  # fmt: skip
    frame = page.frame_locator("iframe")
    frame.locator(".wave[data-state=drawn]").wait_for(timeout=WAIT_MS)
    frame.get_by_role("button", name="Play").click()
    frame.locator("main[data-playing=true]").wait_for(timeout=WAIT_MS)


def test_a_page_on_an_origin_not_allowed_gets_nothing(
    browser: Browser, opened: list, edge: Gateway, crms: tuple[Crm, Crm]
) -> None:
    crm = crms[1]
    context = browser.new_context()
    opened.append(context)
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(crm.origin + "/call/300", timeout=WAIT_MS)
    link = edge.base_url + edge.target(CALL) + "?inline=1"
    result = page.evaluate(_EMBED, [link, edge.base_url + edge.target(CALL) + "?peaks=1&split=1"])
    assert "TypeError" in result["range"].get("error", ""), result  # CORS refused the answer
    assert "TypeError" in result["peaks"].get("error", ""), result
    assert "error" in result["audio"], result
    # Nor may it frame the page: frame-ancestors names only the allowed origin, and Chromium says it refused.
    with page.expect_console_message(lambda message: "frame-ancestors" in message.text, timeout=WAIT_MS) as refused:
        page.evaluate("(url) => { const f = document.createElement('iframe'); f.src = url; document.body.append(f); }",
                      edge.base_url + edge.target(CALL) + "?player=1")  # fmt: skip
    assert crm.origin not in refused.value.text.partition("frame-ancestors")[2]
    assert page.frame_locator("iframe").locator("#player").count() == 0
