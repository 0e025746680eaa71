"""The listening page (`?player=1`, gateway.edge.player) in a real headless Chromium.

A small http.server in a thread plays the gateway's part: the page from
`render_page` at `/<token>?player=1` with the module's Content-Security-
Policy, its files at `/_player/<name>` from `asset()`, the recording (a
stereo 8 kHz 16-bit WAV made here with `wave`: a 440 Hz tone on the left,
the caller, whose loudness rises, and 1000 Hz on the right, the agent,
whose loudness falls) with single-range support, and its peaks in
audiowaveform's JSON (8-bit, min/max per pixel, computed here from the
samples). The same is served under a path prefix (`/edge/`) to show that
the page's URLs are relative.

Every page is watched (player_support) for console errors, page errors, CSP violations and
requests to any other origin. Waits are bounded, for liveness only; no
timing is asserted (the ten-minute test prints first paint and waveform
times, for information).
"""

from __future__ import annotations

import base64
import hashlib
import html.parser
import http.server
import json
import math
import re
import threading
import wave
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser
from support.browser import chromium
from support.player import (
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

from gateway.edge import player
from gateway.edge.player import PlayerView, asset, render_page

HOST = "127.0.0.1"
RATE = 8000
PIXELS = 1000
SHORT_SECONDS = 20
LONG_SECONDS = 600
PREFIX = "/edge"
CALLER_HZ, AGENT_HZ = 440, 1000


# ---- recordings and their peaks -------------------------------------------------


@dataclass(frozen=True)
class Recording:
    wav: bytes
    channels: int
    seconds: float
    mono_peaks: bytes
    split_peaks: bytes


def _tone(hz: int, seconds: float, envelope: Callable[[float], float]) -> array:
    samples = array("h")
    for i in range(int(RATE * seconds)):
        t = i / RATE
        samples.append(int(32767 * envelope(t) * math.sin(2 * math.pi * hz * t)))
    return samples


def _wav(channels: list[array]) -> bytes:
    frames = array("h", bytes(2 * len(channels) * len(channels[0])))
    for index, samples in enumerate(channels):
        frames[index :: len(channels)] = samples
    out = BytesIO()
    with wave.open(out, "wb") as writer:
        writer.setnchannels(len(channels))
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(frames.tobytes())
    return out.getvalue()


def _peaks(channels: list[array]) -> bytes:
    """audiowaveform JSON v2, 8-bit: per pixel and channel the smallest and largest sample >> 8."""
    length = len(channels[0])
    per_pixel = math.ceil(length / PIXELS)
    data: list[int] = []
    for start in range(0, length, per_pixel):
        for samples in channels:
            block = samples[start : start + per_pixel]
            data += [min(block) >> 8, max(block) >> 8]
    document = {
        "version": 2,
        "channels": len(channels),
        "sample_rate": RATE,
        "samples_per_pixel": per_pixel,
        "bits": 8,
        "length": len(data) // (2 * len(channels)),
        "data": data,
    }
    return json.dumps(document, separators=(",", ":")).encode()


def _mono_mix(left: array, right: array) -> array:
    return array("h", ((a + b) // 2 for a, b in zip(left, right)))


def _recording(channels: list[array]) -> Recording:
    mono = channels[0] if len(channels) == 1 else _mono_mix(channels[0], channels[1])
    return Recording(
        wav=_wav(channels),
        channels=len(channels),
        seconds=len(channels[0]) / RATE,
        mono_peaks=_peaks([mono]),
        split_peaks=_peaks(channels),
    )


def short_stereo() -> Recording:
    def rising(t: float) -> float:
        return 0.1 + 0.8 * t / SHORT_SECONDS

    def falling(t: float) -> float:
        return 0.9 - 0.8 * t / SHORT_SECONDS

    return _recording([_tone(CALLER_HZ, SHORT_SECONDS, rising), _tone(AGENT_HZ, SHORT_SECONDS, falling)])


def short_mono() -> Recording:
    return _recording([_tone(CALLER_HZ, SHORT_SECONDS, lambda t: 0.2 + 0.7 * abs(math.sin(t / 3)))])


def _constant(level: float) -> Callable[[float], float]:
    return lambda _t: level


def long_stereo() -> Recording:
    """Ten minutes, built from one-second blocks (a whole number of cycles each) at ten loudness levels."""
    levels = [0.1 + 0.08 * level for level in range(10)]
    blocks = [[_tone(hz, 1, _constant(level)) for level in levels] for hz in (CALLER_HZ, AGENT_HZ)]
    channels = []
    for index, own in enumerate(blocks):
        samples = array("h")
        for second in range(LONG_SECONDS):
            level = (second // 6) % 10 if index == 0 else 9 - (second // 15) % 10
            samples.extend(own[level])
        channels.append(samples)
    return _recording(channels)


# ---- the stand-in gateway --------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    recording: Recording
    name: str
    # "ok", "404" (peaks requests answer 404), "split-404" (only split ones do) or "invalid" (not audiowaveform JSON)
    peaks: str = "ok"
    duration_known: bool = True  # whether the page is given duration_seconds


def _view(token: str, entry: Entry) -> PlayerView:
    stereo = entry.recording.channels == 2
    return PlayerView(
        name=entry.name,
        audio_url=token,
        peaks_url=f"{token}?peaks=1",
        split_peaks_url=f"{token}?peaks=1&split=1" if stereo else None,
        download_url=f"{token}?filename=x",
        download_mp3_url=f"{token}?format=mp3",
        channels=entry.recording.channels,
        duration_seconds=entry.recording.seconds if entry.duration_known else None,
    )


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser stopped reading media it did not need

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _get(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        if path.startswith(PREFIX + "/"):
            path = path[len(PREFIX) :]
        query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
        self.server.paths.append(self.path)
        if path.startswith("/_player/"):
            found = asset(path[len("/_player/") :])
            if found is None:
                self._send(404, b"no such asset\n", "text/plain")
            else:
                self._send(200, found[0], found[1], {"Cache-Control": player.CACHE_CONTROL})
            return
        token = path.lstrip("/")
        entry = self.server.entries.get(token)
        if entry is None:
            self._send(404, b"no such link\n", "text/plain")
        elif query.get("player") == "1":
            headers = {"Content-Security-Policy": player.CONTENT_SECURITY_POLICY, "Cache-Control": "no-store"}
            self._send(200, render_page(_view(token, entry)), "text/html; charset=utf-8", headers)
        elif query.get("peaks") == "1":
            if entry.peaks == "404" or (entry.peaks == "split-404" and query.get("split") == "1"):
                self._send(404, b"no peaks\n", "text/plain")
            elif entry.peaks == "invalid":
                self._send(200, b'{"version": 2, "channels": 1, "data": "not peaks"}', "application/json")
            else:
                body = entry.recording.split_peaks if query.get("split") == "1" else entry.recording.mono_peaks
                self._send(200, body, "application/json")
        elif "format" in query:
            self._send(404, b"no rendition here\n", "text/plain")
        else:
            self._media(entry.recording.wav)

    def _media(self, body: bytes) -> None:
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        headers = {"Accept-Ranges": "bytes"}
        if match is None or match.group(1) == "" and match.group(2) == "":
            self._send(200, body, "audio/wav", headers)
            return
        first_text, last_text = match.groups()
        if first_text == "":
            first, last = max(0, len(body) - int(last_text)), len(body) - 1
        else:
            first = int(first_text)
            last = min(int(last_text), len(body) - 1) if last_text else len(body) - 1
        if first >= len(body) or first > last:
            self._send(416, b"", "audio/wav", {"Content-Range": f"bytes */{len(body)}"})
            return
        headers["Content-Range"] = f"bytes {first}-{last}/{len(body)}"
        self._send(206, body[first : last + 1], "audio/wav", headers)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, entries: dict[str, Entry]) -> None:
        super().__init__((HOST, 0), Handler)
        self.entries = entries
        self.paths: list[str] = []

    def handle_error(self, request: object, client_address: object) -> None:
        """A browser that drops a media connection is no error; anything else is printed as usual."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"


STEREO = "Q2FsbC1zdGVyZW8tdG9rZW4"
MONO = "Q2FsbC1tb25vLXRva2Vu"
NO_PEAKS = "Q2FsbC1uby1wZWFrcw"
BAD_PEAKS = "Q2FsbC1iYWQtcGVha3M"
NO_SPLIT = "Q2FsbC1uby1zcGxpdA"
LONG = "Q2FsbC10ZW4tbWludXRlcw"
STEREO_NAME = 'звонок <клиента> & "агент" 2017-02-17.wav'


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    stereo = short_stereo()
    entries = {
        STEREO: Entry(stereo, STEREO_NAME),
        MONO: Entry(short_mono(), "mono call.wav"),
        NO_PEAKS: Entry(stereo, "no peaks.wav", peaks="404", duration_known=False),
        BAD_PEAKS: Entry(stereo, "bad peaks.wav", peaks="invalid"),
        NO_SPLIT: Entry(stereo, "no split peaks.wav", peaks="split-404"),
        LONG: Entry(long_stereo(), "ten minutes.wav"),
    }
    running = Server(entries)
    thread = threading.Thread(target=running.serve_forever, name="player-test-http", daemon=True)
    thread.start()
    try:
        yield running
    finally:
        running.shutdown()
        running.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


# ---- a watched page -------------------------------------------------------------


@pytest.fixture
def open_page(browser: Browser, server: Server) -> Iterator[Callable[..., Watched]]:
    contexts = []

    def opener(
        token: str, width: int = 1280, height: int = 800, prefix: str = "", expect_404_from: str | None = None
    ) -> Watched:
        url = f"{server.origin}{prefix}/{token}?player=1"
        context, watched = open_watched(browser, url, server.origin, width, height, expect_404_from)
        contexts.append(context)
        return watched

    yield opener
    for context in contexts:
        context.close()


# ---- unit tests: renderer, assets, policy -------------------------------------------


class _Collect(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: bytes) -> _Collect:
    parsed = _Collect()
    parsed.feed(page.decode("utf-8"))
    return parsed


def test_render_page_escapes_name_and_urls() -> None:
    name = "<\"&'> звонок клиента.wav"
    audio = "a\"b&c<d>.wav?inline=1&x='y'"
    view = PlayerView(
        name=name,
        audio_url=audio,
        peaks_url="t?peaks=1&pixels=1000",
        split_peaks_url='t?peaks=1&split=1"><script>alert(1)</script>',
        download_url="t?filename=a&b",
        download_mp3_url="t?format=mp3",
        channels=2,
        duration_seconds=61.5,
    )
    page = render_page(view)
    text = page.decode("utf-8")
    assert "<\"&'>" not in text and "<script>alert" not in text
    assert "&lt;&quot;&amp;&#x27;&gt; звонок клиента.wav" in text  # title and heading, Cyrillic kept as is
    parsed = _parse(page)
    attributes = {tag: attrs for tag, attrs in parsed.elements if tag in ("audio", "main")}
    assert attributes["audio"]["src"] == audio  # the attribute reads back exactly what was given
    assert attributes["main"]["data-split-peaks-url"] == view.split_peaks_url
    assert attributes["main"]["data-peaks-url"] == view.peaks_url
    assert attributes["main"]["data-duration"] == "61.5"
    links = [attrs["href"] for tag, attrs in parsed.elements if tag == "a"]
    assert links == ["t?filename=a&b", "t?format=mp3"]
    assert name in "".join(parsed.text)
    assert "1:01" in "".join(parsed.text)


def test_render_page_has_nothing_inline_and_only_relative_assets() -> None:
    page = render_page(PlayerView("m.wav", "t", "t?peaks=1", None, "t?filename=m.wav", "t?format=mp3", channels=1))
    parsed = _parse(page)
    for tag, attrs in parsed.elements:
        assert "style" not in attrs, tag
        assert not any(key.startswith("on") for key in attrs), (tag, attrs)
        if tag == "script":
            assert attrs.get("src"), "inline script"
    scripts = [attrs["src"] for tag, attrs in parsed.elements if tag == "script"]
    sheets = [attrs["href"] for tag, attrs in parsed.elements if tag == "link" and attrs.get("rel") == "stylesheet"]
    assert len(scripts) == 2 and len(sheets) == 1
    for url in scripts + sheets:
        assert url is not None and re.fullmatch(r"_player/[a-z.]+\?v=[0-9a-f]{12}", url), url
        found = asset(url.split("?")[0].removeprefix("_player/"))
        assert found is not None
        assert url.endswith(hashlib.sha256(found[0]).hexdigest()[:12])
    text = page.decode()
    assert 'class="channels"' not in text and 'class="lanes"' not in text  # mono: no mute/solo


def test_player_view_refuses_bad_values() -> None:
    with pytest.raises(ValueError):
        PlayerView("x", "t", None, None, "t", "t", channels=3)
    with pytest.raises(ValueError):
        PlayerView("x", "t", None, None, "t", "t", duration_seconds=float("nan"))
    page = render_page(PlayerView("x", "t", None, None, "t", "t")).decode()
    assert 'data-state="none"' in page and "–:––" in page


def test_asset_serves_known_files_and_refuses_everything_else() -> None:
    for name in player.asset_names():
        found = asset(name)
        assert found is not None and found[0], name
    script, style, vendored = asset("player.js"), asset("player.css"), asset("wavesurfer.min.js")
    assert script is not None and script[1].startswith("text/javascript")
    assert style is not None and style[1].startswith("text/css")
    assert vendored is not None
    assert vendored[0] == (Path(player.__file__).parent / "static/vendor/wavesurfer.min.js").read_bytes()
    for name in (
        "../__init__.py",
        "",
        "/",
        ".",
        "..",
        "__init__.py",
        "page.py",
        "static/player.js",
        "./player.js",
        "player.js/",
        "PLAYER.JS",
        "player.js\x00",
        "vendor/wavesurfer.min.js",
        "%2e%2e/page.py",
        "..\\page.py",
        "LICENSE",
    ):
        assert asset(name) is None, name


def test_wavesurfer_style_hash() -> None:
    """The CSP's style hash is that of the <style> the vendored wavesurfer writes for WAVE_HEIGHT."""
    source = (Path(player.__file__).parent / "static/vendor/wavesurfer.min.js").read_text("utf-8")
    opening = '<style${i?` nonce="${i}"`:""}>'
    assert source.count(opening) == 1, "wavesurfer's <style> template moved: find it and update this test"
    start = source.index(opening) + len(opening)
    template = source[start : source.index("</style>", start)]
    height = re.compile(r"\$\{this\.getHeight\(this\.options\.height,this\.options\.splitChannels\)\}")
    assert len(height.findall(template)) == 1 and template.count("${") == 1, template
    text = height.sub(str(player.WAVE_HEIGHT), template).encode().decode("unicode_escape")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode()
    assert f"'sha256-{digest}'" in player.CONTENT_SECURITY_POLICY


def test_content_security_policy() -> None:
    directives = dict(part.split(" ", 1) for part in player.CONTENT_SECURITY_POLICY.split("; "))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"].startswith("'self' 'sha256-") and "unsafe" not in directives["style-src"]
    assert directives["frame-ancestors"] == "'none'"
    framed = player.content_security_policy(["'self'", "https://crm.example.com", "https://*.example.org:8443"])
    assert framed.endswith("frame-ancestors 'self' https://crm.example.com https://*.example.org:8443")
    for bad in (["https://crm.example.com; script-src *"], ["a b"], [], ["'none'", "'self'"], ["'unsafe-inline'"]):
        with pytest.raises(ValueError):
            player.content_security_policy(bad)


# ---- in Chromium -----------------------------------------------------------------------


def test_stereo_page_plays_seeks_and_mixes(open_page: Callable[..., Watched], server: Server) -> None:
    watched = open_page(STEREO)
    page = watched.page
    wait_drawn(watched)
    assert page.locator("h1").inner_text() == STEREO_NAME
    assert page.locator(".time").inner_text() == "0:00 / 0:20"

    # Two lanes, Caller over Agent, both painted; the caller's tone gets louder, the agent's quieter.
    caller, agent = lane_pixels(watched)
    assert_painted(caller)
    assert_painted(agent)
    assert caller["first"] < caller["last"] and agent["first"] > agent["last"], (caller, agent)
    assert page.locator(".lane-label").all_inner_texts() == ["Caller", "Agent"]

    # Play: time advances; the Web Audio graph is built by that click.
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.5)
    assert page.locator("main").get_attribute("data-playing") == "true"
    assert page.get_by_role("button", name="Pause").is_visible()

    # A click at half the waveform's width seeks to about the middle.
    box = wave_box(watched)
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.25)
    assert abs(current_time(watched) - SHORT_SECONDS / 2) < 1.5, current_time(watched)

    # Dragging from a quarter to three quarters ends near three quarters.
    page.mouse.move(box["x"] + box["width"] * 0.25, box["y"] + box["height"] * 0.75)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + box["width"] * (0.25 + 0.05 * step), box["y"] + box["height"] * 0.75)
    page.mouse.up()
    watched.wait_for(
        "(t) => Math.abs(document.querySelector('audio').currentTime - t) < 1.5", SHORT_SECONDS * 0.75, "drag seek"
    )

    # 1.5x keeps the pitch.
    page.select_option("[data-role=speed]", "1.5")
    assert watched.js(
        "[document.querySelector('audio').playbackRate, document.querySelector('audio').preservesPitch]"
    ) == [1.5, True]

    # Skip buttons.
    page.get_by_role("button", name="Pause").click()
    watched.wait_for("document.querySelector('audio').paused", what="paused")
    page.evaluate("document.querySelector('audio').currentTime = 8")
    page.get_by_role("button", name="Forward 10 seconds").click()
    assert abs(current_time(watched) - 18) < 0.5
    page.get_by_role("button", name="Back 10 seconds").click()
    assert abs(current_time(watched) - 8) < 0.5

    # Mute the caller: its row, its button, its lane and its GainNode say so; the agent is untouched.
    page.get_by_role("button", name="Mute Caller").click()
    rows = page.locator(".channel")
    assert rows.nth(0).get_attribute("data-muted") == "true"
    assert rows.nth(0).get_attribute("data-gain") == "0"
    assert rows.nth(1).get_attribute("data-gain") == "1"
    assert page.get_by_role("button", name="Mute Caller").get_attribute("aria-pressed") == "true"
    assert page.locator(".lane").nth(0).get_attribute("data-audible") == "false"
    page.get_by_role("button", name="Mute Caller").click()
    assert rows.nth(0).get_attribute("data-gain") == "1"

    # Solo the agent: the caller is silenced, the agent heard.
    page.get_by_role("button", name="Solo Agent").click()
    assert page.get_by_role("button", name="Solo Agent").get_attribute("aria-pressed") == "true"
    assert [rows.nth(i).get_attribute("data-gain") for i in (0, 1)] == ["0", "1"]
    assert [rows.nth(i).get_attribute("data-audible") for i in (0, 1)] == ["false", "true"]
    page.get_by_role("button", name="Solo Agent").click()
    assert [rows.nth(i).get_attribute("data-gain") for i in (0, 1)] == ["1", "1"]

    # The graph really is the one described: the context runs, and playback still advances through it.
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, current_time(watched) + 0.5)

    # The whole page, screenshotted, is not blank.
    colours, share = colour_census(page.screenshot(full_page=True))
    assert colours > 20 and share > 0.02, (colours, share)
    watched.assert_clean()


