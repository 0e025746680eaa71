"""The `storage-gateway` command: serve, make and read links, make keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import hashlib
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import __version__
from .common.metrics import MULTIPROC_ENV
from .config import CONFIG_FILE_ENV, LINK_SETTINGS, ConfigError, Settings, load_settings
from .config.devdefault import SAMPLE_PATHS
from .links.paths import PathRefused, confine
from .links.tokens import KEY_BYTES, TokenError, encrypt_path, format_key

if TYPE_CHECKING:
    from .links.inspect import LinkReport


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storage-gateway", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--config", type=Path, metavar="FILE", help="TOML configuration (environment overrides it)")
        return sub

    serve = command("serve", "run the public edge")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve /metrics on this port only (keep it private)"
    )

    link = command("link", "make or read a link token")
    link_commands = link.add_subparsers(dest="link_command", required=True, metavar="ACTION")
    encrypt = link_commands.add_parser("encrypt", help="print the token (or URL) for a path")
    encrypt.add_argument("path")
    decrypt = link_commands.add_parser("decrypt", help="print the path inside a token or link URL")
    decrypt.add_argument("token_or_url")
    for sub in (encrypt, decrypt):
        sub.add_argument("--config", type=Path, metavar="FILE", default=argparse.SUPPRESS)

    api = command("api", "run the link API (internal; clients authenticate with bearer tokens)")
    api.add_argument("--host", default="127.0.0.1")
    api.add_argument("--port", type=int, default=8081)

    api_client = commands.add_parser("api-client", help="manage link-API clients")
    api_client_commands = api_client.add_subparsers(dest="api_client_command", required=True, metavar="ACTION")
    add = api_client_commands.add_parser(
        "add", help="make a bearer token for a new client and print the configuration entry for it"
    )
    add.add_argument("id", help="the client's name, e.g. crm")
    add.add_argument("--prefix", required=True, help="the paths it may link to, e.g. /300/ (/ for everything)")

    keygen = commands.add_parser("keygen", help="print a new random key")
    keygen.add_argument("--base64", action="store_true", help="print the base64: form instead of hex")

    webhook = commands.add_parser("webhook", help="check deliveries of the listening ledger")
    webhook_commands = webhook.add_subparsers(dest="webhook_command", required=True, metavar="ACTION")
    verify = webhook_commands.add_parser(
        "verify", help="check the signature of one delivery: exit status 0 when valid, 1 otherwise"
    )
    verify.add_argument("--secret", help="the webhook secret (default: GATEWAY_WEBHOOK_SECRET)")
    verify.add_argument("--signature", required=True, help="the X-Gateway-Signature header, t=…,v1=…")
    verify.add_argument(
        "--tolerance", type=float, default=300.0, help="seconds the signature's time may be from now (default 300)"
    )
    verify.add_argument("file", help="the body exactly as received (- for standard input)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keygen":
        key = secrets.token_bytes(KEY_BYTES)
        import base64

        print("base64:" + base64.b64encode(key).decode() if args.base64 else format_key(key))
        return 0
    if args.command == "api-client":
        return _api_client_add(args.id, args.prefix)
    if args.command == "webhook":
        return _webhook_verify(args)
    try:
        # A link is made with the key alone: `link encrypt` runs where no storage is mounted.
        only = LINK_SETTINGS if args.command == "link" and args.link_command == "encrypt" else None
        settings = load_settings(args.config, only=only)
    except ConfigError as exc:
        print(f"storage-gateway: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(args, settings)
    if args.command == "api":
        return _api(args, settings)
    if args.link_command == "encrypt":
        return _encrypt(args.path, settings)
    return _decrypt(args.token_or_url, settings)


def _encrypt(path: str, settings: Settings) -> int:
    try:
        confine(path)
        token = encrypt_path(path, settings.keys[0])
    except (PathRefused, ValueError) as exc:
        print(f"storage-gateway: cannot make a link for {path!r}: {exc}", file=sys.stderr)
        return 1
    print(f"{settings.public_url}/{token}" if settings.public_url else token)
    return 0


def _decrypt(token_or_url: str, settings: Settings) -> int:
    """The path on the first line (for scripts), then what the link API's resolve says, one field a line."""
    try:
        report = asyncio.run(_inspect(token_or_url, settings))
    except TokenError as exc:
        print(f"storage-gateway: not a link token ({exc.reason}): {exc}", file=sys.stderr)
        return 1
    print(report.path)
    for line in report.lines():
        print(line)
    return 0


async def _inspect(link: str, settings: Settings) -> LinkReport:
    from .services import build_services

    services = build_services(settings, converting=False)
    async with services.running(watch_revocations=False):
        return await services.inspector.inspect(link)


