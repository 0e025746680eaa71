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
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import pytest
from crafted import pcm_wav, wav_frames
from servers import (
    HOST,
    SECRET_MARKER,
    Gateway,
    nginx_binary,
    new_key,
    running_gateway,
    running_nginx,
    split_base,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "nginx.conf.example"

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

    def __enter__(self) -> Swapper:
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


@pytest.mark.parametrize(
    "cache_seconds", ["0", None], ids=["no-open-file-cache", "default-open-file-cache"]
)
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
    inside = (b"\x10\x00\x20\x00" * 2000)  # 4000 samples of a quiet square-ish wave
    secret = SECRET_MARKER * (12000 // len(SECRET_MARKER))  # the secret's bytes as samples
    tree = make_tree(tmp_path / "tree", ["file.wav"], pcm_wav(inside), pcm_wav(secret))
    inside_frames, secret_frames = wav_frames(tree.inside)[3], wav_frames(tree.secret)[3]

    def leaked(body: bytes) -> bool:
        if SECRET_MARKER in body:
            return True
        try:
            return wav_frames(body)[3] == secret_frames
        except Exception:  # not a WAV: a refusal's text
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


def nginx_offload_config(prefix: Path, port: int, gateway_port: int, location: str, body: str) -> str:
    """nginx proxying to the gateway, with the internal location the gateway's X-Accel-Redirect names."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "".join(f"    {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 512;
}}
http {{
    access_log off;
{temp}    server {{
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
            return nginx_offload_config(prefix, port, gateway_port, location, body)

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
