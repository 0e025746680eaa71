"""An S3 tier in trouble must not take the rest down: readiness answers at once, a missing bucket is no 404.

A real moto server process, paused with SIGSTOP (a brownout: connections are
accepted, nothing answers), and a bucket that does not exist.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.http import request, split_base
from support.keys import new_key
from support.processes import Gateway, running_gateway
from support.s3 import FAST_FAILURE_ENV, MotoServer, gateway_s3_env, running_moto, s3_client, storage_urls
from support.storage import file_url

DISK = b"on disk " * 1000
ARCHIVED = b"in the archive " * 1000
# The data path's deadline stays long, as in production: only readiness must not wait for it.
SLOW_S3 = {"GATEWAY_S3_CONNECT_TIMEOUT": "2", "GATEWAY_S3_READ_TIMEOUT": "10", "GATEWAY_S3_MAX_ATTEMPTS": "2"}


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[MotoServer]:
    with running_moto(tmp_path / "moto") as server:
        client = s3_client(server.endpoint_url)
        client.create_bucket(Bucket="archive")
        client.put_object(Bucket="archive", Key="calls/old.mp3", Body=ARCHIVED)
        yield server


def readyz(gateway: Gateway, timeout: float) -> tuple[int, str]:
    """/readyz with a client timeout: an answer that does not come within it raises TimeoutError."""
    conn = http.client.HTTPConnection(*split_base(gateway.base_url), timeout=timeout)
    try:
        conn.request("GET", "/readyz")
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_readiness_answers_from_what_it_last_knew_while_s3_is_stalled(moto: MotoServer, tmp_path: Path) -> None:
    root = tmp_path / "disk"
    root.mkdir()
    (root / "new.mp3").write_bytes(DISK)
    storage = storage_urls(file_url(root), "s3://archive/calls")
    env = gateway_s3_env(moto, SLOW_S3)
    with running_gateway(root, [new_key()], tmp_path / "gateway", storage_url=storage, extra_env=env) as gateway:
        assert readyz(gateway, 10) == (200, "disk: ok\ns3: ok\n")
        moto.pause()
        try:
            for _ in range(5):  # each answered within the probe's budget, however long S3 stays silent
                status, body = readyz(gateway, 3)
                assert status == 200 and body.startswith("disk: ok\n")  # a shared tier down fails no replica
            assert request(gateway.base_url, gateway.target("/new.mp3"), timeout=5).body == DISK
        finally:
            moto.resume()
        assert request(gateway.base_url, gateway.target("/old.mp3")).body == ARCHIVED


@pytest.mark.parametrize("storage", ["s3://no-such-bucket/calls", "s3://archive/calls"])
def test_a_bucket_that_does_not_answer_is_a_storage_failure_never_a_404(
    moto: MotoServer, tmp_path: Path, storage: str
) -> None:
    root = tmp_path / "unused"
    root.mkdir()
    env = gateway_s3_env(moto, FAST_FAILURE_ENV)
    if storage.startswith("s3://archive"):  # the right bucket at a wrong endpoint path: 404 for everything
        env["GATEWAY_S3_ENDPOINT_URL"] = moto.endpoint_url + "/not-s3/"
    with running_gateway(root, [new_key()], tmp_path / "gateway", storage_url=storage, extra_env=env) as gateway:
        for path in ("/old.mp3", "/missing.mp3"):
            reply = request(gateway.base_url, gateway.target(path))
            assert reply.status in (502, 503), (path, reply.status)
        assert "does not answer" in gateway.log.read_text()
