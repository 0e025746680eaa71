"""Session fixtures for the end-to-end tests: a storage folder, the gateway, nginx.

One storage folder serves every end-to-end module; the gateway and nginx both
serve it (nginx at `/files/`), so responses can be compared byte for byte.
Modules that need odd files (FIFOs, symlinks, a 256 MiB file) add them under
their own subdirectory of the same root.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# CI explores the same examples on every run (a red CI must be reproducible, and
# never a lucky draw); locally hypothesis keeps exploring new ones.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

from support.keys import new_key
from support.processes import Gateway, Nginx, running_gateway, running_nginx
from support.storage import SECRET_MARKER, Hostile, Storage, fill_storage, hostile_files


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


@pytest.fixture(scope="session")
def gateway(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One `storage-gateway serve` process (one worker) over the storage folder."""
    with running_gateway(storage.root, [new_key()], tmp_path_factory.mktemp("gateway")) as running:
        yield running


@pytest.fixture(scope="session")
def rotating_gateway(storage: Storage, gateway: Gateway, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second process with two keys: a new one first, then the main gateway's (old) key."""
    keys = [new_key(), gateway.key]
    with running_gateway(storage.root, keys, tmp_path_factory.mktemp("gateway-rotation")) as running:
        yield running


@pytest.fixture(scope="session")
def nginx(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """A real nginx serving the same storage folder at /files/."""
    with running_nginx(storage.root, tmp_path_factory.mktemp("nginx")) as running:
        yield running


@pytest.fixture(scope="module")
def hostile(storage: Storage) -> Iterator[Hostile]:
    """Odd files under /hostile/ in the storage folder: a FIFO, a socket, symlinks out and in, a locked file."""
    with hostile_files(storage) as files:
        yield files
