"""All configuration in one place: a TOML file overridden by GATEWAY_* variables.

Validated once, at start: a bad setting stops the process with a one-line
message naming the setting (exit status 2), never a traceback and never a
failure at the first request.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from . import devdefaults
from .accesslog import parse_networks
from .paths import PathRefused, confine
from .tokens import parse_key


class ConfigError(Exception):
    """A setting that cannot be used; str() is the whole message for the operator."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"configuration error: {setting}: {problem}")
        self.setting = setting


@dataclass(frozen=True)
class FileStorage:
    """A local directory holding recordings (`file:///abs/dir`).

    `accel_redirect`: an nginx internal location (`/_recordings/`) that
    serves this directory; files are then handed to nginx to send.
    """

    root: Path
    accel_redirect: str | None = None


@dataclass(frozen=True)
class S3Storage:
    """A bucket and key prefix (`s3://bucket[/prefix]`); `redirect` hands off with a presigned URL."""

    bucket: str
    prefix: str = ""
    redirect: bool = False
    redirect_seconds: int = 300


StorageSpec = FileStorage | S3Storage


@dataclass(frozen=True)
class S3Client:
    """How every S3 storage of this process talks to its endpoint."""

    endpoint_url: str | None = None
    region: str | None = None
    connect_timeout: float = 2.0
    read_timeout: float = 10.0
    max_attempts: int = 2
    max_pool_connections: int = 256
    ready_cache_seconds: float = 5.0
    cache_seconds: float = 5.0
    cache_entries: int = 10000


@dataclass(frozen=True)
class Transcode:
    """Renditions: playable audio for inline links, ?format= conversions, ?peaks= waveforms.

    `inline`: inline links to audio browsers cannot play get a PCM WAV
    rendition. `cache_dir`/`cache_bytes`: where renditions are kept, and how
    many bytes at most (least recently used evicted). `max_conversions`:
    conversions running at once on this host (all workers sharing
    `cache_dir`); past it the answer is 503 with Retry-After.
    `max_cpu_seconds`: CPU time one conversion may use (0: no limit); past
    it the recording is answered 415, so none holds a slot for ever.
    """

    inline: bool = True
    cache_dir: Path = Path(tempfile.gettempdir()) / "storage-gateway-renditions"
    cache_bytes: int = 1024 * 1024 * 1024
    max_conversions: int = 2
    # Ten minutes of GSM take 0.3 s to WAV and 4 s to Opus here: 120 s is hours of audio.
    max_cpu_seconds: float = 120.0


@dataclass(frozen=True)
class ApiClient:
    """One link-API client: its id, the SHA-256 of its bearer token, the paths it may link to.

    `prefix` is confined and ends with `/` (`300/`), or is empty for the whole storage.
    """

    id: str
    token_sha256: bytes = field(repr=False)
    prefix: str

    @property
    def display_prefix(self) -> str:
        return "/" + self.prefix

    def allows(self, confined_path: str) -> bool:
        """Whether a confined path (`300/x.mp3`) lies under this client's prefix."""
        return confined_path.startswith(self.prefix)


@dataclass(frozen=True)
class Settings:
    keys: tuple[bytes, ...] = field(repr=False)
    storages: tuple[StorageSpec, ...]
    public_url: str | None = None
    s3: S3Client = field(default_factory=S3Client)
    clients: tuple[ApiClient, ...] = ()
    revocation_file: Path | None = None
    require_signed: bool = False
    drain_seconds: float = 30.0
    trusted_proxies: tuple[str, ...] = ()
    cache_control: str = "private, max-age=3600"
    max_ranges: int = 16
    chunk_size: int = 512 * 1024
    access_log: bool = True
    disk_cache_seconds: float = 1.0
    disk_cache_bytes: int = 32 * 1024 * 1024
    transcode: Transcode = field(default_factory=Transcode)
    # Set when no key and no storage were configured: the embedded default.
    dev_dir: Path | None = field(default=None)


