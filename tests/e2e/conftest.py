"""Session processes for the end-to-end tests: the gateway, a second one with two keys, nginx.

All three serve the session's storage folder (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.keys import new_key
from support.processes import Gateway, Nginx, running_gateway, running_nginx
from support.storage import Storage


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
