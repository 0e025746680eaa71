"""Attacks on what the public edge shows: /metrics as an oracle, and active content served inline.

/metrics labels tell refusal reasons apart (`not_found`, `decrypt`, `revoked`…), so served on the
public port it tells an attacker, request by request, what the plain 404 hides. It is served on
the metrics listener only (`--metrics-port`, or `GATEWAY_METRICS_PORT`), or publicly when an
operator turns that on (`GATEWAY_PUBLIC_METRICS=true`).

A recording link is a bearer secret on the gateway's origin: an HTML or SVG file in storage,
played "inline", would run its scripts on that origin, next to every other link. Active types
are always downloads, and every file answer carries a CSP that sandboxes whatever is rendered.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.crafted import answer
from support.http import HOST, Reply, request
from support.keys import new_key
from support.ops import scrape
from support.polling import poll
from support.processes import Gateway, free_port, running_gateway, stop_process

GARBAGE = "/not-a-token-at-all"
SANDBOX = "sandbox; default-src 'none'"
# Media keep a policy that loads nothing but themselves and runs nothing: sandboxing them would give the
# browser's own media document an opaque origin, and it could not load the file it shows.
MEDIA_ONLY = "default-src 'none'; media-src 'self'; img-src 'self'"


def plain_404(gateway: Gateway) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    reply = request(gateway.base_url, GARBAGE)
    assert reply.status == 404
    return answer(reply)


def small_storage(base: Path) -> Path:
    root = base / "storage"
    root.mkdir(parents=True)
    (root / "a.mp3").write_bytes(b"ID3" + bytes(1000))
    return root


# -- /metrics ----------------------------------------------------------------------------------------


# The suite's gateways serve /metrics on their one port unless told otherwise (tests/servers.py):
# these tests undo that, to see the product's default.
DEFAULT = {"GATEWAY_PUBLIC_METRICS": ""}


def test_a_default_serve_answers_metrics_on_the_public_port_with_the_plain_404(tmp_path: Path) -> None:
    with running_gateway(small_storage(tmp_path), [new_key()], tmp_path / "gateway", extra_env=DEFAULT) as gateway:
        assert answer(request(gateway.base_url, "/metrics")) == plain_404(gateway)


def test_metrics_port_from_the_environment_serves_metrics_there_only(tmp_path: Path) -> None:
    port = free_port()
    env = {**DEFAULT, "GATEWAY_METRICS_PORT": str(port)}
    with running_gateway(small_storage(tmp_path), [new_key()], tmp_path / "gateway", extra_env=env) as gateway:
        request(gateway.base_url, gateway.target("/a.mp3"))
        # Counts reach the scrape a moment after the answer (a turn of the worker's loop): polled.
        samples = poll(
            lambda: _scrape_or_none(f"http://{HOST}:{port}"),
            lambda found: found is not None and any(name == "gateway_requests_total" for name, _ in found),
            timeout=10.0,
        )
        assert samples is not None, f"nothing serves /metrics on GATEWAY_METRICS_PORT={port}"
        assert any(name == "gateway_requests_total" for name, _ in samples)
        assert answer(request(gateway.base_url, "/metrics")) == plain_404(gateway)


def _scrape_or_none(base_url: str) -> dict | None:
    try:
        return scrape(base_url)
    except (OSError, AssertionError):
        return None


def test_public_metrics_are_served_when_the_operator_turns_them_on(tmp_path: Path) -> None:
    env = {"GATEWAY_PUBLIC_METRICS": "true"}
    with running_gateway(small_storage(tmp_path), [new_key()], tmp_path / "gateway", extra_env=env) as gateway:
        request(gateway.base_url, gateway.target("/a.mp3"))
        samples = scrape(gateway.base_url)
        assert any(name == "gateway_requests_total" for name, _ in samples)


def test_the_development_default_says_where_the_metrics_are(tmp_path: Path) -> None:
    """`storage-gateway serve` with nothing configured is what a newcomer runs first: metrics are
    not on the public port, so the banner must say where they are (or how to get them)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env["GATEWAY_DEV_DIR"] = str(tmp_path / "dev")
    port = free_port()
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as sink:
        process = subprocess.Popen(
            ["storage-gateway", "serve", "--host", HOST, "--port", str(port)],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            start_new_session=True,
        )
    try:
        ready = poll(lambda: _healthy(f"http://{HOST}:{port}"), bool, timeout=20.0)
        assert ready, f"the development default did not start:\n{stderr.read_text(errors='replace')[-2000:]}"
    finally:
        stop_process(process)
    banner = stderr.read_text(errors="replace")
    assert any("metrics" in line.lower() for line in banner.splitlines()), banner


