"""A real browser: headless Chromium (Debian's) plays, seeks and downloads through the gateway.

The recordings are made here with ffmpeg (tests/support/recordings.py): ten minutes
of 8 kHz mono as MP3 and as PCM WAV, a 30 s VP8/Opus WebM and a 30 s
H.264/AAC MP4 whose index (`moov`) sits at the end of the file, so the
browser must ask for a range at the end before it can play anything.

A page on a local http.server holds the `<audio>`/`<video>` element or the
download link, pointing at the gateway (another origin, as a CRM page
would). The network is throttled with the DevTools protocol while media
load, so the browser cannot have buffered the whole file before the seek:
playing from the last 20 seconds must come from a ranged request, which the
gateway's access log shows.

Every wait is bounded (for liveness only); nothing asserts how fast
anything is. Console messages, page errors and media errors are put in the
assertion messages.
"""

from __future__ import annotations

import hashlib
import html
import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page
from playwright.sync_api import Error as PlaywrightError
from support.browser import chromium
from support.http import HOST
from support.processes import Gateway
from support.recordings import make_audio, make_video
from support.storage import Storage

LONG_SECONDS = 600
CLIP_SECONDS = 30
SEEK_BEFORE_END = 20
MEDIA_TIMEOUT_MS = 30_000  # liveness bound for each wait on the page
# Slow enough that no recording here is fully buffered before the seek, fast enough to start at once.
THROTTLE_BYTES_PER_S = 128 * 1024

CYRILLIC_NAME = "звонок клиента 2017-02-17.mp3"


@dataclass(frozen=True)
class Recording:
    path: str  # storage path, as in the token
    tag: str  # "audio" or "video"
    seconds: float
    size: int


@dataclass(frozen=True)
class Media:
    mp3: Recording
    wav: Recording
    webm: Recording
    mp4: Recording
    download: str  # storage path of the Cyrillic-named file
    download_data: bytes


