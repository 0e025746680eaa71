"""The listening page's static files, served at `/_player/<name>`.

The table of names is fixed here, not read from a directory listing: a
request can only ever get one of these files, whatever its name contains
(no path is ever built from it). The files are small (about 60 KB in all),
so they are read once, on first use, and kept in memory with a short hash of
their content, which the page puts in their URLs (`?v=<hash>`): a new
release changes the URL, so the files can be cached for a long time.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

# The wavesurfer.js release in static/vendor/ (its README says how to update it).
WAVESURFER_VERSION = "7.12.12"

# With the content hash in every URL the page uses, an asset never changes under its URL.
CACHE_CONTROL = "public, max-age=31536000, immutable"

_JS = "text/javascript; charset=utf-8"

# Public name -> (file in this package, content type).
_FILES: dict[str, tuple[str, str]] = {
    "player.js": ("static/player.js", _JS),
    "player.css": ("static/player.css", "text/css; charset=utf-8"),
    "wavesurfer.min.js": ("static/vendor/wavesurfer.min.js", _JS),
    "wavesurfer-LICENSE.txt": ("static/vendor/LICENSE", "text/plain; charset=utf-8"),
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    version: str  # short content hash, for the URL


@functools.cache
def _table() -> dict[str, Asset]:
    """Read every file once; `functools.cache` keeps them for the process's life."""
    package = resources.files(__package__)
    table: dict[str, Asset] = {}
    for name, (path, content_type) in _FILES.items():
        body = package.joinpath(path).read_bytes()
        table[name] = Asset(body, content_type, hashlib.sha256(body).hexdigest()[:12])
    return table


def asset(name: str) -> tuple[bytes, str] | None:
    """The body and content type for `/_player/<name>`, or None for any name not in the table."""
    found = _table().get(name)
    return None if found is None else (found.body, found.content_type)


def asset_names() -> tuple[str, ...]:
    """Every name `asset` answers (for a router that wants to list them)."""
    return tuple(_FILES)


def asset_url(name: str) -> str:
    """The URL the page uses for an asset: relative to the page (`/<token>`), so a path prefix keeps working."""
    return f"_player/{name}?v={_table()[name].version}"