def _log_config() -> dict:
    """uvicorn's logging, plus ours: text on stderr (the JSON access lines go to stdout by themselves)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["gateway"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


@contextlib.contextmanager
def _metrics_directory(workers: int) -> Iterator[None]:
    """A fresh prometheus multiprocess directory for this run, removed at exit.

    Only several workers need one (a single process counts in memory, about
    twice as fast per request). Set before anything imports
    prometheus-client, which picks its storage at import time. An
    operator-provided PROMETHEUS_MULTIPROC_DIR is kept but emptied at start.
    """
    if workers == 1 and not os.environ.get(MULTIPROC_ENV):
        yield
        return
    if os.environ.get(MULTIPROC_ENV):
        given = Path(os.environ[MULTIPROC_ENV])
        given.mkdir(parents=True, exist_ok=True)
        for stale in given.glob("*.db"):  # an earlier run's totals must not carry over
            stale.unlink()
        yield
        return
    directory = tempfile.mkdtemp(prefix="storage-gateway-metrics-")
    os.environ[MULTIPROC_ENV] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    metrics_port = args.metrics_port or settings.edge.metrics_port
    if settings.dev_dir is not None:
        _print_dev_banner(settings, args.host, args.port, metrics_port)
    from .common.files import UnsafeDirectory, private_directory

    private = [(settings.transcode.cache_dir, "transcode.cache_dir (GATEWAY_TRANSCODE_CACHE_DIR)")]
    if settings.ledger.enabled:
        private.append((settings.ledger.dir, "ledger.dir (GATEWAY_LEDGER_DIR)"))
    for directory, setting in private:
        try:
            # Made (or checked) here, once, so a directory that is not this user's alone stops `serve` (exit 2).
            private_directory(directory)
        except (OSError, UnsafeDirectory) as exc:
            problem = f"cannot make {directory}: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            print(f"storage-gateway: configuration error: {setting}: {problem}", file=sys.stderr)
            return 2
    # Workers are fresh interpreters: they re-read the same configuration.
    if args.config:
        os.environ[CONFIG_FILE_ENV] = str(args.config.resolve())
    if settings.dev_dir is not None:
        os.environ["GATEWAY_DEV_DIR"] = str(settings.dev_dir)
    with _metrics_directory(args.workers):
        from .common.metrics import serve_on_port
        from .edge.app import create_app
        from .edge.protocol import GuardedHttpToolsProtocol
        from .edge.supervisor import Supervisor

        if metrics_port:
            serve_on_port(args.host, metrics_port)
        options: dict[str, Any] = {
            "host": args.host,
            "port": args.port,
            "loop": "uvloop",
            "http": GuardedHttpToolsProtocol,  # httptools, with a head deadline and bounded connections
            "access_log": False,  # ours is structured: gateway.access
            "proxy_headers": False,  # X-Forwarded-For is honoured from trusted proxies only, by us
            "server_header": False,
            "timeout_graceful_shutdown": settings.edge.drain_seconds,
            "log_config": _log_config(),
        }
        if args.workers == 1:
            uvicorn.run(create_app(settings), **options)
        else:
            config = uvicorn.Config("gateway.edge.app:create_app", factory=True, workers=args.workers, **options)
            Supervisor(config, sockets=[config.bind_socket()]).run()
    return 0


def _api(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from .api.app import build_api

    try:
        app = build_api(settings)
    except ConfigError as exc:
        print(f"storage-gateway: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        access_log=settings.edge.access_log,
        server_header=False,
        log_config=_log_config(),
    )
    return 0


def _api_client_add(client_id: str, prefix: str) -> int:
    """A new random bearer token (shown once, stored nowhere) and the entry that configures its hash."""
    from .links.clients import parse_client

    token = secrets.token_urlsafe(32)
    entry = f"{client_id}:{hashlib.sha256(token.encode()).hexdigest()}:{prefix}"
    try:
        parse_client(entry)
    except ValueError as exc:
        print(f"storage-gateway: {exc}", file=sys.stderr)
        return 2
    print(f"token: {token}")
    print(f"client: {entry}")
    print(
        "storage-gateway: give the token to the client now: it is shown once and stored nowhere.\n"
        "storage-gateway: add the client entry to GATEWAY_API_CLIENTS (comma-separated) or to `clients`\n"
        "  under [api] in the TOML file, then restart `storage-gateway api`.",
        file=sys.stderr,
    )
    return 0


def _webhook_verify(args: argparse.Namespace) -> int:
    """One delivery checked as a receiver would: its body, its signature header, the secret, the replay window."""
    from .ledger.signing import BadSignature, verify

    secret = args.secret or os.environ.get("GATEWAY_WEBHOOK_SECRET", "").strip()
    if not secret:
        print("storage-gateway: give the webhook secret with --secret or GATEWAY_WEBHOOK_SECRET", file=sys.stderr)
        return 1
    try:
        body = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
        signed_at = verify(secret.encode(), args.signature, body, args.tolerance)
    except OSError as exc:
        print(f"storage-gateway: invalid: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    except BadSignature as exc:
        print(f"storage-gateway: invalid: {exc}", file=sys.stderr)
        return 1
    print(f"valid: signed at {signed_at} ({time.time() - signed_at:.0f} s ago)")
    return 0


def _print_dev_banner(settings: Settings, host: str, port: int, metrics_port: int | None) -> None:
    base = settings.public_url or f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    assert settings.dev_dir is not None
    lines = [
        "storage-gateway: no key or storage configured, using the development default:",
        f"  recordings: {settings.storages[0].root}",
        f"  key file:   {settings.dev_dir / 'dev.key'} (development only; configure GATEWAY_KEY for real use)",
        "  sample links (paste into a browser):",
    ]
    for path in SAMPLE_PATHS:
        token = encrypt_path(path, settings.keys[0])
        lines.append(f"    {path}\n      download: {base}/{token}\n      play:     {base}/{token}?inline=1")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if metrics_port:
        lines.append(f"  metrics: http://{shown}:{metrics_port}/metrics")
    else:
        lines.append("  metrics: not served (add --metrics-port PORT; never on the public port)")
    print("\n".join(lines), file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
