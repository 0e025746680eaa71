"""Every setting, declared once: a typed field whose metadata is its row.

A row says the TOML name (the section and the field's name, unless given),
the environment variable, the parser (which holds the bounds), the default
and a one-line meaning. The loader, the README's configuration table and
the check of `config/gateway.example.toml` all read these rows; nothing
else lists the settings.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..links.clients import ApiClient
from ..storage.specs import StorageSpec
from . import sources
from .values import (
    Parser,
    flag,
    http_url,
    http_urls,
    optional_text,
    printable,
    readable_file,
    seconds,
    secret,
    whole,
    writable_directory,
)

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class Row:
    """One setting: where it is read from, how, and what it means."""

    toml: str  # flattened: [edge] chunk_size is edge.chunk_size
    env: str
    parse: Parser
    doc: str
    default: object = None  # shown in the table; None: no default
    shown: str | None = None  # the default as the table shows it, when the value does not say it well
    attribute: str = ""  # the field it fills (section.field), set by `rows()`
    aliases: tuple[str, ...] = ()  # other TOML spellings of the same setting


def setting(env: str, parse: Parser, default: Any, doc: str, *, toml: str = "", shown: str | None = None,
            aliases: tuple[str, ...] = (), factory: Any = None, repr: bool = True) -> Any:  # fmt: skip
    """A dataclass field carrying its row."""
    row = Row(toml, env, parse, doc, default if factory is None else factory(), shown, aliases=aliases)
    if factory is not None:
        return field(default_factory=factory, repr=repr, metadata={"row": row})
    return field(default=default, repr=repr, metadata={"row": row})


def default_cache_dir() -> Path:
    """The user's own cache (XDG), never a fixed name in the shared temporary directory."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base.startswith("/") else Path.home() / ".cache") / "storage-gateway" / "renditions"


def default_ledger_dir() -> Path:
    """The user's state directory (XDG): the outbox is data to keep, not a cache."""
    base = os.environ.get("XDG_STATE_HOME", "").strip()
    return (Path(base) if base.startswith("/") else Path.home() / ".local" / "state") / "storage-gateway" / "ledger"


@dataclass(frozen=True)
class Edge:
    """[edge]: how the public edge answers."""

    require_signed: bool = setting("GATEWAY_REQUIRE_SIGNED", flag, False, "refuse unsigned legacy links (`403`)")
    drain_seconds: float = setting(
        "GATEWAY_DRAIN_SECONDS", seconds(3600), 30.0, "after SIGTERM, how long running downloads may finish"
    )
    trusted_proxies: tuple[str, ...] = setting(
        "GATEWAY_TRUSTED_PROXIES", sources.networks, (),
        "addresses/CIDRs whose `X-Forwarded-For` is believed (access log client address)", shown="—",
    )  # fmt: skip
    cache_control: str = setting(
        "GATEWAY_CACHE_CONTROL", printable, "private, max-age=3600", "`Cache-Control` sent with files"
    )
    max_ranges: int = setting(
        "GATEWAY_MAX_RANGES", whole(1, 1000), 16,
        "more ranges than this in one request and the `Range` header is ignored (as nginx's `max_ranges`)",
    )  # fmt: skip
    chunk_size: int = setting(
        "GATEWAY_CHUNK_SIZE", whole(4096, 16 * MIB), 512 * KIB,
        "bytes read per step while streaming; files up to this size are read in one step",
    )  # fmt: skip
    access_log: bool = setting("GATEWAY_ACCESS_LOG", flag, True, "one log line per request")
    header_timeout: float = setting(
        "GATEWAY_HEADER_TIMEOUT", seconds(300, True), 15.0,
        "seconds a request head may take to arrive (nginx's `client_header_timeout`); past it `408` and the "
        "connection is closed",
    )  # fmt: skip
    max_connections: int = setting(
        "GATEWAY_MAX_CONNECTIONS", whole(16, 1_000_000), 1024,
        "client connections per worker (kept below its descriptor limit); at the bound the one waiting longest "
        "without a request is closed, or the new one refused with `503` when all are busy",
    )  # fmt: skip
    metrics_port: int | None = setting(
        "GATEWAY_METRICS_PORT", whole(1, 65535), None,
        "serve `/metrics` on this port of `--host` (`serve --metrics-port` sets it too); keep it private",
    )  # fmt: skip
    public_metrics: bool = setting(
        "GATEWAY_PUBLIC_METRICS", flag, False,
        "also serve `/metrics` on the public port; off, it is the plain `404` there (its labels tell refusal "
        "reasons apart, which the public `404` must not)",
    )  # fmt: skip
    cors_origins: tuple[str, ...] = setting(
        "GATEWAY_CORS_ORIGINS", sources.origins, (),
        "origins whose pages may fetch links and their views (CORS), comma-separated (or a TOML list), or `*` "
        "for any; they may also frame the listening page (see \"Views of a recording\")", shown="—",
    )  # fmt: skip


