"""The edge in process: `create_app(load_settings(environ=…))` with its lifespan run, asked like the gateway.

`running_edge` builds the app a `storage-gateway serve` worker builds, from
the variables `support.processes.running_gateway` gives the process (the
key(s), the storage, `extra_env`), and serves it with `support.asgi`. An
`InProcessEdge` makes tokens and targets as `Gateway` does, and answers
`request(target, method, headers)` with an `Answer`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gateway.config import load_settings
from gateway.edge.app import Edge, create_app
from gateway.links.tokens import encrypt_path

from .asgi import TIMEOUT, Answer, Served, serving
from .storage import file_url


@dataclass
class InProcessEdge:
    """A running in-process edge over `root`, with the link keys it was given (the first issues links)."""

    app: Edge
    served: Served
    keys: tuple[bytes, ...]
    root: Path

    @property
    def key(self) -> bytes:
        return self.keys[0]

    def token(self, path: str, key: bytes | None = None) -> str:
        return encrypt_path(path, key or self.key)

    def target(self, path: str, key: bytes | None = None) -> str:
        """The request target (`/<token>`) for a storage path."""
        return "/" + self.token(path, key)

    def request(
        self, target: str, method: str = "GET", headers: Mapping[str, str] | None = None, timeout: float = TIMEOUT
    ) -> Answer:
        return self.served.request(target, method, headers, timeout)


def edge_environment(
    keys: Sequence[bytes],
    root: Path,
    workdir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
) -> dict[str, str]:
    """The GATEWAY_* variables of a gateway over `root` (or `storage_url`), renditions cached in `workdir`."""
    env = {
        "GATEWAY_KEY": ",".join(key.hex() for key in keys),
        "GATEWAY_STORAGE": storage_url if storage_url is not None else file_url(root),
        "GATEWAY_TRANSCODE_CACHE_DIR": str(workdir / "renditions"),
    }
    env.update(extra_env or {})
    return env


@contextlib.contextmanager
def running_edge(
    root: Path,
    keys: Sequence[bytes],
    workdir: Path,
    *,
    extra_env: Mapping[str, str] | None = None,
    storage_url: str | None = None,
) -> Iterator[InProcessEdge]:
    workdir.mkdir(parents=True, exist_ok=True)
    env = edge_environment(keys, root, workdir, extra_env=extra_env, storage_url=storage_url)
    app = create_app(load_settings(environ=env))
    with serving(app) as served:
        yield InProcessEdge(app, served, tuple(keys), root)