def test_keyboard(open_page: Callable[..., Watched]) -> None:
    watched = open_page(STEREO)
    page = watched.page
    wait_drawn(watched)
    page.locator("h1").click()  # focus on the page, not on a control
    page.keyboard.press("Space")
    wait_playing(watched, 0.2)
    page.keyboard.press("Space")
    watched.wait_for("document.querySelector('audio').paused", what="paused by space")
    page.evaluate("document.querySelector('audio').currentTime = 10")
    page.keyboard.press("ArrowRight")
    assert abs(current_time(watched) - 15) < 0.5
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowLeft")
    assert abs(current_time(watched) - 5) < 0.5
    page.keyboard.press("ArrowUp")
    assert watched.js("document.querySelector('audio').playbackRate") == 1.25
    assert page.locator("[data-role=speed]").input_value() == "1.25"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    assert watched.js("document.querySelector('audio').playbackRate") == 0.75
    # Space on a focused button is that button's: here it mutes, it does not play.
    page.get_by_role("button", name="Mute Agent").focus()
    page.keyboard.press("Space")
    assert page.get_by_role("button", name="Mute Agent").get_attribute("aria-pressed") == "true"
    assert watched.js("document.querySelector('audio').paused") is True
    # The focused control is outlined (focus visible).
    outline = watched.js("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", outline
    watched.assert_clean()


def test_mono_page_has_one_waveform_and_no_channel_controls(open_page: Callable[..., Watched]) -> None:
    watched = open_page(MONO)
    page = watched.page
    wait_drawn(watched)
    lanes = lane_pixels(watched)
    assert len(lanes) == 1
    assert_painted(lanes[0])
    assert page.locator(".channel").count() == 0
    assert page.get_by_role("button", name=re.compile("Mute|Solo")).count() == 0
    assert not page.locator(".lanes").is_visible()
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.5)
    watched.assert_clean()