@dataclass(frozen=True)
class Disk:
    """[disk]: files on local directories."""

    cache_seconds: float = setting(
        "GATEWAY_DISK_CACHE_SECONDS", seconds(3600), 1.0,
        "small files (up to one chunk) just read are served from memory for this long, like nginx's "
        "`open_file_cache`; `0` turns it off",
    )  # fmt: skip
    cache_bytes: int = setting("GATEWAY_DISK_CACHE_BYTES", whole(0, 2**40), 32 * MIB, "upper bound of that cache")


@dataclass(frozen=True)
class Transcode:
    """[transcode]: renditions (playable audio for inline links, ?format= conversions, ?peaks= waveforms)."""

    inline: bool = setting(
        "GATEWAY_TRANSCODE_INLINE", flag, True,
        'inline links to audio browsers cannot play get a PCM WAV rendition (see "Playable renditions"); '
        "`false` sends the original",
    )  # fmt: skip
    cache_dir: Path = setting(
        "GATEWAY_TRANSCODE_CACHE_DIR", writable_directory, None,
        "where renditions are kept, shared by the workers of a host; made by `serve` (mode 0700), refused unless "
        "it is a real directory of the gateway's user that no one else may write",
        factory=default_cache_dir, shown="`$XDG_CACHE_HOME/storage-gateway/renditions` (`~/.cache/…`)",
    )  # fmt: skip
    cache_bytes: int = setting(
        "GATEWAY_TRANSCODE_CACHE_BYTES", whole(MIB, 2**50), GIB,
        "upper bound of that cache (at least 1 MiB); least recently used renditions are removed past it",
    )  # fmt: skip
    max_conversions: int = setting(
        "GATEWAY_TRANSCODE_MAX_CONVERSIONS", whole(1, 256), 2,
        "conversions running at once on the host, all workers together; past it requests wait their turn",
    )  # fmt: skip
    max_cpu_seconds: float = setting(
        "GATEWAY_TRANSCODE_MAX_CPU_SECONDS", seconds(24 * 3600), 120.0,
        "CPU time one conversion may use (`0`: no limit); past it the recording is answered `415`",
    )  # fmt: skip
    max_rendition_bytes: int = setting(
        "GATEWAY_TRANSCODE_MAX_RENDITION_BYTES", whole(MIB, 4 * GIB - 64 * KIB), 512 * MIB,
        "largest rendition made (lowered to `transcode.cache_bytes` where that is smaller; a WAV holds at most "
        "4 GiB); past it the recording is answered `415`",
    )  # fmt: skip
    queue_seconds: float = setting(
        "GATEWAY_TRANSCODE_QUEUE_SECONDS", seconds(600), 30.0,
        "how long a request waits for a conversion slot; past it `503` with `Retry-After`",
    )  # fmt: skip
    max_queued: int = setting(
        "GATEWAY_TRANSCODE_MAX_QUEUED", whole(0, 10000), 100,
        "requests waiting for a conversion slot in one worker at most; past it `503` at once",
    )  # fmt: skip

    @property
    def rendition_limit(self) -> int:
        """The largest rendition made: `max_rendition_bytes`, lowered to `cache_bytes` so one always fits the cache."""
        return min(self.max_rendition_bytes, self.cache_bytes)


