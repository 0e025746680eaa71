"""All configuration in one place: a TOML file overridden by GATEWAY_* variables.

Validated once, at start: a bad setting stops the process with a one-line
message naming the setting (exit status 2), never a traceback and never a
failure at the first request.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from . import devdefaults
from .tokens import parse_key


class ConfigError(Exception):
    """A setting that cannot be used; str() is the whole message for the operator."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"configuration error: {setting}: {problem}")
        self.setting = setting


@dataclass(frozen=True)
class FileStorage:
    """A local directory holding recordings (`file:///abs/dir`)."""

    root: Path


StorageSpec = FileStorage


@dataclass(frozen=True)
class Settings:
    keys: tuple[bytes, ...] = field(repr=False)
    storages: tuple[StorageSpec, ...]
    public_url: str | None = None
    s3_endpoint_url: str | None = None
    api_clients: str | None = None
    cache_control: str = "private, max-age=3600"
    max_ranges: int = 16
    chunk_size: int = 256 * 1024
    access_log: bool = True
    # Set when no key and no storage were configured: the embedded default.
    dev_dir: Path | None = field(default=None)


# (TOML key, environment variable). Sections are flattened: [edge] chunk_size -> edge.chunk_size.
_SETTINGS = {
    "key": "GATEWAY_KEY",
    "key_file": "GATEWAY_KEY_FILE",
    "storage": "GATEWAY_STORAGE",
    "public_url": "GATEWAY_PUBLIC_URL",
    "s3_endpoint_url": "GATEWAY_S3_ENDPOINT_URL",
    "api_clients": "GATEWAY_API_CLIENTS",
    "edge.cache_control": "GATEWAY_CACHE_CONTROL",
    "edge.max_ranges": "GATEWAY_MAX_RANGES",
    "edge.chunk_size": "GATEWAY_CHUNK_SIZE",
    "edge.access_log": "GATEWAY_ACCESS_LOG",
}
CONFIG_FILE_ENV = "GATEWAY_CONFIG"


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


def _as_int(setting: str, value: object, low: int, high: int) -> int:
    try:
        number = int(value)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ConfigError(setting, f"{value!r} is not a whole number") from None
    if not low <= number <= high:
        raise ConfigError(setting, f"{number} is outside {low}..{high}")
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


def _storage(setting: str, url: str) -> StorageSpec:
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError(setting, f"{url}: file URLs name a local directory (file:///abs/dir)")
        root = Path(unquote(parts.path))
        if not root.is_absolute():
            raise ConfigError(setting, f"{url}: the directory must be absolute")
        if not root.is_dir():
            raise ConfigError(setting, f"{url}: {root} does not exist or is not a directory")
        if not os.access(root, os.R_OK | os.X_OK):
            raise ConfigError(setting, f"{url}: {root} is not readable by this process")
        return FileStorage(root=root.resolve())
    raise ConfigError(setting, f"{url}: unsupported scheme {parts.scheme or '(none)'!r}; use file:///abs/dir")


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
    for name, variable in _SETTINGS.items():
        if env.get(variable, "").strip():
            values[name] = env[variable]
            origin[name] = variable

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
        storages = tuple(_storage(setting, url) for url in _as_list(setting, values["storage"]))

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
        s3_endpoint_url=values.get("s3_endpoint_url") and str(values["s3_endpoint_url"]),
        api_clients=values.get("api_clients") and str(values["api_clients"]),
        cache_control=cache_control,
        max_ranges=_as_int(where("edge.max_ranges"), values.get("edge.max_ranges", Settings.max_ranges), 1, 1000),
        chunk_size=_as_int(
            where("edge.chunk_size"), values.get("edge.chunk_size", Settings.chunk_size), 4096, 16 * 1024 * 1024
        ),
        access_log=_as_bool(where("edge.access_log"), values.get("edge.access_log", Settings.access_log)),
        dev_dir=dev_dir,
    )
