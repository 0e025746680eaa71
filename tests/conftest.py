"""What every folder shares: the markers by folder, hypothesis's CI profile, the storage folder.

A test's folder is its kind, and its marker (registered in pyproject.toml):
`unit/` pure and in-process tests, no server process (`./tests/run -m unit`
runs in seconds); `e2e/` real processes (serve, api, nginx, moto, Chromium,
download managers, signals, sockets, load and faults); `ops/` what operators
rely on (deploy artifacts, README commands, the metrics and access-log
contracts). A test file outside the three folders is an error, not a test
that `-m` silently leaves out.

One storage folder serves every module that needs it: the in-process edge,
the real gateway and nginx (at `/files/`) all serve it, so answers can be
compared byte for byte. Modules that need odd files (FIFOs, symlinks, a
256 MiB file) add them under their own subdirectory of the same root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from support.storage import SECRET_MARKER, Hostile, Storage, fill_storage, hostile_files

# CI explores the same examples on every run (a red CI must be reproducible, and
# never a lucky draw); locally hypothesis keeps exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

TESTS = Path(__file__).resolve().parent
KINDS = ("unit", "e2e", "ops")  # the folders, and their markers


def kind_of(item: pytest.Item) -> str:
    path = item.path.resolve()
    kind = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else None
    if kind not in KINDS:
        raise pytest.UsageError(f"{item.nodeid}: a test belongs in tests/unit, tests/e2e or tests/ops")
    return kind


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m <kind>` alone, the other folders are not even collected (nor their modules imported)."""
    wanted = (config.option.markexpr or "").strip()
    if wanted in KINDS and collection_path.name in KINDS and collection_path.parent.resolve() == TESTS:
        return collection_path.name != wanted
    return None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark each test by its folder, and run the folders in the order of KINDS (the fast ones first)."""
    kinds = {item: kind_of(item) for item in items}
    for item, kind in kinds.items():
        item.add_marker(kind)
    items.sort(key=lambda item: KINDS.index(kinds[item]))  # stable: the order within a folder stays


@pytest.fixture(scope="session")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Storage:
    base = tmp_path_factory.mktemp("edge")
    root = base / "storage"
    outside = base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET_MARKER + b"\n")
    (base / "secret").write_bytes(SECRET_MARKER + b"\n")
    result = Storage(root=root, outside=outside)
    fill_storage(result)
    return result


@pytest.fixture(scope="module")
def hostile(storage: Storage) -> Iterator[Hostile]:
    """Odd files under /hostile/ in the storage folder: a FIFO, a socket, symlinks out and in, a locked file."""
    with hostile_files(storage) as files:
        yield files
