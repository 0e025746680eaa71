"""Attacks through what is in storage: a directory swapped for a symlink while a link is served,
files whose headers lie about their length or their format, and a rendition cache another user
could hand us.

The symlink race: the storage root holds `dir/file` (inside bytes) and `swap`, a symlink to a
directory outside the root holding another `file` (secret bytes). A thread exchanges the names
`dir` and `swap` atomically (renameat2 RENAME_EXCHANGE) as fast as it can while links to
`/dir/file` are requested: a gateway that checks the resolved path and then opens it by name
again opens, now and then, the file outside. Whoever can write into the storage tree (an upload
area, a PBX's spool) can run this. Not one response may carry the secret.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import http.client
import os
import platform
import pwd
import re
import stat
import struct
import subprocess
import tempfile
import threading
import wave
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self
from urllib.parse import quote

import pytest
from support.crafted import Creations, encode, mov_claiming, patch_wav, pcm_wav, tree_bytes, tree_files, wav_frames
from support.http import HOST, request, split_base
from support.keys import new_key
from support.ops import Samples, scrape
from support.polling import poll
from support.processes import (
    Gateway,
    free_port,
    gateway_environment,
    nginx_binary,
    running_gateway,
    running_nginx,
    stop_process,
)
from support.storage import MIB, SECRET_MARKER

EXAMPLE = Path(__file__).resolve().parents[2] / "nginx.conf.example"

# -- the race ----------------------------------------------------------------------------------

AT_FDCWD = -100
RENAME_EXCHANGE = 2
_RENAMEAT2 = {"x86_64": 316, "aarch64": 276}
SWAPS_AT_MOST = 20_000_000  # the swapper's bound if a round never ends


def _renameat2() -> Callable[[bytes, bytes], int]:
    libc = ctypes.CDLL(None, use_errno=True)
    if hasattr(libc, "renameat2"):
        call = libc.renameat2
        call.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        return lambda old, new: call(AT_FDCWD, old, AT_FDCWD, new, RENAME_EXCHANGE)
    number = _RENAMEAT2.get(platform.machine())
    if number is None:
        raise RuntimeError(f"no renameat2 in libc and no known syscall number on {platform.machine()}")
    syscall = libc.syscall
    return lambda old, new: syscall(number, AT_FDCWD, old, AT_FDCWD, new, RENAME_EXCHANGE)


class Swapper:
    """A thread exchanging two names until stopped; `swaps` counts the exchanges done."""

    def __init__(self, one: Path, other: Path) -> None:
        self._paths = (os.fsencode(one), os.fsencode(other))
        self._exchange = _renameat2()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.swaps = 0
        self.error: int | None = None
        if self._exchange(*self._paths) != 0 or self._exchange(*self._paths) != 0:  # works here, and back
            raise OSError(ctypes.get_errno(), f"renameat2(RENAME_EXCHANGE) of {one} and {other}")

    def _run(self) -> None:
        exchange, (one, other) = self._exchange, self._paths
        while not self._stop.is_set() and self.swaps < SWAPS_AT_MOST:
            if exchange(one, other) != 0:
                self.error = ctypes.get_errno()
                return
            self.swaps += 1

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive()
        if self.swaps % 2:  # leave the names as they were
            self._exchange(*self._paths)


@dataclass
class Tree:
    """base/root/dir/NAME (inside), base/outside/dir/NAME (secret), base/root/swap -> base/outside/dir."""

    base: Path
    names: list[str]
    inside: bytes
    secret: bytes

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def paths(self) -> list[str]:
        """The storage paths of the files the links name."""
        return [f"/dir/{name}" for name in self.names]

    def swapper(self) -> Swapper:
        return Swapper(self.root / "dir", self.root / "swap")


def make_tree(base: Path, names: list[str], inside: bytes, secret: bytes) -> Tree:
    base = base.resolve()
    for where, data in (("root", inside), ("outside", secret)):
        (base / where / "dir").mkdir(parents=True)
        for name in names:
            (base / where / "dir" / name).write_bytes(data)
    (base / "root" / "swap").symlink_to(base / "outside" / "dir", target_is_directory=True)
    return Tree(base, names, inside, secret)


@dataclass
class Round:
    """What the clients got during one race."""

    statuses: Counter[int] = field(default_factory=Counter)
    leaks: list[tuple[int, int]] = field(default_factory=list)  # (request number, status)
    unexpected: list[tuple[int, int, bytes]] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())


def race(
    base_url: str,
    targets: list[str],
    swapper: Swapper,
    leaked: Callable[[bytes], bool],
    expected: Callable[[int, bytes], bool],
    requests: int,
    clients: int = 4,
) -> Round:
    """`requests` GETs of `targets` (in turn) from `clients` keep-alive connections while `swapper` swaps."""
    result = Round()
    lock = threading.Lock()
    per_client = -(-requests // clients)

    def client(number: int) -> None:
        host, port = split_base(base_url)
        conn = http.client.HTTPConnection(host, port, timeout=30)
        try:
            for n in range(per_client):
                conn.request("GET", targets[(number + n) % len(targets)])
                response = conn.getresponse()
                body = response.read()
                if response.will_close:
                    conn.close()
                with lock:
                    result.statuses[response.status] += 1
                    if leaked(body):
                        result.leaks.append((number * per_client + n, response.status))
                    elif not expected(response.status, body):
                        result.unexpected.append((number * per_client + n, response.status, body[:200]))
        finally:
            conn.close()

    with swapper:
        threads = [threading.Thread(target=client, args=(number,)) for number in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert swapper.error is None, f"the swapper stopped: {errno.errorcode.get(swapper.error, swapper.error)}"
    assert result.requests == per_client * clients, f"clients did not finish: {result.statuses}"
    assert swapper.swaps > result.requests, "the names were hardly swapped: no race took place"
    return result


def assert_no_leak(result: Round) -> None:
    assert result.leaks == [], (
        f"{len(result.leaks)} of {result.requests} responses carried the file outside the root "
        f"(statuses {dict(result.statuses)}; first: {result.leaks[:5]})"
    )
    assert result.unexpected == [], f"answers neither 404 nor the inside file: {result.unexpected[:5]}"


# -- the edge itself -----------------------------------------------------------------------------

RACE_REQUESTS = 4000
INSIDE = b"INSIDE-THE-ROOT-" * 256  # 4 KiB: a small file, read whole (and cached) by the gateway
SECRET = SECRET_MARKER * (4096 // len(SECRET_MARKER) + 1)


@pytest.mark.parametrize("cache_seconds", ["0", None], ids=["no-open-file-cache", "default-open-file-cache"])
def test_a_directory_swapped_for_a_symlink_never_leaks_the_file_outside(
    tmp_path: Path, cache_seconds: str | None
) -> None:
    """Every answer is the plain 404 or the inside file, over thousands of requests raced against
    the swap; with no open-file cache (every request opens the file) and with the default one
    (which keeps a small file for a second: links to 64 files, so opens still happen all along)."""
    tree = make_tree(tmp_path / "tree", [f"file-{n:02}.mp3" for n in range(64)], INSIDE, SECRET)
    env = {} if cache_seconds is None else {"GATEWAY_DISK_CACHE_SECONDS": cache_seconds}
    with running_gateway(tree.root, [new_key()], tmp_path / "gateway", extra_env=env) as gateway:
        result = race(
            gateway.base_url,
            [gateway.target(path) for path in tree.paths],
            tree.swapper(),
            leaked=lambda body: SECRET_MARKER in body,
            expected=lambda status, body: (status, body) in ((200, INSIDE), (404, b"Not Found\n")),
            requests=RACE_REQUESTS,
        )
    assert_no_leak(result)


def test_a_rendition_of_a_swapped_directory_never_converts_the_file_outside(tmp_path: Path) -> None:
    """`?format=wav` converts what the gateway opened: the rendition must never be the outside
    recording's (a different length, so a different cache key, is converted afresh)."""
    inside = b"\x10\x00\x20\x00" * 2000  # 4000 samples of a quiet square-ish wave
    secret = SECRET_MARKER * (12000 // len(SECRET_MARKER))  # the secret's bytes as samples
    tree = make_tree(tmp_path / "tree", ["file.wav"], pcm_wav(inside), pcm_wav(secret))
    inside_frames, secret_frames = wav_frames(tree.inside)[3], wav_frames(tree.secret)[3]

    def leaked(body: bytes) -> bool:
        if SECRET_MARKER in body:
            return True
        try:
            return wav_frames(body)[3] == secret_frames
        except (wave.Error, EOFError, struct.error):  # not a WAV: a refusal's text
            return False

    def expected(status: int, body: bytes) -> bool:
        if status == 200:
            return wav_frames(body) == (1, 2, 8000, inside_frames)
        return status in (404, 503)  # 503: conversions momentarily at their limit

    env = {"GATEWAY_DISK_CACHE_SECONDS": "0", "GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path / "renditions")}
    with running_gateway(tree.root, [new_key()], tmp_path / "gateway", extra_env=env) as gateway:
        result = race(
            gateway.base_url,
            [gateway.target(tree.paths[0]) + "?format=wav"],
            tree.swapper(),
            leaked=leaked,
            expected=expected,
            requests=2000,
        )
    assert_no_leak(result)


# -- nginx sending the files (offload mode) ---------------------------------------------------------


def nginx_offload_config(
    prefix: Path, port: int, gateway_port: int, location: str, body: str, http_extra: str = ""
) -> str:
    """nginx proxying to the gateway, with the internal location the gateway's X-Accel-Redirect names
    (and `http_extra`: what that location needs at the http level, such as a map)."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 512;
}}
http {{
    access_log off;
{temp}{http_extra}
    server {{
        listen {HOST}:{port};
        location = /ping {{
            return 200 "ok\\n";
        }}
        location / {{
            proxy_pass http://{HOST}:{gateway_port};
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
        location {location} {{
{body}
        }}
    }}
}}
"""


MINIMAL_INTERNAL_LOCATION = """            internal;
            alias {root}/;
            disable_symlinks on;"""


def example_maps(body: str) -> str:
    """The `map` blocks of nginx.conf.example that define variables `body` uses."""
    text = EXAMPLE.read_text()
    blocks = []
    for match in re.finditer(r"^\s*map\s+\S+\s+\$(\w+)\s*\{[^}]*\}", text, re.MULTILINE):
        if f"${match.group(1)}" in body:
            blocks.append(match.group(0))
    return "\n".join(blocks)


def example_internal_location(root: Path) -> tuple[str, str]:
    """The `internal` location of nginx.conf.example (the one operators deploy), with its alias
    pointed at `root`: (location prefix, body)."""
    text = EXAMPLE.read_text()
    for match in re.finditer(r"location\s+(/\S*)\s*\{", text):
        depth, at = 1, match.end()
        while depth:
            depth += {"{": 1, "}": -1}.get(text[at], 0)
            at += 1
        body = text[match.end() : at - 1]
        if re.search(r"^\s*internal\s*;", body, re.MULTILINE):
            aliased, count = re.subn(r"alias\s+[^;]+;", f"alias {root}/;", body)
            assert count == 1, "the internal location has no alias"
            return match.group(1), aliased
    raise AssertionError("nginx.conf.example has no internal location (X-Accel-Redirect)")


@contextlib.contextmanager
def offload_site(tree: Tree, work: Path, location: str, body: str) -> Iterator[tuple[Gateway, str]]:
    """A gateway in offload mode behind nginx; yields the gateway and nginx's base URL."""
    nginx_binary()  # fails with a message when nginx is missing
    storage = f"file://{quote(str(tree.root))}?accel_redirect={location}"
    env = {"GATEWAY_DISK_CACHE_SECONDS": "0"}
    with running_gateway(tree.root, [new_key()], work / "gateway", storage_url=storage, extra_env=env) as gateway:
        gateway_port = split_base(gateway.base_url)[1]

        def config(prefix: Path, port: int) -> str:
            return nginx_offload_config(prefix, port, gateway_port, location, body, example_maps(body))

        with running_nginx(tree.root, work / "nginx", config=config) as nginx:
            yield gateway, nginx.base_url


def race_through_nginx(tree: Tree, gateway: Gateway, base_url: str) -> Round:
    return race(
        base_url,
        [gateway.target(path) for path in tree.paths],
        tree.swapper(),
        leaked=lambda body: SECRET_MARKER in body,
        # 403: nginx refusing to follow the symlink; 404: the gateway refusing the path.
        expected=lambda status, body: (status == 200 and body == INSIDE) or status in (403, 404),
        requests=3000,
    )


def test_offload_with_symlinks_disabled_never_leaks_the_file_outside(tmp_path: Path) -> None:
    """nginx opens the file the gateway named, later and by name: only `disable_symlinks on` in
    the internal location keeps a swap between the gateway's check and nginx's open harmless."""
    tree = make_tree(tmp_path / "tree", ["file.mp3"], INSIDE, SECRET)
    body = MINIMAL_INTERNAL_LOCATION.format(root=tree.root)
    with offload_site(tree, tmp_path, "/_recordings/", body) as (gateway, base_url):
        result = race_through_nginx(tree, gateway, base_url)
    assert_no_leak(result)


def test_offload_with_the_example_nginx_config_never_leaks_the_file_outside(tmp_path: Path) -> None:
    """The same race through the internal location of nginx.conf.example, as operators deploy it."""
    tree = make_tree(tmp_path / "tree", ["file.mp3"], INSIDE, SECRET)
    location, body = example_internal_location(tree.root)
    with offload_site(tree, tmp_path, location, body) as (gateway, base_url):
        result = race_through_nginx(tree, gateway, base_url)
    assert_no_leak(result)


# -- renditions of files whose headers lie about their length ---------------------------------------

MAX_RENDITION = 10 * MIB  # GATEWAY_TRANSCODE_MAX_RENDITION_BYTES in the cache test
CACHE_BOUND = 20 * MIB  # GATEWAY_TRANSCODE_CACHE_BYTES in the cache test


def honest_bound(source: bytes) -> int:
    """The most a rendition of `source` can honestly be: 16-bit PCM of 4-bit (or smaller) codes
    is a few times the bytes; 64 times is far above any real codec."""
    return 64 * len(source) + 1024


def settled(metrics_url: str) -> Samples:
    """Metrics once no conversion runs (a streamed rendition's last byte can precede its end)."""
    return poll(
        lambda: scrape(metrics_url),
        lambda values: not any(v for (name, _), v in values.items() if name == "gateway_active_conversions"),
        timeout=30.0,
    )


@dataclass
class Fetched:
    status: int
    length: int | None  # Content-Length
    body: bytes
    complete: bool  # the whole Content-Length arrived


def fetch_whole(base_url: str, target: str) -> Fetched:
    """A GET that reports a body cut short instead of raising."""
    host, port = split_base(base_url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", target)
        response = conn.getresponse()
        length = response.getheader("content-length")
        try:
            body, complete = response.read(), True
        except http.client.IncompleteRead as exc:
            body, complete = exc.partial, False
        return Fetched(response.status, None if length is None else int(length), body, complete)
    finally:
        conn.close()


def assert_refused_or_honest(fetched: Fetched, source: bytes) -> None:
    assert fetched.status in (200, 415), (fetched.status, fetched.body[:200])
    if fetched.status == 200:
        assert fetched.length is not None and fetched.length <= honest_bound(source), (
            f"a {fetched.length}-byte rendition of a {len(source)}-byte file"
        )
        assert fetched.complete


def ima_mov(work: Path) -> bytes:
    """Fifty milliseconds of IMA ADPCM in a QuickTime file (under 1 KB)."""
    return encode(work / "tone.mov", 0.05, ["-c:a", "adpcm_ima_qt", "-map_metadata", "-1", "-fflags", "+bitexact"])


@pytest.mark.parametrize("query", ["?inline=1", "?format=wav"])
def test_a_mov_claiming_an_hour_gets_no_rendition_bigger_than_it_can_hold(tmp_path: Path, query: str) -> None:
    """A 1 KB MOV whose sample table says each packet lasts minutes: converting what it claims
    would be 57 MB of mostly silence from 1 KB, written to disk and sent. 415, or an honest size."""
    source = mov_claiming(ima_mov(tmp_path), 3600)
    assert len(source) < 1024
    root = tmp_path / "storage"
    (root / "calls").mkdir(parents=True)
    (root / "calls" / "claims-an-hour.mov").write_bytes(source)
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path / "renditions")}
    with running_gateway(root, [new_key()], tmp_path / "gateway", extra_env=env) as gateway:
        fetched = fetch_whole(gateway.base_url, gateway.target("/calls/claims-an-hour.mov") + query)
    assert_refused_or_honest(fetched, source)


def gsm_wav_claiming_four_hours(work: Path) -> bytes:
    """Half a second of GSM 6.10 in WAV, its header saying 4 hours at 48 kHz (fact and data sizes)."""
    source = encode(work / "tone.wav", 0.5, ["-c:a", "gsm_ms"])
    samples = 4 * 3600 * 48000
    return patch_wav(source, rate=48000, byte_rate=48000 * 65 // 320, samples=samples, data_size=samples // 320 * 65)


BOMBS = {
    "gsm-wav-claiming-4h-at-48k": (gsm_wav_claiming_four_hours, "claims.wav"),
    "ima-mov-claiming-1h": (lambda work: mov_claiming(ima_mov(work), 3600), "claims.mov"),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_rendition_bomb_neither_overfills_the_cache_nor_evicts_what_it_holds(tmp_path: Path, bomb: str) -> None:
    """With renditions capped at 10 MiB and the cache at 20 MiB: the bomb is refused (or honest),
    the cache directory never holds more than its bound, even for a moment, and the rendition made
    before it is still there afterwards."""
    make, name = BOMBS[bomb]
    source = make(tmp_path)
    root = tmp_path / "storage"
    encode(root / "calls" / "earlier.wav", 1, ["-c:a", "gsm_ms"])
    (root / "calls" / name).write_bytes(source)
    cache = tmp_path / "renditions"
    port = free_port()
    env = {
        "GATEWAY_TRANSCODE_CACHE_DIR": str(cache),
        "GATEWAY_TRANSCODE_CACHE_BYTES": str(CACHE_BOUND),
        "GATEWAY_TRANSCODE_MAX_RENDITION_BYTES": str(MAX_RENDITION),
    }
    metrics_url = f"http://{HOST}:{port}"
    with running_gateway(
        root, [new_key()], tmp_path / "gateway", extra_env=env, extra_args=["--metrics-port", str(port)]
    ) as gateway:
        first = fetch_whole(gateway.base_url, gateway.target("/calls/earlier.wav") + "?inline=1")
        assert first.status == 200 and first.complete, first.status
        settled(metrics_url)
        kept = {path: data for path, data in tree_files(cache).items() if data == first.body}
        assert kept, "the earlier rendition is not in the cache"
        with CacheWatch(cache) as watch:
            fetched = fetch_whole(gateway.base_url, gateway.target(f"/calls/{name}") + "?inline=1")
            settled(metrics_url)
    assert_refused_or_honest(fetched, source)
    assert watch.peak <= CACHE_BOUND, f"the cache held {watch.peak} bytes (bound {CACHE_BOUND})"
    assert tree_bytes(cache) <= CACHE_BOUND
    now = tree_files(cache)
    evicted = [str(path.relative_to(cache)) for path, data in kept.items() if now.get(path) != data]
    assert evicted == [], "the bomb evicted renditions made before it"


class CacheWatch:
    """The largest total size of the files under a directory, sampled in a thread."""

    def __init__(self, root: Path, interval: float = 0.005) -> None:
        self.root, self.interval = root, interval
        self.peak = tree_bytes(root)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, tree_bytes(self.root))

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.peak = max(self.peak, tree_bytes(self.root))


# -- files that make the converter fail --------------------------------------------------------------


def stereo_pcm(seconds: float = 1.0) -> bytes:
    return pcm_wav(os.urandom(int(8000 * seconds) * 4), channels=2)


BAD_FILES: dict[str, Callable[[Path], bytes]] = {
    # The header says 2147483647 samples a second (and a byte rate to match): nothing can hold that.
    "absurd-sample-rate": lambda work: patch_wav(stereo_pcm(), rate=2**31 - 1, byte_rate=(2**31 - 1) * 4),
    # Sixty-four channels of PCM in a header that holds one.
    "sixty-four-channels": lambda work: patch_wav(pcm_wav(os.urandom(16000)), channels=64),
    # µ-law, 32 channels at 7 samples a second.
    "mulaw-32-channels-at-7-hz": lambda work: patch_wav(
        encode(work / "mulaw.wav", 0.5, ["-c:a", "pcm_mulaw"]), channels=32, rate=7
    ),
    # A µ-law WAV cut after 100 bytes, claiming 2147483647 samples a second.
    "truncated-absurd-sample-rate": lambda work: patch_wav(
        encode(work / "mulaw.wav", 0.5, ["-c:a", "pcm_mulaw"]), rate=2**31 - 1
    )[:100],
    "riff-header-then-garbage": lambda work: b"RIFF" + struct.pack("<I", 4000) + b"WAVE" + os.urandom(4000),
    "header-only": lambda work: stereo_pcm()[:44],
}


@dataclass
class BadFiles:
    gateway: Gateway
    cache: Path
    sources: dict[str, bytes]

    def get(self, name: str, query: str) -> Fetched:
        return fetch_whole(self.gateway.base_url, self.gateway.target(f"/bad/{name}.wav") + query)


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BadFiles]:
    work = tmp_path_factory.mktemp("bad-files")
    root = work / "storage"
    (root / "bad").mkdir(parents=True)
    sources = {name: make(work / "made") for name, make in BAD_FILES.items()}
    for name, data in sources.items():
        (root / "bad" / f"{name}.wav").write_bytes(data)
    cache = work / "renditions"
    with running_gateway(
        root, [new_key()], work / "gateway", extra_env={"GATEWAY_TRANSCODE_CACHE_DIR": str(cache)}
    ) as gateway:
        yield BadFiles(gateway, cache, sources)


def test_a_wav_declaring_an_absurd_sample_rate_is_415_for_format_wav(bad_files: BadFiles) -> None:
    fetched = bad_files.get("absurd-sample-rate", "?format=wav")
    assert fetched.status == 415, (fetched.status, fetched.body[:200])


@pytest.mark.parametrize("query", ["?format=wav", "?inline=1", "?format=mp3", "?peaks=1"])
@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_never_gets_a_5xx_nor_a_rendition_cut_short(bad_files: BadFiles, name: str, query: str) -> None:
    """A file the converter cannot make sense of is the client's problem (415), not the server's
    (500), and a rendition promised with a Content-Length is delivered whole."""
    fetched = bad_files.get(name, query)
    assert fetched.status < 500, (fetched.status, fetched.body[:200])
    if fetched.status == 200:
        assert fetched.complete, f"a {fetched.length}-byte rendition cut after {len(fetched.body)} bytes"


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_refused_conversion_is_remembered(bad_files: BadFiles, name: str) -> None:
    """Once a file is found unconvertible, asking again costs no conversion: nothing is created in
    the rendition cache (no copy of the source, no output) for the second identical request."""
    first = bad_files.get(name, "?format=wav")
    assert first.status < 500, (first.status, first.body[:200])
    if first.status != 415:
        return  # converted: a cached rendition, nothing to remember
    watch = Creations(bad_files.cache)
    try:
        second = bad_files.get(name, "?format=wav")
        created = watch.collect(wait=0.2)
    finally:
        watch.close()
    assert (second.status, second.body) == (first.status, first.body)
    assert created == [], f"the second request converted again: {created}"


# -- the rendition cache directory -------------------------------------------------------------------

CONFIG_ERROR = "storage-gateway: configuration error: "
CACHE_SETTING = re.compile(r"transcode\.cache_dir|GATEWAY_TRANSCODE_CACHE_DIR")


def serve_until_exit(
    root: Path, work: Path, extra_env: dict[str, str], timeout: float = 20.0
) -> tuple[int | None, str]:
    """Start `storage-gateway serve`: (its exit status, stderr), or (None, stderr) once it serves."""
    work.mkdir(parents=True, exist_ok=True)
    env = gateway_environment([new_key()], root, extra_env=extra_env)
    port = free_port()
    with (work / "stderr").open("wb") as errors:
        process = subprocess.Popen(
            ["storage-gateway", "serve", "--host", HOST, "--port", str(port)],
            env=env,
            cwd=work,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,
        )

    def state() -> int | str | None:
        code = process.poll()
        if code is not None:
            return code
        with contextlib.suppress(OSError):
            if request(f"http://{HOST}:{port}", "/healthz", timeout=2.0).status == 200:
                return "serving"
        return None

    try:
        outcome = poll(state, lambda value: value is not None, timeout=timeout)
    finally:
        stop_process(process)
    assert outcome is not None, f"serve neither exited nor answered within {timeout} s"
    return (outcome if isinstance(outcome, int) else None), (work / "stderr").read_text(errors="replace")


def another_user() -> tuple[int, int]:
    """uid and gid of `nobody`, for a directory that belongs to someone else (needs root to chown)."""
    if os.geteuid() != 0:
        raise AssertionError(
            "this test needs root, to give a directory to another user (chown nobody); CI runs as root"
        )
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


def cache_dir_owned_by_another_user(base: Path) -> Path:
    uid, gid = another_user()
    path = base / "theirs"
    path.mkdir(mode=0o700)
    os.chown(path, uid, gid)
    return path


def cache_dir_with_mode(mode: int) -> Callable[[Path], Path]:
    def make(base: Path) -> Path:
        path = base / f"mode-{mode:o}"
        path.mkdir()
        path.chmod(mode)
        return path

    return make


def cache_dir_behind_a_symlink(base: Path) -> Path:
    (base / "real").mkdir(mode=0o700)
    (base / "link").symlink_to(base / "real", target_is_directory=True)
    return base / "link"


UNSAFE_CACHE_DIRS: dict[str, Callable[[Path], Path]] = {
    "owned-by-another-user": cache_dir_owned_by_another_user,
    "writable-by-everyone-0777": cache_dir_with_mode(0o777),
    "writable-by-the-group-0775": cache_dir_with_mode(0o775),
    "a-symlink-to-a-directory": cache_dir_behind_a_symlink,
}


@pytest.mark.parametrize("kind", list(UNSAFE_CACHE_DIRS))
def test_serve_refuses_a_rendition_cache_someone_else_could_write(tmp_path: Path, kind: str) -> None:
    """Renditions are served as they are found in the cache: a directory another user owns or may
    write, or one a symlink points at (swappable by whoever owns the link's directory), could hand
    clients anything. `serve` stops at once, with one line naming the setting."""
    root = tmp_path / "storage"
    root.mkdir()
    cache = UNSAFE_CACHE_DIRS[kind](tmp_path)
    status, stderr = serve_until_exit(root, tmp_path / "serve", {"GATEWAY_TRANSCODE_CACHE_DIR": str(cache)})
    assert status == 2, f"serve {'kept running' if status is None else f'exited {status}'}; stderr:\n{stderr[-1500:]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(CONFIG_ERROR) and CACHE_SETTING.search(lines[0]), stderr


def test_a_missing_cache_dir_is_made_private(tmp_path: Path) -> None:
    root = tmp_path / "storage"
    root.mkdir()
    cache = tmp_path / "fresh" / "renditions"
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(cache)}
    with running_gateway(root, [new_key()], tmp_path / "gateway", extra_env=env):
        info = cache.lstat()
    assert stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid()
    assert stat.S_IMODE(info.st_mode) == 0o700, oct(info.st_mode)


