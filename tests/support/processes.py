"""Real server processes for the end-to-end tests: `storage-gateway serve` and `api`, and nginx.

Each starts in its own session (so its whole group can be signalled), logs
to a file under the test's work directory, and counts as started when its
probe answers 200; `running_*` stop it again (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from gateway.links.tokens import encrypt_path

from .http import HOST, Reply, request
from .storage import file_url

START_TIMEOUT = 20.0  # seconds a server gets to answer its first request
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# -- processes -------------------------------------------------------------


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "(no log)"


def wait_ready(base_url: str, probe: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
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
    env["GATEWAY_STORAGE"] = storage_url if storage_url is not None else file_url(storage_root)
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

    def log_mark(self, timeout: float = 5.0) -> int:
        """An offset in `log` after which only the access lines of requests made from now on appear.

        The access log is written by a thread after the answer is sent, so
        `log_size()` may fall before lines of requests already answered. A
        request for a marker path (refused: no such link) and a wait for its
        line make sure they are out: one worker writes its lines in order.
        """
        marker = secrets.token_hex(4)
        request(self.base_url, "/" + marker)
        needle = f'"token":"{marker}"'.encode()
        deadline = time.monotonic() + timeout
        while True:
            data = self.log.read_bytes()
            found = data.find(needle)
            if found >= 0:
                return data.index(b"\n", found) + 1
            if time.monotonic() > deadline:
                raise AssertionError(f"the access line of /{marker} did not appear within {timeout}s")
            time.sleep(0.02)


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
    # The suite scrapes a gateway without a metrics port on its one port (tests of the default say so).
    public = {} if "--metrics-port" in options else {"GATEWAY_PUBLIC_METRICS": "true"}
    env = gateway_environment(keys, root, extra_env={**public, **(extra_env or {})}, storage_url=storage_url)
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
    wait_ready(base_url, "/healthz", process, log, f"storage-gateway {command}")
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
        wait_ready(base_url, probe, process, log, "nginx")
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


def wait_exit(process: subprocess.Popen[bytes], timeout: float) -> int | None:
    """The exit status, or None if the process is still running after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            return code
        time.sleep(0.05)
    return process.poll()