def _healthy(base_url: str) -> bool:
    with contextlib.suppress(OSError):
        return request(base_url, "/healthz", timeout=2.0).status == 200
    return False


# -- active content ----------------------------------------------------------------------------------

BEACON_PATH = "/script-ran"


def page_html(beacon: str) -> bytes:
    return (
        "<!doctype html><title>call notes</title>"
        f"<script>document.title = 'script ran'; new Image().src = '{beacon}{BEACON_PATH}';</script>"
    ).encode()


def svg(beacon: str) -> bytes:
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        f"<script>new Image().src = '{beacon}{BEACON_PATH}';</script></svg>"
    ).encode()


PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)
ACTIVE = ["/web/page.html", "/web/pic.svg", "/web/note.txt"]
PASSIVE = ["/web/call.mp3", "/web/pic.png"]


class Beacon:
    """A local HTTP server counting requests: a script that runs makes one."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        hits = self.hits

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hits.append(self.path)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Web:
    gateway: Gateway
    beacon: Beacon
    contents: dict[str, bytes]

    def get(self, path: str, query: str = "", method: str = "GET", headers: dict[str, str] | None = None) -> Reply:
        return request(self.gateway.base_url, self.gateway.target(path) + query, method=method, headers=headers)


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    base = tmp_path_factory.mktemp("active-content")
    beacon = Beacon()
    contents = {
        "/web/page.html": page_html(beacon.url),
        "/web/pic.svg": svg(beacon.url),
        "/web/note.txt": b"<script>alert(1)</script> notes about the call\n",
        "/web/call.mp3": b"ID3" + bytes(2000),
        "/web/pic.png": PNG,
    }
    root = base / "storage"
    (root / "web").mkdir(parents=True)
    for path, data in contents.items():
        (root / path.lstrip("/")).write_bytes(data)
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(base / "renditions")}
    try:
        with running_gateway(root, [new_key()], base / "gateway", extra_env=env) as gateway:
            yield Web(gateway, beacon, contents)
    finally:
        beacon.close()


@pytest.mark.parametrize("path", ACTIVE)
def test_active_content_is_a_download_even_when_asked_inline(web: Web, path: str) -> None:
    reply = web.get(path, "?inline=1")
    assert reply.status == 200 and reply.body == web.contents[path]
    assert (reply.header("content-disposition") or "").startswith("attachment"), reply.header("content-disposition")


@pytest.mark.parametrize("path", PASSIVE)
def test_media_and_images_still_play_inline(web: Web, path: str) -> None:
    reply = web.get(path, "?inline=1")
    assert reply.status == 200 and reply.body == web.contents[path]
    assert (reply.header("content-disposition") or "").startswith("inline"), reply.header("content-disposition")


@pytest.mark.parametrize("method, query, headers", [
    ("GET", "", None),
    ("GET", "?inline=1", None),
    ("GET", "", {"Range": "bytes=0-9"}),
    ("GET", "?inline=1", {"Range": "bytes=1-"}),
    ("HEAD", "", None),
    ("HEAD", "?inline=1", None),
], ids=["download", "inline", "ranged", "inline-ranged", "head", "inline-head"])  # fmt: skip
@pytest.mark.parametrize("path", ACTIVE + PASSIVE)
def test_every_file_answer_carries_a_sandboxing_csp(
    web: Web, path: str, method: str, query: str, headers: dict[str, str] | None
) -> None:
    reply = web.get(path, query, method, headers)
    assert reply.status in (200, 206), reply.status
    assert reply.header("content-security-policy") == (MEDIA_ONLY if path in PASSIVE else SANDBOX)


def test_an_inline_html_link_runs_no_script_in_a_browser(web: Web) -> None:
    """Headless Chromium opens the HTML recording's link with ?inline=1: its script must not run
    (it would request the beacon and set the title)."""
    from playwright.sync_api import Error as PlaywrightError
    from support.browser import chromium

    url = web.gateway.base_url + web.gateway.target("/web/page.html") + "?inline=1"
    with chromium() as browser:
        context = browser.new_context(accept_downloads=True)
        try:
            page = context.new_page()
            with contextlib.suppress(PlaywrightError):  # a download aborts the navigation
                page.goto(url, wait_until="load", timeout=15_000)
            page.wait_for_timeout(1500)  # time for a script (and its request) to run, were it allowed
            title = page.title()
        finally:
            context.close()
    assert web.beacon.hits == [] and title != "script ran", (web.beacon.hits, title)
