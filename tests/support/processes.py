"""Process and HTTP helpers for the end-to-end tests.

Starts the real `storage-gateway serve` process and a real nginx serving the
same storage folder, and talks to them with `http.client` (which sends the
request target exactly as given: no normalisation of `%3D`, `=`, `..`).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

from gateway.links.tokens import TokenError, decrypt_token, encrypt_path

T = TypeVar("T")

HOST = "127.0.0.1"
START_TIMEOUT = 20.0  # seconds a server gets to answer its first request
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def new_key() -> bytes:
    return secrets.token_bytes(32)


# -- the storage folder -----------------------------------------------------

KIB = 1024
MIB = 1024 * KIB

# Storage paths, as they appear inside link tokens.
P64K = "/random-64k.mp3"
P1 = "/one-byte.wav"
P0 = "/empty.mp3"
P8M = "/big-8m.ogg"
PCYR = "/звонок клиента.mp3"
PSPACES = "/name with spaces.mp3"
PSPECIAL = "/odd ?#&%+= name.mp3"
P16 = "/pad16/abcde.mp3"  # 16 UTF-8 bytes: token needs `==` padding
P32 = "/pad32/abcdefghijklmnopqrstu.mp3"  # 32 UTF-8 bytes: token needs `=` padding
PTREE = "/300/2017-02-17-11-05-04_in_300_uhl4.mp3"
TYPED = {
    "/types/a.mp3": "audio/mpeg",
    "/types/a.wav": "audio/wav",
    "/types/a.ogg": "audio/ogg",
    "/types/a.opus": "audio/ogg",
    "/types/a.m4a": "audio/mp4",
    "/types/a.webm": "video/webm",
    "/types/a.mp4": "video/mp4",
    "/types/a.MP3": "audio/mpeg",
    "/types/a.unknownext": "application/octet-stream",
    "/types/noextension": "application/octet-stream",
}
FIXED_MTIME = 1487329504  # 2017-02-17 11:05:04 UTC: validators stay the same between runs
SECRET_MARKER = b"SECRET-OUTSIDE-THE-ROOT-" + secrets.token_hex(16).encode()


@dataclass
class Storage:
    """The storage root, its known files, and a secret file outside it."""

    root: Path
    outside: Path  # a sibling of root holding `secret`
    contents: dict[str, bytes] = field(default_factory=dict)

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def data(self, path: str) -> bytes:
        return self.contents[path]

    def size(self, path: str) -> int:
        return self.file(path).stat().st_size

    def add(self, path: str, data: bytes) -> Path:
        target = self.file(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.contents[path] = data
        return target


def fill_storage(storage: Storage) -> None:
    assert len(P16.encode()) == 16 and len(P32.encode()) == 32
    storage.add(P64K, os.urandom(64 * KIB))
    storage.add(P1, b"\xa5")
    storage.add(P0, b"")
    storage.add(P8M, os.urandom(8 * MIB))
    storage.add(PCYR, os.urandom(3000))
    storage.add(PSPACES, os.urandom(2000))
    storage.add(PSPECIAL, os.urandom(1000))
    storage.add(P16, os.urandom(1600))
    storage.add(P32, os.urandom(3200))
    storage.add(PTREE, os.urandom(40_000))
    for path in TYPED:
        storage.add(path, os.urandom(100))
    for path in storage.contents:
        os.utime(storage.file(path), (FIXED_MTIME, FIXED_MTIME))


# -- HTTP ------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """One HTTP response, read whole."""

    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


def request(
    base_url: str,
    target: str,
    method: str = "GET",
    headers: Mapping[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Reply:
    """Send one request with the target exactly as given and read the whole answer."""
    host, port = split_base(base_url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, target, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        data = response.read()
        return Reply(response.status, response.headers, data)
    finally:
        conn.close()


def split_base(base_url: str) -> tuple[str, int]:
    match = re.fullmatch(r"http://([^:/]+):(\d+)", base_url)
    assert match, base_url
    return match.group(1), int(match.group(2))


def raw_exchange(base_url: str, data: bytes, timeout: float = 10.0) -> bytes:
    """Write raw request bytes (which should say `Connection: close`) and read until EOF.

    No half-close (shutdown(SHUT_WR)) after the request: uvicorn takes a
    half-close for a disconnect and drops the response (uvicorn issue #1264).
    """
    host, port = split_base(base_url)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-case names; last value wins
    head: bytes
    rest: bytes  # everything after the blank line


def parse_raw_response(data: bytes) -> RawResponse:
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return RawResponse(status, headers, head, rest)


@dataclass(frozen=True)
class Part:
    content_type: str | None
    content_range: str
    data: bytes


_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


def boundary_of(content_type: str) -> str:
    match = re.fullmatch(r'multipart/byteranges;\s*boundary="?([^";]+)"?', content_type.strip())
    assert match, f"not multipart/byteranges: {content_type!r}"
    return match.group(1)


def parse_byteranges(content_type: str, body: bytes) -> list[Part]:
    """Parse a multipart/byteranges body strictly, using each part's Content-Range for its length."""
    delimiter = b"--" + boundary_of(content_type).encode("latin-1")
    at = body.find(delimiter)
    assert at >= 0, "no first delimiter"
    assert body[:at].strip(b"\r\n") == b"", f"unexpected preamble {body[:at]!r}"
    pos = at + len(delimiter)
    parts: list[Part] = []
    while True:
        if body[pos : pos + 2] == b"--":
            assert body[pos + 2 :] in (b"", b"\r\n"), f"trailing bytes after close delimiter: {body[pos + 2 :]!r}"
            return parts
        assert body[pos : pos + 2] == b"\r\n", f"bad delimiter line at {pos}"
        head_end = body.index(b"\r\n\r\n", pos)
        fields: dict[str, str] = {}
        for line in body[pos + 2 : head_end].decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        content_range = fields["content-range"]
        match = _CONTENT_RANGE.fullmatch(content_range)
        assert match, content_range
        length = int(match.group(2)) - int(match.group(1)) + 1
        data_start = head_end + 4
        data = body[data_start : data_start + length]
        assert len(data) == length, "part shorter than its Content-Range"
        parts.append(Part(fields.get("content-type"), content_range, data))
        pos = data_start + length
        assert body[pos : pos + 2 + len(delimiter)] == b"\r\n" + delimiter, f"no delimiter after part at {pos}"
        pos += 2 + len(delimiter)


# -- processes -------------------------------------------------------------


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def _wait_ready(base_url: str, probe: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll `probe` until it answers 200; fail with the process's log if it dies or never answers."""
    deadline = time.monotonic() + START_TIMEOUT
    last_error = "no attempt"
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"{what} exited with status {code} before answering:\n{_tail(log)}")
        try:
            reply = request(base_url, probe, timeout=2.0)
            if reply.status == 200:
                return
            last_error = f"status {reply.status}"
        except OSError as exc:
            last_error = repr(exc)
        time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"{what} did not answer {probe} within {START_TIMEOUT}s ({last_error}):\n{_tail(log)}")