@dataclass(frozen=True)
class S3:
    """[s3]: how every S3 storage talks to its endpoint."""

    endpoint_url: str | None = setting(
        "GATEWAY_S3_ENDPOINT_URL", http_url, None, "S3-compatible endpoint (MinIO, Ceph, moto)", shown="AWS"
    )
    region: str | None = setting(
        "GATEWAY_S3_REGION", optional_text, None,
        "region; credentials come from the standard AWS variables and files", shown="AWS default",
    )  # fmt: skip
    connect_timeout: float = setting("GATEWAY_S3_CONNECT_TIMEOUT", seconds(600, True), 2.0, "seconds to connect to S3")
    read_timeout: float = setting(
        "GATEWAY_S3_READ_TIMEOUT", seconds(600, True), 10.0, "seconds S3 may stay silent while answering"
    )
    max_attempts: int = setting(
        "GATEWAY_S3_MAX_ATTEMPTS", whole(1, 20), 2,
        "attempts per S3 call, the first included (botocore standard retry mode); no call waits longer than "
        "(connect + read timeout) × attempts",
    )  # fmt: skip
    max_pool_connections: int = setting(
        "GATEWAY_S3_MAX_POOL_CONNECTIONS", whole(1, 10000), 256,
        "S3 connections per worker for bodies (lookups have their own small pool, so stalled downloads never "
        "block them)",
    )  # fmt: skip
    cache_seconds: float = setting(
        "GATEWAY_S3_CACHE_SECONDS", seconds(3600), 5.0,
        "a found object's size and ETag are remembered this long, so a player seeking through it costs one S3 "
        "round trip per range; `0` turns it off",
    )  # fmt: skip


@dataclass(frozen=True)
class Ledger:
    """[ledger]: the listening ledger, delivered to webhooks; on when `webhook_urls` are set."""

    webhook_urls: tuple[str, ...] = setting(
        "GATEWAY_WEBHOOK_URLS", http_urls, (),
        'turn the listening ledger on: http(s) URLs, comma-separated or a TOML list, that each receive every event '
        '(see "The listening ledger"); `ledger.webhook_secret` is then required',
    )  # fmt: skip
    webhook_secret: str | None = setting(
        "GATEWAY_WEBHOOK_SECRET", secret, None,
        "signs every delivery (`X-Gateway-Signature`, HMAC-SHA256), at least 16 characters", repr=False,
    )  # fmt: skip
    dir: Path = setting(
        "GATEWAY_LEDGER_DIR", writable_directory, None,
        "the outbox (SQLite) on local disk, one per host, shared by its workers; made by `serve` (mode 0700), "
        "refused unless it is a real directory of the gateway's user that no one else may write; keep it on a disk "
        "that outlives restarts",
        factory=default_ledger_dir, shown="`$XDG_STATE_HOME/storage-gateway/ledger` (`~/.local/state/…`)",
    )  # fmt: skip
    session_idle_seconds: float = setting(
        "GATEWAY_LEDGER_SESSION_IDLE_SECONDS", seconds(7 * 24 * 3600, True), 300.0,
        "a listening session (the inline plays of one link by one client) ends once idle this long; its `listen` "
        "event follows",
    )  # fmt: skip
    max_events: int = setting(
        "GATEWAY_LEDGER_MAX_EVENTS", whole(1, 10**9), 1_000_000,
        "undelivered events kept at most (about half a KiB each on disk); past it the oldest are dropped and counted",
    )  # fmt: skip
    webhook_batch_size: int = setting(
        "GATEWAY_WEBHOOK_BATCH_SIZE", whole(1, 10_000), 500, "events per delivery (one `POST`)"
    )
    webhook_timeout: float = setting(
        "GATEWAY_WEBHOOK_TIMEOUT", seconds(600, True), 10.0,
        "seconds one delivery attempt may take in all (connecting, sending, the answer); past it the attempt "
        "fails and is retried",
    )  # fmt: skip
    webhook_retry_seconds: float = setting(
        "GATEWAY_WEBHOOK_RETRY_SECONDS", seconds(3600, True), 1.0,
        "wait before the first retry of a failed delivery; it doubles at each retry (with jitter)",
    )  # fmt: skip
    webhook_max_retry_seconds: float = setting(
        "GATEWAY_WEBHOOK_MAX_RETRY_SECONDS", seconds(24 * 3600, True), 300.0,
        "longest wait between retries (a `Retry-After` is honoured up to it)",
    )  # fmt: skip

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_urls)