def shared_temp_entries() -> dict[str, tuple[int, int]]:
    """Everything named storage-gateway* in the shared temporary directories, recursively: path -> (mtime, size)."""
    found: dict[str, tuple[int, int]] = {}
    for temp in {Path("/tmp"), Path(tempfile.gettempdir())}:
        for top in temp.glob("storage-gateway*"):
            for folder, dirs, names in os.walk(top):
                for name in [".", *names]:
                    path = os.path.join(folder, name)
                    with contextlib.suppress(FileNotFoundError):
                        info = os.lstat(path)
                        found[path] = (info.st_mtime_ns, info.st_size)
    return found


def test_the_default_rendition_cache_is_private_to_the_user_not_in_the_shared_tmp(tmp_path: Path) -> None:
    """With no cache directory configured, a conversion writes nothing under /tmp (where any user
    can create `storage-gateway-renditions` first); it goes under $XDG_CACHE_HOME/storage-gateway,
    in a directory only we can enter."""
    root = tmp_path / "storage"
    (root / "calls").mkdir(parents=True)
    (root / "calls" / "call.wav").write_bytes(pcm_wav(os.urandom(16000)))
    home, cache_home = tmp_path / "home", tmp_path / "xdg-cache"
    home.mkdir()
    cache_home.mkdir()
    before = shared_temp_entries()
    env = {"HOME": str(home), "XDG_CACHE_HOME": str(cache_home)}
    with running_gateway(root, [new_key()], tmp_path / "gateway", extra_env=env) as gateway:
        fetched = fetch_whole(gateway.base_url, gateway.target("/calls/call.wav") + "?format=wav")
        assert fetched.status == 200 and fetched.complete, fetched.status
        ours = cache_home / "storage-gateway"
        renditions = poll(
            lambda: [path for path, data in tree_files(ours).items() if data == fetched.body] if ours.is_dir() else [],
            bool,
            timeout=10.0,
        )
    after = shared_temp_entries()
    changed = sorted(path for path in after if before.get(path) != after[path])
    assert changed == [], "the conversion wrote into the shared temporary directory"
    assert renditions, f"no rendition under {ours}"
    private = [
        folder
        for folder in [ours, *ours.rglob("*")]
        if folder.is_dir()
        and stat.S_IMODE(folder.stat().st_mode) == 0o700
        and all(folder in rendition.parents for rendition in renditions)
    ]
    assert private, f"no directory of mode 0700 holds the rendition cache under {ours}"
