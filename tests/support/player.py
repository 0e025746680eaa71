"""Pages in headless Chromium, watched: console and page errors, CSP violations, requests elsewhere.

Shared by the listening page's tests: the renderer's against a stand-in
server (test_player_page.py) and the real gateway's (test_player_browser.py).
Waits are bounded, for liveness only.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, Request

WAIT_MS = 20_000  # liveness bound for each wait in the page


# Installed before any page script (DevTools, not subject to the page's CSP).
_WATCH_CSP = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push(e.violatedDirective + ' blocked ' + (e.blockedURI || 'inline') + ' ' + (e.sample || ''));
});
"""


@dataclass
class Watched:
    page: Page
    origin: str
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def problems(self) -> str:
        return f"console errors {self.console_errors}, page errors {self.page_errors}"

    def assert_clean(self) -> None:
        violations = self.page.evaluate("window.__cspViolations")
        assert violations == [], f"CSP violations: {violations}"
        assert self.console_errors == [], self.problems()
        assert self.page_errors == [], self.problems()
        foreign = [url for url in self.requests if not url.startswith((self.origin + "/", "data:"))]
        assert foreign == [], f"requests to another origin: {foreign}"

    def js(self, expression: str, arg: object = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait_for(self, expression: str, arg: object = None, what: str = "") -> None:
        if not expression.lstrip().startswith("("):
            # A bare expression would be eval()ed by Playwright's polling, which the page's CSP forbids.
            expression = f"() => ({expression})"
        try:
            self.page.wait_for_function(expression, arg=arg, timeout=WAIT_MS)
        except Exception as error:
            raise AssertionError(f"waiting for {what or expression}: {error}; {self.problems()}") from error


def open_watched(
    browser: Browser,
    url: str,
    origin: str,
    width: int = 1280,
    height: int = 800,
    expect_failure_from: str | None = None,
    failure_status: int = 404,
) -> tuple[BrowserContext, Watched]:
    """`url` opened in a new context whose page is watched; `origin`: where its requests may go.

    `expect_failure_from`: a URL part whose answers with `failure_status` are expected (not an error).
    """
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    watched = Watched(page, origin)

    def on_console(message: ConsoleMessage) -> None:
        if message.type != "error":
            return
        where = message.location.get("url", "")
        # Chromium logs every failed status a fetch gets; only the one the test asks for is expected.
        if expect_failure_from and f"status of {failure_status}" in message.text and expect_failure_from in where:
            return
        watched.console_errors.append(f"{message.text} ({where})")

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.page_errors.append(str(error)))

    def on_request(request: Request) -> None:
        watched.requests.append(request.url)

    page.on("request", on_request)
    page.add_init_script(_WATCH_CSP)
    page.goto(url, timeout=WAIT_MS)
    return context, watched


def wait_drawn(watched: Watched) -> None:
    """Wait for the waveform, then check what drawing it may have upset (a refused style, say)."""
    watched.wait_for("document.querySelector('.wave').dataset.state === 'drawn'", what="the waveform drawn")
    watched.assert_clean()


# Per channel lane in wavesurfer's shadow root: painted pixels, in all and in the first and last fifth.
_LANE_PIXELS = """
() => {
  const host = document.querySelector('.wave-canvas > div');
  const lanes = [...host.shadowRoot.querySelectorAll('.canvases > div')];
  return lanes.map((lane) => {
    let painted = 0, total = 0, first = 0, last = 0;
    const colours = new Set();
    const width = lane.getBoundingClientRect().width;
    for (const canvas of lane.querySelectorAll('canvas')) {
      const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
      const left = parseFloat(canvas.style.left) || 0;
      const scale = canvas.width / canvas.getBoundingClientRect().width;
      for (let i = 0; i < data.length; i += 4) {
        total++;
        colours.add((data[i] << 24) | (data[i + 1] << 16) | (data[i + 2] << 8) | data[i + 3]);
        if (data[i + 3] === 0) continue;
        painted++;
        const x = left + ((i / 4) % canvas.width) / scale;
        if (x < width / 5) first++;
        if (x >= (width * 4) / 5) last++;
      }
    }
    return {painted, total, first, last, colours: colours.size, height: lane.getBoundingClientRect().height};
  });
}
"""


def lane_pixels(watched: Watched) -> list[dict[str, float]]:
    return watched.js(_LANE_PIXELS)  # type: ignore[return-value]


def assert_painted(lane: dict[str, float]) -> None:
    share = lane["painted"] / lane["total"]
    assert lane["colours"] > 1 and 0.03 < share < 0.97, f"waveform looks blank or solid: {lane}"


def current_time(watched: Watched) -> float:
    return float(watched.js("document.querySelector('audio').currentTime"))  # type: ignore[arg-type]


def wait_playing(watched: Watched, beyond: float) -> None:
    watched.wait_for(
        "(t) => { const a = document.querySelector('audio'); return !a.paused && a.currentTime > t; }",
        beyond,
        what=f"currentTime past {beyond}",
    )


def wave_box(watched: Watched) -> dict[str, float]:
    box = watched.page.locator(".wave-canvas").bounding_box()
    assert box is not None
    return {"x": box["x"], "y": box["y"], "width": box["width"], "height": box["height"]}


# ---- PNG, decoded without PIL ------------------------------------------------------


def png_rows(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the unfiltered rows of an 8-bit RGB(A) PNG (as Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    position, compressed = 8, b""
    width = height = depth = colour = interlace = 0
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            compressed += body
        elif kind == b"IEND":
            break
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw = zlib.decompress(compressed)
    stride = width * bpp
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        method, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if method == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif method == 2:
            line = bytearray((a + b) & 0xFF for a, b in zip(line, previous))
        elif method == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif method == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                predictor = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + predictor) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, bpp, rows


def colour_census(png: bytes) -> tuple[int, float]:
    """How many colours a screenshot has, and the share of pixels unlike its top-left one."""
    width, height, bpp, rows = png_rows(png)
    background = rows[0][:3]
    colours: set[bytes] = set()
    other = 0
    for row in rows:
        for x in range(0, width * bpp, bpp):
            pixel = row[x : x + 3]
            colours.add(pixel)
            other += pixel != background
    return len(colours), other / (width * height)