def test_phone_width(open_page: Callable[..., Watched]) -> None:
    watched = open_page(STEREO, width=360, height=740)
    page = watched.page
    wait_drawn(watched)
    assert watched.js("document.scrollingElement.scrollWidth") <= 360
    for control in page.locator("button, select, .downloads a").all():
        target = control.bounding_box()
        assert target is not None, control
        assert target["width"] >= 40 and target["height"] >= 40, (control.inner_text(), target)
        assert target["x"] >= 0 and target["x"] + target["width"] <= 360, (control.inner_text(), target)
    box = wave_box(watched)
    content = watched.js(
        "(() => { const m = document.querySelector('main'); const s = getComputedStyle(m);"
        " return m.clientWidth - parseFloat(s.paddingLeft) - parseFloat(s.paddingRight); })()"
    )
    assert abs(box["width"] - content) < 1, (box, content)  # the waveform takes the whole width
    for lane in lane_pixels(watched):
        assert_painted(lane)
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.3)
    watched.assert_clean()


@pytest.mark.parametrize("token", [NO_PEAKS, BAD_PEAKS], ids=["peaks-404", "peaks-invalid"])
def test_page_plays_without_a_waveform(open_page: Callable[..., Watched], token: str) -> None:
    watched = open_page(token, expect_404_from="peaks=1" if token == NO_PEAKS else None)
    page = watched.page
    watched.wait_for("document.querySelector('.wave').dataset.state === 'failed'", what="the waveform given up")
    assert "unavailable" in page.locator(".wave-status").inner_text()
    assert not page.locator(".wave-box").is_visible()
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.5)
    # The duration comes from the audio element when the server gave none.
    watched.wait_for("document.querySelector('.time').innerText.endsWith('/ 0:20')", what="the duration shown")
    # The position slider seeks instead of the waveform.
    page.locator(".seek").fill("15")
    assert abs(current_time(watched) - 15) < 0.5
    watched.assert_clean()