@pytest.fixture(scope="module")
def media(storage: Storage) -> Media:
    base = storage.root / "browser"

    def audio(name: str, codec: list[str]) -> Recording:
        target = make_audio(base / name, LONG_SECONDS, codec)
        return Recording(f"/browser/{name}", "audio", LONG_SECONDS, target.stat().st_size)

    def video(name: str, codec: list[str]) -> Recording:
        target = make_video(base / name, CLIP_SECONDS, codec)
        return Recording(f"/browser/{name}", "video", CLIP_SECONDS, target.stat().st_size)

    mp3 = audio("long-8k.mp3", ["-c:a", "libmp3lame", "-b:a", "32k"])
    wav = audio("long-8k.wav", ["-c:a", "pcm_s16le"])
    webm = video("clip.webm", ["-c:v", "libvpx", "-b:v", "200k", "-c:a", "libopus", "-b:a", "32k"])
    # No +faststart: the moov box is written last, so playback starts with a range at the end.
    mp4 = video("clip.mp4", ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac"])
    short = make_audio(base / "short.mp3", 3, ["-c:a", "libmp3lame", "-b:a", "32k"])
    download = f"/browser/{CYRILLIC_NAME}"
    data = short.read_bytes()
    storage.add(download, data)
    return Media(mp3, wav, webm, mp4, download, data)


# -- the page server ------------------------------------------------------------------------


class Pages:
    """A local http.server (its own origin) serving pages registered by name."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str, body: str) -> str:
        self.pages[f"/{name}"] = body
        return f"http://{HOST}:{self.server.server_address[1]}/{name}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def pages() -> Iterator[Pages]:
    server = Pages()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as running:
        yield running


@dataclass
class Console:
    """What the page said: console messages and uncaught errors, for assertion messages."""

    lines: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(self.lines[-40:]) or "(console empty)"


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Console]]:
    context = browser.new_context(accept_downloads=True)
    page = context.new_page()
    console = Console()
    page.on("console", lambda message: console.lines.append(f"console.{message.type}: {message.text}"))
    page.on("pageerror", lambda error: console.lines.append(f"pageerror: {error}"))
    page.on("requestfailed", lambda request: console.lines.append(f"requestfailed: {request.failure}"))
    try:
        yield page, console
    finally:
        context.close()


def throttle(page: Page, bytes_per_second: int) -> None:
    """A slow network for this page (DevTools protocol), as a user on a poor connection."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    conditions = {"offline": False, "latency": 20, "downloadThroughput": bytes_per_second, "uploadThroughput": -1}
    cdp.send("Network.emulateNetworkConditions", conditions)


# -- helpers on the media element -------------------------------------------------------------

MEDIA_STATE = """(el) => ({
    duration: el.duration, currentTime: el.currentTime, readyState: el.readyState,
    networkState: el.networkState, paused: el.paused, ended: el.ended,
    error: el.error && {code: el.error.code, message: el.error.message},
    buffered: Array.from({length: el.buffered.length}, (_, i) => [el.buffered.start(i), el.buffered.end(i)]),
})"""


def media_page(tag: str, src: str) -> str:
    """An HTML page with one media element that records its events on `window.events`."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>player</title></head><body>
<{tag} id="player" controls preload="metadata" src="{html.escape(src)}"></{tag}>
<script>
window.events = [];
const player = document.getElementById("player");
for (const name of ["loadedmetadata", "seeking", "seeked", "playing", "waiting", "stalled", "error", "ended"]) {{
  player.addEventListener(name, () => {{
    window.events.push(name);
    if (name === "error") console.error("media error", player.error && player.error.code, player.error && player.error.message);
  }});
}}
</script>
</body></html>"""


def state(page: Page) -> dict[str, object]:
    return page.eval_on_selector("#player", MEDIA_STATE)


def context_of(page: Page, console: Console) -> str:
    try:
        current = json.dumps(state(page))
        events = page.evaluate("window.events")
    except PlaywrightError as exc:
        current, events = f"(page gone: {exc})", []
    return f"state={current}\nevents={events}\n{console}"


def wait_for(page: Page, console: Console, condition: str, what: str, arg: object = None) -> object:
    """Wait (bounded) until `condition(player, arg)` is truthy on the page; its value."""
    script = f"([arg]) => {{ const el = document.getElementById('player'); const v = ({condition})(el, arg); return v || null; }}"
    try:
        return page.wait_for_function(script, arg=[arg], timeout=MEDIA_TIMEOUT_MS, polling=100).json_value()
    except PlaywrightError as exc:
        pytest.fail(
            f"{what}: not within {MEDIA_TIMEOUT_MS / 1000:.0f}s ({exc.message.splitlines()[0]})\n{context_of(page, console)}"
        )


def access_lines(gateway: Gateway, offset: int, token: str) -> list[dict[str, object]]:
    """Access-log lines (JSON, on stdout; stderr shares the log) since `offset` for `token`."""
    text = gateway.log_since(offset)
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("token") == token[:8]]


def ranged_gets(gateway: Gateway, offset: int, token: str) -> list[dict[str, object]]:
    """Access-log lines since `offset` for GETs of `token` carrying a Range."""
    lines = access_lines(gateway, offset, token)
    return [line for line in lines if line.get("method") == "GET" and "range" in line]


def range_start(line: dict[str, object]) -> int:
    value = str(line["range"])
    first = value.partition("=")[2].partition("-")[0]
    return int(first) if first.isdigit() else -1