def stop_process(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after `timeout`; the process leads its own session (its group is ours)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout)


def gateway_environment(
    keys: Sequence[bytes],
    storage_root: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
) -> dict[str, str]:
    """os.environ without any GATEWAY_* variable, plus the key(s) and the storage.

    `storage_url` replaces the `file://` URL of `storage_root` as GATEWAY_STORAGE
    (e.g. `file:///dir,s3://bucket/prefix`); `extra_env` is applied last.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env["GATEWAY_KEY"] = ",".join(key.hex() for key in keys)
    env["GATEWAY_STORAGE"] = storage_url if storage_url is not None else "file://" + quote(str(storage_root.resolve()))
    env.update(extra_env or {})
    return env


class LoggedProcess:
    """What a started process logged: its `log` file (stdout and stderr), read from an offset on."""

    log: Path

    def log_size(self) -> int:
        """Bytes in the process's log so far."""
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        """What the process logged after `offset` (from log_size())."""
        with self.log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")


@dataclass
class Gateway(LoggedProcess):
    """A running `storage-gateway serve` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    keys: tuple[bytes, ...]
    root: Path
    log: Path  # stdout and stderr, or stdout only when `stderr_log` is set
    stderr_log: Path | None = None  # stderr, when started with split_stderr=True

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def key(self) -> bytes:
        """The key that issues links (the first)."""
        return self.keys[0]

    def token(self, path: str, key: bytes | None = None) -> str:
        return encrypt_path(path, key or self.key)

    def link(self, path: str, key: bytes | None = None) -> str:
        """The full URL of the link for a storage path such as `/300/x.mp3`."""
        return f"{self.base_url}/{self.token(path, key)}"

    def target(self, path: str, key: bytes | None = None) -> str:
        """The request target (`/<token>`) for a storage path."""
        return "/" + self.token(path, key)


def start_gateway(
    root: Path,
    keys: Sequence[bytes],
    workdir: Path,
    workers: int = 1,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
    extra_args: Sequence[str] = (),
    split_stderr: bool = False,
    command_prefix: Sequence[str] = (),
) -> Gateway:
    """`extra_args` are appended to the serve command line (e.g. `--metrics-port N`);
    `split_stderr` writes stderr to its own file (`Gateway.stderr_log`), so `log` holds stdout alone;
    `command_prefix` runs the command through a wrapper that execs it (e.g. `setpriv … --`), so
    `Gateway.pid` is still the gateway's."""
    options = ["--workers", str(workers)] if workers != 1 else []
    options += list(extra_args)
    env = gateway_environment(keys, root, extra_env=extra_env, storage_url=storage_url)
    process, base_url, log = _start_command(
        "serve", options, env, workdir, "gateway", split_stderr=split_stderr, command_prefix=command_prefix
    )
    return Gateway(process, base_url, tuple(keys), root, log, _stderr_path(log) if split_stderr else None)


