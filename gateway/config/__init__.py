"""All configuration: a TOML file overridden by GATEWAY_* variables, validated once, at start.

The settings themselves are declared in `settings` (one row each). A bad
value stops the command with a one-line message naming the setting and
where it came from (exit status 2), never a traceback and never a failure
at the first request. Commands load what they need: `link encrypt` reads
the key alone, so it runs where the storage is not mounted.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path

from ..storage.specs import FileStorage
from . import devdefault
from .settings import CONFIG_FILE_ENV, DEV_DIR_ENV, SECTIONS, Row, Settings, rows
from .values import Invalid

__all__ = ["CONFIG_FILE_ENV", "ConfigError", "Settings", "load_settings"]

_KEY_SETTINGS = frozenset({"key", "key_file"})
# What `link encrypt` needs: the key, and the base URL to print a whole link.
LINK_SETTINGS = frozenset({"key", "key_file", "public_url"})


class ConfigError(Exception):
    """A setting that cannot be used; str() is the whole message for the operator."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"configuration error: {setting}: {problem}")
        self.setting = setting


def _flatten(table: Mapping[str, object], prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in table.items():
        if isinstance(value, dict) and f"{prefix}{name}" in SECTIONS | {"api": None}:
            flat.update(_flatten(value, f"{prefix}{name}."))
        else:
            flat[prefix + name] = value
    return flat


def _read_file(path: Path, known: set[str]) -> dict[str, object]:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from None
    values = _flatten(raw)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown[0], f"unknown setting in {path}")
    return values


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    only: frozenset[str] | None = None,
) -> Settings:
    """Read the file (if any), apply the environment over it, validate what `only` names (default: all).

    A setting left out by `only` is neither read nor checked: its section
    keeps the defaults, the storages are empty.
    """
    env = os.environ if environ is None else environ
    if config_file is None and env.get(CONFIG_FILE_ENV):
        config_file = Path(env[CONFIG_FILE_ENV])
    table = {row.toml: row for row in rows()}
    aliases = {alias: row.toml for row in table.values() for alias in row.aliases}
    values = _read_file(config_file, set(table) | set(aliases)) if config_file else {}
    origin = {name: f"{name} in {config_file}" for name in values}
    for alias, name in aliases.items():
        if alias in values:
            if name in values:
                raise ConfigError(name, f"both {name} and {alias} are set in {config_file}; keep one")
            values[name] = values.pop(alias)
            section, _, field = alias.rpartition(".")
            origin[name] = f"[{section}] {field} in {config_file}"
    from_env = {row.toml for row in table.values() if env.get(row.env, "").strip()}
    if _KEY_SETTINGS <= from_env or _KEY_SETTINGS <= values.keys() - from_env:
        where_both = "the environment" if _KEY_SETTINGS <= from_env else str(config_file)
        raise ConfigError("GATEWAY_KEY", f"both a key and a key file are set in {where_both}; keep one")
    if from_env & _KEY_SETTINGS:
        # A key given in the environment replaces the file's, whichever form either takes.
        for name in _KEY_SETTINGS:
            values.pop(name, None)
    for name in from_env:
        values[name] = env[table[name].env]
        origin[name] = table[name].env

    def parsed(row: Row) -> object:
        try:
            return row.parse(values[row.toml])
        except Invalid as exc:
            raise ConfigError(origin.get(row.toml, row.env), str(exc)) from None

    wanted = [row for row in table.values() if (only is None or row.toml in only) and row.toml in values]
    chosen: dict[str, object] = {row.attribute: parsed(row) for row in wanted}

    dev_dir = None
    if not {"key", "key_file", "storage"} & values.keys():
        dev_dir = Path(env.get(DEV_DIR_ENV, ".gateway-dev")).resolve()
        key, root = devdefault.prepare(dev_dir)
        chosen["keys"] = (key,)
        if only is None or "storage" in only:
            chosen["storages"] = (FileStorage(root=root),)
    if "keys" not in chosen:
        raise ConfigError("GATEWAY_KEY", "no key configured (make one with `storage-gateway keygen`)")
    if "storages" not in chosen:
        if only is None or "storage" in only:
            raise ConfigError("GATEWAY_STORAGE", "no storage configured (e.g. file:///var/lib/recordings)")
        chosen["storages"] = ()
    top = {name: chosen.pop(name) for name in list(chosen) if "." not in name}
    sections = {
        section: cls(
            **{name.partition(".")[2]: value for name, value in chosen.items() if name.startswith(section + ".")}
        )
        for section, cls in SECTIONS.items()
    }
    if sections["ledger"].webhook_urls and sections["ledger"].webhook_secret is None:
        raise ConfigError(
            "GATEWAY_WEBHOOK_SECRET", "required when webhook URLs are set (deliveries are signed with it)"
        )
    return Settings(**top, **sections, dev_dir=dev_dir)