# (TOML key, environment variable). Sections are flattened: [edge] chunk_size -> edge.chunk_size.
_SETTINGS = {
    "key": "GATEWAY_KEY",
    "key_file": "GATEWAY_KEY_FILE",
    "storage": "GATEWAY_STORAGE",
    "public_url": "GATEWAY_PUBLIC_URL",
    "s3.endpoint_url": "GATEWAY_S3_ENDPOINT_URL",
    "s3.region": "GATEWAY_S3_REGION",
    "s3.connect_timeout": "GATEWAY_S3_CONNECT_TIMEOUT",
    "s3.read_timeout": "GATEWAY_S3_READ_TIMEOUT",
    "s3.max_attempts": "GATEWAY_S3_MAX_ATTEMPTS",
    "s3.max_pool_connections": "GATEWAY_S3_MAX_POOL_CONNECTIONS",
    "s3.cache_seconds": "GATEWAY_S3_CACHE_SECONDS",
    "api_clients": "GATEWAY_API_CLIENTS",
    "api.clients": "GATEWAY_API_CLIENTS",  # the same list, spelled as [api] clients in the file
    "revocation_file": "GATEWAY_REVOCATION_FILE",
    "edge.require_signed": "GATEWAY_REQUIRE_SIGNED",
    "edge.drain_seconds": "GATEWAY_DRAIN_SECONDS",
    "edge.trusted_proxies": "GATEWAY_TRUSTED_PROXIES",
    "edge.cache_control": "GATEWAY_CACHE_CONTROL",
    "edge.max_ranges": "GATEWAY_MAX_RANGES",
    "edge.chunk_size": "GATEWAY_CHUNK_SIZE",
    "edge.access_log": "GATEWAY_ACCESS_LOG",
    "disk.cache_seconds": "GATEWAY_DISK_CACHE_SECONDS",
    "disk.cache_bytes": "GATEWAY_DISK_CACHE_BYTES",
    "transcode.inline": "GATEWAY_TRANSCODE_INLINE",
    "transcode.cache_dir": "GATEWAY_TRANSCODE_CACHE_DIR",
    "transcode.cache_bytes": "GATEWAY_TRANSCODE_CACHE_BYTES",
    "transcode.max_conversions": "GATEWAY_TRANSCODE_MAX_CONVERSIONS",
    "transcode.max_cpu_seconds": "GATEWAY_TRANSCODE_MAX_CPU_SECONDS",
}
CONFIG_FILE_ENV = "GATEWAY_CONFIG"
# prometheus-client's multiprocess directory: set by `serve` for its workers.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def _flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _read_file(path: Path) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    values = _flatten(raw)
    unknown = sorted(set(values) - set(_SETTINGS))
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting in {path}")
    return values


