"""The unit folder starts no server: not the gateway or its API, nginx, moto, Chromium or uvicorn.

Each test here is set up, run and torn down with `subprocess.Popen` refusing
to start any of them (as a program, through `python -m`, or named in a
wrapper's arguments), so a test that needs one fails and says it belongs in
tests/e2e. Other programs stay allowed: openssl as an independent AES,
ffmpeg making recordings, a helper process holding file locks, the
ledger's helper process.

The HTTP behaviour of the edge is tested here in process: `edge` and
`rotating_edge` are what e2e's `gateway` and `rotating_gateway` processes
are, built by `create_app` and served by `support.asgi`.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import PurePath

import pytest
from support.edge import InProcessEdge, running_edge
from support.keys import new_key
from support.storage import Storage

SERVER_PROGRAMS = {"storage-gateway", "nginx", "chromium", "chromium-browser", "chrome", "headless_shell", "uvicorn"}
SERVER_MODULES = {"gateway", "moto", "uvicorn", "playwright"}  # started as `python -m <module>`
HELPER_MODULES = {"gateway.ledger.helper"}  # a worker's own helper process, which serves nothing


def server_in(args: object, executable: object = None) -> str | None:
    """The server that a Popen of `args` would start, if any."""
    if isinstance(args, (str, bytes, os.PathLike)):
        words = _split(os.fsdecode(args))
    else:
        words = [os.fsdecode(word) for word in args]  # type: ignore[attr-defined]
    if executable is not None:
        words.insert(0, os.fsdecode(executable))  # type: ignore[arg-type]
    words += [part for word in words if " " in word for part in _split(word)]  # `sh -c "…"`
    for at, word in enumerate(words):
        name = PurePath(word).name
        if name in SERVER_PROGRAMS:
            return name
        module = words[at + 1] if word == "-m" and at + 1 < len(words) else ""
        if module.split(".")[0] in SERVER_MODULES and module not in HELPER_MODULES:
            return "python -m " + words[at + 1]
        if "playwright" in word:  # Playwright's driver, which starts the browser
            return "playwright"
    return None


def _split(command: str) -> list[str]:
    try:
        return shlex.split(command)
    except ValueError:  # not shell syntax (a Python script given to -c, say)
        return command.split()


@contextlib.contextmanager
def no_servers() -> Iterator[None]:
    original = subprocess.Popen.__init__

    def guarded(self: subprocess.Popen[bytes], args: Sequence[str] | str, *more: object, **options: object) -> None:
        server = server_in(args, options.get("executable"))
        if server is not None:
            raise AssertionError(f"tests/unit starts no server process, and this started {server} ({args!r}): "
                                 "a test that needs one belongs in tests/e2e")  # fmt: skip
        original(self, args, *more, **options)  # type: ignore[arg-type]

    subprocess.Popen.__init__ = guarded  # type: ignore[method-assign]
    try:
        yield
    finally:
        subprocess.Popen.__init__ = original  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with no_servers():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with no_servers():
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with no_servers():
        return (yield)


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
