"""Parsers of configuration values: text or TOML values in, typed values out.

Each parser raises `Invalid` with the problem only; the loader adds which
setting (and which file or variable) it came from, so every message names
what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ..common.values import FALSE_WORDS, TRUE_WORDS

T = TypeVar("T")
Parser = Callable[[object], Any]


class Invalid(ValueError):
    """A value that cannot be used; str() is the problem, without the setting's name."""


def text_list(value: object) -> list[str]:
    """A comma-separated string or a TOML array of strings (each item may hold commas too)."""
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        items = [part for item in value for part in item.split(",")]
    else:
        raise Invalid("expected a string or a list of strings")
    return [item.strip() for item in items if item.strip()]


def nonempty_list(value: object) -> list[str]:
    items = text_list(value)
    if not items:
        raise Invalid("is empty")
    return items


def whole(low: int, high: int) -> Parser:
    """A whole number in [low, high]; a TOML float or boolean is a mistake, not something to truncate."""

    def parse(value: object) -> int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise Invalid(f"{value!r} is not a whole number")
        try:
            number = int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise Invalid(f"{value!r} is not a whole number") from None
        if not low <= number <= high:
            raise Invalid(f"{number} is outside {low}..{high}")
        return number

    parse.bounds = f"{low}..{high}"  # type: ignore[attr-defined]
    return parse


def seconds(high: float, positive: bool = False) -> Parser:
    """A number of seconds in [0, high] (or (0, high] when `positive`)."""

    def parse(value: object) -> float:
        if isinstance(value, bool):
            raise Invalid(f"{value!r} is not a number of seconds")
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise Invalid(f"{value!r} is not a number of seconds") from None
        if not 0 <= number <= high:
            raise Invalid(f"{number} is outside 0..{high:g} seconds")
        if positive and number <= 0:
            raise Invalid("must be more than 0 seconds")
        return number

    return parse


def flag(value: object) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise Invalid(f"{value!r} is not true or false")


def printable(value: object) -> str:
    text = str(value).strip()
    if not text.isprintable():
        raise Invalid("contains control characters")
    return text


def http_url(value: object) -> str:
    """An http(s) URL (a trailing slash dropped: paths are appended to it)."""
    text = str(value).strip().rstrip("/")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise Invalid(f"{text!r} is not an http(s) URL")
    return text


def optional_text(value: object) -> str | None:
    return str(value).strip() or None


def readable_file(value: object) -> Path:
    path = Path(str(value))
    if not path.is_file() or not os.access(path, os.R_OK):
        raise Invalid(f"{path} is not a readable file (create it empty to revoke nothing)")
    # Not resolve(): Kubernetes mounts a ConfigMap file as a symlink into a
    # timestamped folder it replaces on update; the link must be followed anew.
    return path.absolute()


def writable_directory(value: object) -> Path:
    """An absolute directory this process may write, or one it may create (made by `serve`)."""
    path = Path(str(value)).expanduser()
    if not path.is_absolute():
        raise Invalid(f"{path} must be an absolute directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if existing == path and not path.is_dir():
        raise Invalid(f"{path} exists and is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Invalid(f"{existing} is not writable by this process")
    return path


def http_urls(value: object) -> tuple[str, ...]:
    """One or more http(s) URLs, comma-separated or a TOML array."""
    return tuple(http_url(item) for item in nonempty_list(value))


def secret(value: object) -> str:
    """A shared secret: at least 16 printable characters, none of them spaces."""
    text = str(value).strip()
    if len(text) < 16:
        raise Invalid(f"has {len(text)} characters, at least 16 are needed (e.g. `openssl rand -hex 32`)")
    if not text.isprintable() or any(char.isspace() for char in text):
        raise Invalid("contains spaces or control characters")
    return text