def play_and_seek(gateway: Gateway, pages: Pages, page: Page, console: Console, recording: Recording) -> None:
    """Load `recording` in its element, check the duration, seek near the end and see it play there."""
    offset = gateway.log_size()
    throttle(page, THROTTLE_BYTES_PER_S)
    src = gateway.link(recording.path) + "?inline=1"
    page.goto(pages.url(recording.path.rpartition("/")[2] + ".html", media_page(recording.tag, src)))

    duration = wait_for(
        page, console, "(el) => el.readyState >= 1 && isFinite(el.duration) && el.duration", "metadata loaded"
    )
    assert abs(float(duration) - recording.seconds) <= 1.0, f"duration {duration}\n{context_of(page, console)}"

    seek_to = float(duration) - SEEK_BEFORE_END
    page.eval_on_selector("#player", "(el, t) => { el.muted = true; el.currentTime = t; }", seek_to)
    # Start playing at the seek point; play()'s promise may reject later (e.g. on an error) -
    # that shows in the state and events below, so it is not awaited here.
    page.eval_on_selector("#player", "(el) => { el.play().catch((e) => console.error('play() rejected', String(e))); }")
    # Playback moves on from the seek point: data from the end of the file arrived and decoded.
    wait_for(
        page,
        console,
        "(el, t) => !el.seeking && !el.paused && el.currentTime > t + 1 && el.currentTime",
        f"playing past {seek_to + 1:.0f}s after the seek",
        seek_to,
    )
    current = state(page)
    assert current["error"] is None, context_of(page, console)
    assert float(current["currentTime"]) <= float(duration) + 0.5, context_of(page, console)

    # The seek was served by a Range request well into the file (the throttled first
    # request cannot have brought the whole file by then), answered 206.
    token = gateway.token(recording.path)
    ranged = ranged_gets(gateway, offset, token)
    print(
        f"{recording.path}: size {recording.size}, ranged GETs {[(line['range'], line['status'], line['bytes']) for line in ranged]}"
    )
    deep = [line for line in ranged if range_start(line) >= recording.size // 2]
    assert deep, f"no ranged GET past the middle of the file: {ranged}\n{context_of(page, console)}"
    assert all(line["status"] == 206 for line in deep), deep
    # Nothing the browser asked for was refused or failed.
    statuses = {line["status"] for line in access_lines(gateway, offset, token)}
    assert statuses <= {200, 206}, statuses


# -- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["mp3", "wav"])
def test_audio_element_plays_and_seeks_a_ten_minute_recording(
    gateway: Gateway, pages: Pages, page: tuple[Page, Console], media: Media, kind: str
) -> None:
    play_and_seek(gateway, pages, *page, getattr(media, kind))


@pytest.mark.parametrize("kind", ["webm", "mp4"])
def test_video_element_plays_and_seeks(
    gateway: Gateway, pages: Pages, page: tuple[Page, Console], media: Media, kind: str
) -> None:
    play_and_seek(gateway, pages, *page, getattr(media, kind))


def test_media_document_of_an_inline_link_plays(gateway: Gateway, page: tuple[Page, Console], media: Media) -> None:
    """The link opened directly with ?inline=1: Chromium renders its own media document
    (a <video> element) and plays the recording instead of downloading it."""
    browser_page, console = page
    browser_page.goto(gateway.link(media.wav.path) + "?inline=1")
    browser_page.wait_for_selector("video", timeout=MEDIA_TIMEOUT_MS)
    browser_page.eval_on_selector("video", "(el) => { el.id = 'player'; }")
    duration = wait_for(
        browser_page, console, "(el) => el.readyState >= 1 && isFinite(el.duration) && el.duration", "metadata"
    )
    assert abs(float(duration) - media.wav.seconds) <= 1.0


@pytest.mark.parametrize("via", ["page link", "address bar"])
def test_click_on_a_link_downloads_under_its_cyrillic_name(
    gateway: Gateway, pages: Pages, page: tuple[Page, Console], media: Media, tmp_path: Path, via: str
) -> None:
    browser_page, console = page
    link = gateway.link(media.download)
    with browser_page.expect_download(timeout=MEDIA_TIMEOUT_MS) as caught:
        if via == "page link":
            # A plain link (no `download` attribute): the gateway's Content-Disposition decides.
            body = f'<!doctype html><meta charset="utf-8"><a id="link" href="{html.escape(link)}">Запись</a>'
            browser_page.goto(pages.url("download.html", body))
            browser_page.click("#link")
        else:
            with pytest.raises(PlaywrightError, match="Download is starting"):
                browser_page.goto(link)
    download = caught.value
    assert download.failure() is None, f"{download.failure()}\n{console}"
    assert download.suggested_filename == CYRILLIC_NAME, console
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == hashlib.sha256(media.download_data).hexdigest()