def _as_list(setting: str, value: object) -> list[str]:
    """A comma-separated string or a TOML array of strings."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ConfigError(setting, "expected a string or a list of strings")
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ConfigError(setting, "is empty")
    return items


def _storage_entries(setting: str, value: object) -> list[object]:
    """Storage entries keep TOML tables whole; strings split on commas."""
    if isinstance(value, list):
        entries = [
            item for entry in value for item in (_as_list(setting, entry) if isinstance(entry, str) else [entry])
        ]
    else:
        entries = list(_as_list(setting, value))
    if not entries:
        raise ConfigError(setting, "is empty")
    return entries


def _as_int(setting: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(setting, f"{value!r} is not a whole number")
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ConfigError(setting, f"{number} is outside {low}..{high}")
    return number


def _as_seconds(setting: str, value: object, high: float) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{value!r} is not a number of seconds") from None
    if not 0 <= number <= high:
        raise ConfigError(setting, f"{number} is outside 0..{high:g} seconds")
    return number


def _as_bool(setting: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(setting, f"{value!r} is not true or false")


def _keys(setting: str, value: object) -> tuple[bytes, ...]:
    keys = []
    for number, text in enumerate(_as_list(setting, value), 1):
        try:
            keys.append(parse_key(text))
        except ValueError as exc:
            raise ConfigError(setting, f"key {number}: {exc}") from None
    return tuple(keys)


def _key_file(setting: str, value: object) -> tuple[bytes, ...]:
    path = Path(str(value))
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(setting, f"cannot read {path}: {exc}") from None
    return _keys(setting, ",".join(text.split()))


_S3_OPTIONS = {"redirect", "redirect_expires"}


def _storage(setting: str, entry: object) -> StorageSpec:
    """One storage: a URL string (options as query parameters) or a TOML table with `url`."""
    if isinstance(entry, dict):
        options = {k: v for k, v in entry.items() if k != "url"}
        url = entry.get("url")
        if not isinstance(url, str):
            raise ConfigError(setting, 'a storage table needs url = "file:///…" or "s3://…"')
    elif isinstance(entry, str):
        url, options = entry, {}
    else:
        raise ConfigError(setting, f"{entry!r} is not a storage URL")
    parts = urlsplit(url)
    options.update(parse_qsl(parts.query, keep_blank_values=True))
    if parts.scheme == "file":
        unknown = sorted(set(options) - {"accel_redirect"})
        if unknown:
            raise ConfigError(setting, f"{url}: unknown option {unknown[0]!r} (known: accel_redirect)")
        accel = options.get("accel_redirect") or None
        if accel is not None and not (isinstance(accel, str) and accel.startswith("/") and accel.endswith("/")):
            raise ConfigError(setting, f"{url}: accel_redirect must be an nginx location like /_recordings/")
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(setting, f"{url}: file URLs name a local directory (file:///abs/dir)")
        root = Path(unquote(parts.path))
        if not root.is_absolute():
            raise ConfigError(setting, f"{url}: the directory must be absolute")
        if not root.is_dir():
            raise ConfigError(setting, f"{url}: {root} does not exist or is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(setting, f"{url}: {root} is not readable by this process")
        return FileStorage(root=root.resolve(), accel_redirect=accel)
    if parts.scheme == "s3":
        unknown = sorted(set(options) - _S3_OPTIONS)
        if unknown:
            raise ConfigError(
                setting, f"{url}: unknown option {unknown[0]!r} (known: {', '.join(sorted(_S3_OPTIONS))})"
            )
        if not _BUCKET.fullmatch(parts.netloc):
            raise ConfigError(setting, f"{url}: {parts.netloc!r} is not a valid bucket name")
        prefix = unquote(parts.path).strip("/")
        return S3Storage(
            bucket=parts.netloc,
            prefix=prefix + "/" if prefix else "",
            redirect=_as_bool(setting, options.get("redirect", False)),
            redirect_seconds=_as_int(setting, options.get("redirect_expires", 300), 1, 7 * 24 * 3600),
        )
    raise ConfigError(
        setting, f"{url}: unsupported scheme {parts.scheme or '(none)'!r}; use file:///abs/dir or s3://bucket/prefix"
    )


def _s3_client(values: Mapping[str, object], where: Callable[[str], str]) -> S3Client:
    default = S3Client()
    endpoint = values.get("s3.endpoint_url")
    if endpoint is not None:
        endpoint = str(endpoint)
        if urlsplit(endpoint).scheme not in ("http", "https") or not urlsplit(endpoint).netloc:
            raise ConfigError(where("s3.endpoint_url"), f"{endpoint!r} is not an http(s) URL")
    region = values.get("s3.region")

    def seconds(name: str, fallback: float) -> float:
        value = _as_seconds(where(name), values.get(name, fallback), 600)
        if value <= 0:
            raise ConfigError(where(name), "must be more than 0 seconds")
        return value

    return S3Client(
        endpoint_url=endpoint,
        region=str(region) if region else None,
        connect_timeout=seconds("s3.connect_timeout", default.connect_timeout),
        read_timeout=seconds("s3.read_timeout", default.read_timeout),
        max_attempts=_as_int(where("s3.max_attempts"), values.get("s3.max_attempts", default.max_attempts), 1, 20),
        max_pool_connections=_as_int(
            where("s3.max_pool_connections"),
            values.get("s3.max_pool_connections", default.max_pool_connections),
            1,
            10000,
        ),
        cache_seconds=_as_seconds(
            where("s3.cache_seconds"), values.get("s3.cache_seconds", default.cache_seconds), 3600
        ),
    )


def _cache_dir(setting: str, value: object) -> Path:
    """An absolute directory this process may write, or one it may create (made by `serve`)."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        raise ConfigError(setting, f"{path} must be an absolute directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise ConfigError(setting, f"{path} exists and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(setting, f"{existing} is not writable by this process")
    return path


def _transcode(values: Mapping[str, object], where: Callable[[str], str]) -> Transcode:
    default = Transcode()
    return Transcode(
        inline=_as_bool(where("transcode.inline"), values.get("transcode.inline", default.inline)),
        cache_dir=_cache_dir(where("transcode.cache_dir"), values.get("transcode.cache_dir", default.cache_dir)),
        cache_bytes=_as_int(
            where("transcode.cache_bytes"), values.get("transcode.cache_bytes", default.cache_bytes), 1024 * 1024, 2**50
        ),
        max_conversions=_as_int(
            where("transcode.max_conversions"),
            values.get("transcode.max_conversions", default.max_conversions),
            1,
            256,
        ),
        max_cpu_seconds=_as_seconds(
            where("transcode.max_cpu_seconds"),
            values.get("transcode.max_cpu_seconds", default.max_cpu_seconds),
            24 * 3600,
        ),
    )


def _trusted_proxies(setting: str, value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    items = _as_list(setting, value)
    try:
        parse_networks(items)
    except ValueError as exc:
        raise ConfigError(setting, str(exc)) from None
    return tuple(items)


_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9A-Fa-f]{64}")


def _api_client_entries(setting: str, value: object) -> list[str]:
    """A comma-separated string or a TOML array of strings; empty means no clients."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [part for item in value for part in item.split(",")]
    else:
        raise ConfigError(setting, "expected a string or a list of strings (id:sha256hex:/prefix/)")
    return [item.strip() for item in items if item.strip()]


def api_client(entry: str) -> ApiClient:
    """Parse one `id:sha256hex(bearer token):/allowed/prefix/`; ValueError says what is wrong."""
    parts = entry.split(":", 2)
    if len(parts) != 3:
        raise ValueError(f"{entry[:40]!r} is not id:sha256hex:/prefix/")
    client_id, digest, prefix = (part.strip() for part in parts)
    if not _CLIENT_ID.fullmatch(client_id):
        raise ValueError(f"client id {client_id[:40]!r} must be 1-64 letters, digits, '.', '_', '@' or '-'")
    if len(digest) != 64:
        raise ValueError(f"client {client_id!r}: token hash has {len(digest)} characters, expected 64 hex digits")
    if not _SHA256_HEX.fullmatch(digest):
        raise ValueError(f"client {client_id!r}: token hash is not hexadecimal")
    if not prefix.startswith("/"):
        raise ValueError(f"client {client_id!r}: prefix {prefix!r} must start with /")
    if prefix.strip("/") == "":
        confined = ""
    else:
        try:
            confined = confine(prefix) + "/"
        except PathRefused as exc:
            raise ValueError(f"client {client_id!r}: prefix {prefix!r} refused: {exc}") from None
    return ApiClient(id=client_id, token_sha256=bytes.fromhex(digest), prefix=confined)


def _api_clients(setting: str, value: object) -> tuple[ApiClient, ...]:
    if value is None:
        return ()
    clients: list[ApiClient] = []
    for number, entry in enumerate(_api_client_entries(setting, value), 1):
        try:
            client = api_client(entry)
        except ValueError as exc:
            raise ConfigError(setting, f"entry {number}: {exc}") from None
        if any(client.id == seen.id for seen in clients):
            raise ConfigError(setting, f"entry {number}: duplicate client id {client.id!r}")
        clients.append(client)
    return tuple(clients)


def _revocation_file(setting: str, value: object) -> Path | None:
    if value is None:
        return None
    path = Path(str(value))
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(setting, f"{path} is not a readable file (create it empty to revoke nothing)")
    # Not resolve(): Kubernetes mounts a ConfigMap file as a symlink into a
    # timestamped folder it replaces on update; the link must be followed anew.
    return path.absolute()


def _configured_keys(values: Mapping[str, object], where: Callable[[str], str]) -> tuple[bytes, ...]:
    if "key" in values:
        return _keys(where("key"), values["key"])
    if "key_file" in values:
        return _key_file(where("key_file"), values["key_file"])
    raise ConfigError("GATEWAY_KEY", "no key configured (make one with `storage-gateway keygen`)")


def load_settings(config_file: Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (if any), apply the environment over it, validate everything."""
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_FILE_ENV):
        config_file = Path(env[CONFIG_FILE_ENV])
    values: dict[str, object] = _read_file(config_file) if config_file else {}
    origin = {name: f"{name} in {config_file}" for name in values}
    if "api.clients" in values:
        if "api_clients" in values:
            raise ConfigError("api_clients", f"both api_clients and [api] clients are set in {config_file}; keep one")
        values["api_clients"] = values.pop("api.clients")
        origin["api_clients"] = f"[api] clients in {config_file}"
    from_env = {name for name, variable in _SETTINGS.items() if env.get(variable, "").strip()}
    if {"key", "key_file"} <= from_env or {"key", "key_file"} <= values.keys() - from_env:
        where_both = "the environment" if {"key", "key_file"} <= from_env else str(config_file)
        raise ConfigError("GATEWAY_KEY", f"both a key and a key file are set in {where_both}; keep one")
    from_env.discard("api.clients")  # GATEWAY_API_CLIENTS sets api_clients
    if from_env & {"key", "key_file"}:
        # A key given in the environment replaces the file's, whichever form either takes.
        values.pop("key", None)
        values.pop("key_file", None)
    for name in from_env:
        values[name] = env[_SETTINGS[name]]
        origin[name] = _SETTINGS[name]

    def where(name: str) -> str:
        return origin.get(name, _SETTINGS[name])

    dev_dir = None
    if not {"key", "key_file", "storage"} & values.keys():
        dev_dir = Path(env.get("GATEWAY_DEV_DIR", ".gateway-dev")).resolve()
        key, root = devdefaults.prepare(dev_dir)
        keys, storages = (key,), (FileStorage(root=root),)
    else:
        keys = _configured_keys(values, where)
        if "storage" not in values:
            raise ConfigError("GATEWAY_STORAGE", "no storage configured (e.g. file:///var/lib/recordings)")
        setting = where("storage")
        storages = tuple(_storage(setting, entry) for entry in _storage_entries(setting, values["storage"]))

    public_url = values.get("public_url")
    if public_url is not None:
        public_url = str(public_url).rstrip("/")
        if urlsplit(public_url).scheme not in ("http", "https"):
            raise ConfigError(where("public_url"), f"{public_url!r} is not an http(s) URL")
    cache_control = str(values.get("edge.cache_control", Settings.cache_control)).strip()
    if not cache_control.isprintable():
        raise ConfigError(where("edge.cache_control"), "contains control characters")
    return Settings(
        keys=keys,
        storages=storages,
        public_url=public_url,
        s3=_s3_client(values, where),
        revocation_file=_revocation_file(where("revocation_file"), values.get("revocation_file")),
        require_signed=_as_bool(where("edge.require_signed"), values.get("edge.require_signed", False)),
        drain_seconds=_as_seconds(
            where("edge.drain_seconds"), values.get("edge.drain_seconds", Settings.drain_seconds), 3600
        ),
        trusted_proxies=_trusted_proxies(where("edge.trusted_proxies"), values.get("edge.trusted_proxies")),
        clients=_api_clients(where("api_clients"), values.get("api_clients")),
        cache_control=cache_control,
        max_ranges=_as_int(where("edge.max_ranges"), values.get("edge.max_ranges", Settings.max_ranges), 1, 1000),
        chunk_size=_as_int(
            where("edge.chunk_size"), values.get("edge.chunk_size", Settings.chunk_size), 4096, 16 * 1024 * 1024
        ),
        access_log=_as_bool(where("edge.access_log"), values.get("edge.access_log", Settings.access_log)),
        disk_cache_seconds=_as_seconds(
            where("disk.cache_seconds"), values.get("disk.cache_seconds", Settings.disk_cache_seconds), 3600
        ),
        disk_cache_bytes=_as_int(
            where("disk.cache_bytes"), values.get("disk.cache_bytes", Settings.disk_cache_bytes), 0, 2**40
        ),
        transcode=_transcode(values, where),
        dev_dir=dev_dir,
    )