def test_stereo_without_split_peaks_draws_the_mono_waveform(open_page: Callable[..., Watched]) -> None:
    """Split peaks refused: one waveform from the mono peaks; mute and solo still work (they need no peaks)."""
    watched = open_page(NO_SPLIT, expect_404_from="split=1")
    page = watched.page
    wait_drawn(watched)
    lanes = lane_pixels(watched)
    assert len(lanes) == 1
    assert_painted(lanes[0])
    assert not page.locator(".lanes").is_visible()
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, 0.3)
    page.get_by_role("button", name="Solo Caller").click()
    rows = page.locator(".channel")
    assert [rows.nth(i).get_attribute("data-gain") for i in (0, 1)] == ["1", "0"]
    watched.assert_clean()


def test_path_prefix(open_page: Callable[..., Watched], server: Server) -> None:
    """Behind a path prefix, every URL the page uses stays under it (they are relative)."""
    before = len(server.paths)
    watched = open_page(STEREO, prefix=PREFIX)
    wait_drawn(watched)
    asked = server.paths[before:]
    assert any(path.startswith(f"{PREFIX}/_player/player.js?v=") for path in asked), asked
    assert all(path.startswith(PREFIX + "/") for path in asked), asked
    watched.assert_clean()


def test_ten_minute_call(open_page: Callable[..., Watched]) -> None:
    watched = open_page(LONG)
    page = watched.page
    wait_drawn(watched)
    assert page.locator(".time").inner_text() == "0:00 / 10:00"
    for lane in lane_pixels(watched):
        assert_painted(lane)
    box = wave_box(watched)
    page.mouse.click(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.25)
    assert abs(current_time(watched) - LONG_SECONDS / 2) < 5, current_time(watched)
    page.get_by_role("button", name="Play").click()
    wait_playing(watched, LONG_SECONDS / 2 + 0.3)
    marks = watched.js(
        "(() => { const at = (n) => { const e = performance.getEntriesByName(n)[0]; return e ? Math.round(e.startTime) : null; };"
        " return {fcp: at('first-contentful-paint'), start: at('player:start'), peaks: at('player:peaks'),"
        " drawn: at('player:waveform-drawn')}; })()"
    )
    print(f"ten-minute call, ms since navigation: {marks}")
    watched.assert_clean()