def _stderr_path(log: Path) -> Path:
    return log.with_suffix(".err")


def _start_command(
    command: str,
    options: Sequence[str],
    env: Mapping[str, str],
    workdir: Path,
    name: str,
    *,
    split_stderr: bool = False,
    command_prefix: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Run `[PREFIX…] storage-gateway COMMAND --host --port … OPTIONS` in its own session;
    wait until /healthz answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / f"{name}-{port}.log"
    with log.open("wb") as sink, contextlib.ExitStack() as stack:
        errors = stack.enter_context(_stderr_path(log).open("wb")) if split_stderr else subprocess.STDOUT
        process = subprocess.Popen(
            [*command_prefix, "storage-gateway", command, "--host", HOST, "--port", str(port), *options],
            env=dict(env),
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=errors,
            start_new_session=True,
        )
    base_url = f"http://{HOST}:{port}"
    _wait_ready(base_url, "/healthz", process, log, f"storage-gateway {command}")
    return process, base_url, log


@contextlib.contextmanager
def running_gateway(
    root: Path,
    keys: Sequence[bytes],
    workdir: Path,
    workers: int = 1,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
    extra_args: Sequence[str] = (),
    split_stderr: bool = False,
    command_prefix: Sequence[str] = (),
) -> Iterator[Gateway]:
    gateway = start_gateway(
        root,
        keys,
        workdir,
        workers,
        extra_env=extra_env,
        storage_url=storage_url,
        extra_args=extra_args,
        split_stderr=split_stderr,
        command_prefix=command_prefix,
    )
    try:
        yield gateway
    finally:
        stop_process(gateway.process)


# -- the link API --------------------------------------------------------------


def api_client_entry(client_id: str, bearer: str, prefix: str) -> str:
    """One GATEWAY_API_CLIENTS entry: `id:sha256hex(bearer):/prefix/`."""
    return f"{client_id}:{hashlib.sha256(bearer.encode()).hexdigest()}:{prefix}"


@dataclass
class ApiServer:
    """A running `storage-gateway api` process."""

    process: subprocess.Popen[bytes]
    base_url: str
    keys: tuple[bytes, ...]
    root: Path
    log: Path

    def post(self, target: str, body: object, bearer: str | None, headers: Mapping[str, str] | None = None) -> Reply:
        """POST `body` as JSON (bytes are sent as they are) with `Authorization: Bearer <bearer>` if given."""
        sent = dict(headers or {})
        if bearer is not None:
            sent.setdefault("Authorization", f"Bearer {bearer}")
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        sent.setdefault("Content-Type", "application/json")
        return request(self.base_url, target, "POST", sent, data)


def start_api(
    root: Path,
    keys: Sequence[bytes],
    workdir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
) -> ApiServer:
    """`storage-gateway api` over the same key(s) and storage as a gateway; clients and public URL in `extra_env`."""
    env = gateway_environment(keys, root, extra_env=extra_env, storage_url=storage_url)
    process, base_url, log = _start_command("api", [], env, workdir, "api")
    return ApiServer(process, base_url, tuple(keys), root, log)


@contextlib.contextmanager
def running_api(
    root: Path,
    keys: Sequence[bytes],
    workdir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
) -> Iterator[ApiServer]:
    api = start_api(root, keys, workdir, extra_env=extra_env, storage_url=storage_url)
    try:
        yield api
    finally:
        stop_process(api.process)


# -- nginx -----------------------------------------------------------------

NGINX_TYPES = {
    "audio/mpeg": "mp3",
    "audio/wav": "wav",
    "audio/ogg": "ogg opus",
    "audio/mp4": "m4a",
    "video/webm": "webm",
    "video/mp4": "mp4",
}


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if found is None:
        raise RuntimeError(
            "nginx is required by the nginx parity tests and was not found on PATH or at /usr/sbin/nginx; "
            "`.ci/run` installs it (through tests/run: apt-get install nginx-light)"
        )
    return found


def nginx_config(prefix: Path, root: Path, port: int) -> str:
    types = "\n".join(f"        {mime} {exts};" for mime, exts in NGINX_TYPES.items())
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""{user}daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{
{types}
    }}
    default_type application/octet-stream;
    sendfile on;
    if_modified_since before;
    max_ranges 16;
    etag on;
    server_tokens off;
    server {{
        listen {HOST}:{port};
        server_name localhost;
        location = /ping {{
            return 200 "ok\\n";
        }}
        location /files/ {{
            alias {root}/;
        }}
    }}
}}
"""


@dataclass
class Nginx:
    process: subprocess.Popen[bytes]
    base_url: str
    prefix: Path
    root: Path

    def target(self, path: str) -> str:
        """The request target serving storage path `path` (percent-encoded UTF-8)."""
        return "/files/" + quote(path.lstrip("/"), safe="/")

    def url(self, path: str) -> str:
        return self.base_url + self.target(path)


def start_nginx(
    root: Path,
    prefix: Path,
    *,
    config: Callable[[Path, int], str] | None = None,
    probe: str = "/ping",
) -> Nginx:
    """nginx serving `root` at /files/, or running `config(prefix, port)` (a whole nginx.conf whose
    plain-HTTP listener on 127.0.0.1:`port` answers 200 to `probe`)."""
    binary = nginx_binary()
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(config(prefix, port) if config else nginx_config(prefix, root.resolve(), port))
    log = prefix / "error.log"
    with (prefix / "stderr.log").open("wb") as sink:
        process = subprocess.Popen(
            [binary, "-p", str(prefix), "-c", str(conf), "-e", str(log)],
            cwd=prefix,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://{HOST}:{port}"
    try:
        _wait_ready(base_url, probe, process, log, "nginx")
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}\nstderr:\n{_tail(prefix / 'stderr.log')}") from None
    return Nginx(process, base_url, prefix, root)


@contextlib.contextmanager
def running_nginx(
    root: Path,
    prefix: Path,
    *,
    config: Callable[[Path, int], str] | None = None,
    probe: str = "/ping",
) -> Iterator[Nginx]:
    nginx = start_nginx(root, prefix, config=config, probe=probe)
    try:
        yield nginx
    finally:
        stop_process(nginx.process)


# -- /proc -----------------------------------------------------------------


def open_fds_to(pid: int, path: Path) -> int:
    """How many of `pid`'s file descriptors point at `path` (or at it deleted)."""
    target = str(path)
    count = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for entry in fd_dir.iterdir():
        try:
            link = os.readlink(entry)
        except OSError:
            continue  # closed meanwhile
        if link == target or link == target + " (deleted)":
            count += 1
    return count


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def poll(probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 5.0, interval: float = 0.05) -> T:
    """Call `probe` until `done(value)` or `timeout` seconds (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def download_sha256(gateway: Gateway, path: str) -> tuple[int, int, int, str]:
    """(status, Content-Length, bytes received, sha256) of a GET, read in chunks (never whole in memory)."""
    host, port = split_base(gateway.base_url)
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        conn.request("GET", gateway.target(path))
        response = conn.getresponse()
        digest = hashlib.sha256()
        received = 0
        while chunk := response.read(MIB):
            digest.update(chunk)
            received += len(chunk)
        return response.status, int(response.headers["Content-Length"]), received, digest.hexdigest()
    finally:
        conn.close()


def undecryptable_token(key: bytes) -> str:
    """A well-formed token that `key` does not decrypt to UTF-8 (reason `decrypt`)."""
    other = new_key()
    for number in range(1000):
        token = encrypt_path(f"/foreign/{number}.mp3", other)
        try:
            decrypt_token(token, [key])
        except TokenError as exc:
            if exc.reason == "decrypt":
                return token
    raise AssertionError("no undecryptable token found")
