"""Parsers of the settings that say where things are: keys, storages, API clients, proxies.

Each takes the raw value (a string, a TOML array or table) and returns what
the services are built from, or raises `Invalid` saying what is wrong. A
key is never echoed back in a message.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from ..http.cors import Cors
from ..http.forwarded import parse_networks
from ..links.clients import ApiClient, parse_client
from ..links.tokens import parse_key
from ..storage.specs import FileStorage, S3Storage, StorageSpec
from .values import Invalid, flag, nonempty_list, text_list, whole

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_OPTIONS = ("redirect", "redirect_expires")
_FILE_OPTIONS = ("accel_redirect",)


def keys(value: object) -> tuple[bytes, ...]:
    """One or more keys (64 hex digits or base64:…), comma-separated or a TOML array."""
    parsed = []
    for number, text in enumerate(nonempty_list(value), 1):
        try:
            parsed.append(parse_key(text))
        except ValueError as exc:
            raise Invalid(f"key {number}: {exc}") from None
    return tuple(parsed)


def key_file(value: object) -> tuple[bytes, ...]:
    """The keys in a file, one per line (a mounted Secret, say)."""
    path = Path(str(value))
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise Invalid(f"cannot read {path}: {exc}") from None
    return keys(",".join(text.split()))


def storages(value: object) -> tuple[StorageSpec, ...]:
    """Storages in fallback order: URL strings (options as query parameters) or TOML tables with `url`."""
    if isinstance(value, list):
        entries = [item for entry in value for item in (text_list(entry) if isinstance(entry, str) else [entry])]
    else:
        entries = list(text_list(value))
    if not entries:
        raise Invalid("is empty")
    return tuple(_storage(entry) for entry in entries)


def _storage(entry: object) -> StorageSpec:
    if isinstance(entry, dict):
        options = {k: v for k, v in entry.items() if k != "url"}
        url = entry.get("url")
        if not isinstance(url, str):
            raise Invalid('a storage table needs url = "file:///…" or "s3://…"')
    elif isinstance(entry, str):
        url, options = entry, {}
    else:
        raise Invalid(f"{entry!r} is not a storage URL")
    parts = urlsplit(url)
    options.update(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "file":
        _only(url, options, _FILE_OPTIONS)
        accel = options.get("accel_redirect") or None
        if accel is not None and not (isinstance(accel, str) and accel.startswith("/") and accel.endswith("/")):
            raise Invalid(f"{url}: accel_redirect must be an nginx location like /_recordings/")
        if parts.netloc not in ("", "localhost"):
            raise Invalid(f"{url}: file URLs name a local directory (file:///abs/dir)")
        root = Path(unquote(parts.path))
        if not root.is_absolute():
            raise Invalid(f"{url}: the directory must be absolute")
        if not root.is_dir():
            raise Invalid(f"{url}: {root} does not exist or is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise Invalid(f"{url}: {root} is not readable by this process")
        return FileStorage(root=root.resolve(), accel_redirect=accel)
    if parts.scheme == "s3":
        _only(url, options, _S3_OPTIONS)
        if not _BUCKET.fullmatch(parts.netloc):
            raise Invalid(f"{url}: {parts.netloc!r} is not a valid bucket name")
        prefix = unquote(parts.path).strip("/")
        try:
            redirect = flag(options.get("redirect", False))
            redirect_seconds = whole(1, 7 * 24 * 3600)(options.get("redirect_expires", 300))
        except Invalid as exc:
            raise Invalid(f"{url}: {exc}") from None
        return S3Storage(
            bucket=parts.netloc,
            prefix=prefix + "/" if prefix else "",
            redirect=redirect,
            redirect_seconds=redirect_seconds,
        )
    raise Invalid(f"{url}: unsupported scheme {parts.scheme or '(none)'!r}; use file:///abs/dir or s3://bucket/prefix")


def _only(url: str, options: dict[str, object], known: tuple[str, ...]) -> None:
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise Invalid(f"{url}: unknown option {unknown[0]!r} (known: {', '.join(known)})")


def api_clients(value: object) -> tuple[ApiClient, ...]:
    """`id:sha256hex(bearer):/prefix/` entries, comma-separated or a TOML array; ids unique."""
    try:
        entries = text_list(value)
    except Invalid:
        raise Invalid("expected a string or a list of strings (id:sha256hex:/prefix/)") from None
    clients: list[ApiClient] = []
    for number, entry in enumerate(entries, 1):
        try:
            client = parse_client(entry)
        except ValueError as exc:
            raise Invalid(f"entry {number}: {exc}") from None
        if any(client.id == seen.id for seen in clients):
            raise Invalid(f"entry {number}: duplicate client id {client.id!r}")
        clients.append(client)
    return tuple(clients)


def networks(value: object) -> tuple[str, ...]:
    """Proxy addresses or CIDRs, checked now and kept as written."""
    items = nonempty_list(value)
    try:
        parse_networks(items)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return tuple(items)


def origins(value: object) -> tuple[str, ...]:
    """Origins whose pages may fetch links (CORS), comma-separated or a TOML array, or `*` for any."""
    try:
        return Cors(nonempty_list(value)).origins
    except ValueError as exc:
        raise Invalid(str(exc)) from None