# The key may come from either of two settings; both fill `Settings.keys`.
KEY_FILE = Row(
    "key_file", "GATEWAY_KEY_FILE", sources.key_file, "read the key(s) from a file instead (one per line), "
    "e.g. a mounted Secret", attribute="keys",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Everything a command runs with, validated; the key never appears in its repr."""

    keys: tuple[bytes, ...] = setting(
        "GATEWAY_KEY", sources.keys, None,
        "shared key(s): 64 hex digits or `base64:` + base64 of 32 bytes; comma-separated (or a TOML list) for "
        "rotation: the first issues links, all are tried when serving", toml="key", repr=False,
    )  # fmt: skip
    storages: tuple[StorageSpec, ...] = setting(
        "GATEWAY_STORAGE", sources.storages, (),
        "`file:///abs/dir` or `s3://bucket[/prefix]`, several comma-separated (or a TOML list) tried in order "
        "per file; S3 options as query parameters or a TOML table (below)", toml="storage",
    )  # fmt: skip
    public_url: str | None = setting(
        "GATEWAY_PUBLIC_URL", http_url, None, "base URL put in front of issued tokens (required by `api`)"
    )
    clients: tuple[ApiClient, ...] = setting(
        "GATEWAY_API_CLIENTS", sources.api_clients, (),
        "link-API clients, `id:sha256hex(bearer):/prefix/`, comma-separated or a TOML list",
        toml="api_clients", aliases=("api.clients",),
    )  # fmt: skip
    revocation_file: Path | None = setting(
        "GATEWAY_REVOCATION_FILE", readable_file, None,
        "the revocation list (below); must exist at start, re-read when it changes",
    )  # fmt: skip
    edge: Edge = field(default_factory=Edge)
    disk: Disk = field(default_factory=Disk)
    transcode: Transcode = field(default_factory=Transcode)
    s3: S3 = field(default_factory=S3)
    ledger: Ledger = field(default_factory=Ledger)
    # Set when no key and no storage were configured: the embedded default.
    dev_dir: Path | None = None


SECTIONS = {"edge": Edge, "disk": Disk, "transcode": Transcode, "s3": S3, "ledger": Ledger}
# Read from the environment only: they choose the configuration rather than being part of it.
CONFIG_FILE_ENV = "GATEWAY_CONFIG"
DEV_DIR_ENV = "GATEWAY_DEV_DIR"
ENVIRONMENT_ONLY = (
    Row("", CONFIG_FILE_ENV, str, "the TOML file, when `--config` is not given"),
    Row("", DEV_DIR_ENV, str, "where the development default lives", default="./.gateway-dev"),
)


def rows() -> Iterator[Row]:
    """Every setting, in the order of the README's table."""
    for item in dataclasses.fields(Settings):
        row = item.metadata.get("row")
        if row is not None:
            yield dataclasses.replace(row, toml=row.toml or item.name, attribute=item.name)
            if item.name == "keys":
                yield KEY_FILE
    for section, cls in SECTIONS.items():
        for item in dataclasses.fields(cls):
            row = item.metadata["row"]
            yield dataclasses.replace(row, toml=f"{section}.{item.name}", attribute=f"{section}.{item.name}")


def _shown(row: Row) -> str:
    if row.shown is not None:
        return row.shown
    if row.default is None or row.default == ():
        return "—"
    if isinstance(row.default, bool):
        return f"`{str(row.default).lower()}`"
    return f"`{row.default}`"


def markdown_table() -> str:
    """The README's configuration table, made from the rows."""
    lines = ["| TOML | environment | default | meaning |", "|---|---|---|---|"]
    for row in (*rows(), *ENVIRONMENT_ONLY):
        names = " or ".join(f"`{name}`" for name in (row.toml, *row.aliases)) if row.toml else "—"
        lines.append(f"| {names} | `{row.env}` | {_shown(row)} | {row.doc} |")
    return "\n".join(lines)
