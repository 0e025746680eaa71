"""The in-process edge for the unit tests of the edge's HTTP behaviour."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.edge import InProcessEdge, running_edge
from support.keys import new_key
from support.storage import Storage


@pytest.fixture(scope="module")
def edge(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessEdge]:
    """The edge in process over the storage folder, built as e2e's `gateway` process builds it (one key)."""
    with running_edge(storage.root, [new_key()], tmp_path_factory.mktemp("edge")) as running:
        yield running


@pytest.fixture(scope="module")
def rotating_edge(
    storage: Storage, edge: InProcessEdge, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InProcessEdge]:
    """A second edge with two keys: a new one first, then the first edge's (old) key."""
    keys = [new_key(), edge.key]
    with running_edge(storage.root, keys, tmp_path_factory.mktemp("edge-rotation")) as running:
        yield running
