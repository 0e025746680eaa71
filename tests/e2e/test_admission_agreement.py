"""The link inspector says what the edge does: one admission decides both, and this table proves it.

For every kind of link (served, missing, revoked, expired, tampered,
unsigned under strict mode, a view the edge refuses, a file that is not
audio, an S3 storage that redirects, a storage that is down), the status
`POST /v1/links/check` reports is compared with what a real `serve`
answers over HTTP for the very same link. The API and the edge are
separate real processes sharing the key, storages and revocation list.
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.http import request
from support.keys import new_key
from support.processes import api_client_entry, running_api, running_gateway
from support.s3 import AWS_ENV, FAST_FAILURE_ENV, running_moto, s3_client

from gateway.links.signing import LinkSigner
from gateway.links.tokens import encrypt_path, masked_key

BEARER = "agreement-" + "t" * 30
PUBLIC = "http://storage.invalid"


def _wav() -> bytes:
    """Half a second of a quiet 8 kHz PCM tone: a recording every view can be made of."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"".join(struct.pack("<h", (n % 16) * 100) for n in range(4000)))
    return buffer.getvalue()


WAV = _wav()


@dataclass(frozen=True)
class Case:
    name: str
    target: str  # /<token>?<query>, as the edge is asked
    expected: int  # what both must say


def _signed(key: bytes, path: str, params: dict[str, str]) -> str:
    token = encrypt_path(path, key)
    return f"/{token}?{LinkSigner([key]).sign(token, params)}"


def _masked(key: bytes, path: str, params: dict[str, str]) -> str:
    token = encrypt_path(path, masked_key(key))
    return f"/{token}?{LinkSigner([key]).sign(token, params)}"


def _plain(key: bytes, path: str, query: str = "") -> str:
    return f"/{encrypt_path(path, key)}" + (f"?{query}" if query else "")


@contextlib.contextmanager
def edge_and_api(root: Path, key: bytes, workdir: Path, env: dict[str, str], storage_url: str | None = None
                 ) -> Iterator[tuple[str, object]]:  # fmt: skip
    api_env = {**env, "GATEWAY_PUBLIC_URL": PUBLIC, "GATEWAY_API_CLIENTS": api_client_entry("all", BEARER, "/")}
    with (
        running_gateway(root, [key], workdir / "edge", extra_env=env, storage_url=storage_url) as gateway,
        running_api(root, [key], workdir / "api", extra_env=api_env, storage_url=storage_url) as api,
    ):
        yield gateway.base_url, api


def _agree(edge_url: str, api: object, cases: list[Case]) -> None:
    reply = api.post("/v1/links/check", {"links": [PUBLIC + case.target for case in cases]}, BEARER)  # type: ignore[attr-defined]
    assert reply.status == 200, reply.body
    reports = json.loads(reply.body)["results"]
    seen = []
    for case, report in zip(cases, reports, strict=True):
        answered = request(edge_url, case.target).status
        seen.append((case.name, report.get("status"), answered))
    assert seen == [(case.name, case.expected, case.expected) for case in cases]


def test_inspector_and_edge_agree_on_every_kind_of_link(tmp_path: Path) -> None:
    key = new_key()
    root = tmp_path / "recordings"
    for path, data in {"/ok.wav": WAV, "/revoked.wav": WAV, "/not-audio.mp3": b"plain text, no audio" * 20}.items():
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_bytes(data)
    revocations = tmp_path / "revoked.txt"
    revocations.write_text("/revoked.wav\n")
    env = {"GATEWAY_REVOCATION_FILE": str(revocations), "GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path / "cache")}
    now = int(time.time())
    tampered = _signed(key, "/ok.wav", {"exp": str(now + 600)}).replace(f"exp={now + 600}", f"exp={now + 6000}")
    cases = [
        Case("ok", _plain(key, "/ok.wav"), 200),
        Case("missing", _plain(key, "/absent.wav"), 404),
        Case("revoked", _plain(key, "/revoked.wav"), 410),
        Case("expired", _signed(key, "/ok.wav", {"exp": str(now - 60)}), 410),
        Case("tampered", tampered, 403),
        Case("bad format", _plain(key, "/ok.wav", "format=bogus"), 400),
        Case("bad pixels", _plain(key, "/ok.wav", "peaks=1&pixels=999999"), 400),
        Case("not audio", _plain(key, "/not-audio.mp3", "format=mp3"), 415),
        Case("a good view", _plain(key, "/ok.wav", "peaks=1&pixels=100"), 200),
        Case("the last expiry", _signed(key, "/ok.wav", {"exp": "253402300799"}), 200),
        Case("an expiry past year 9999", _signed(key, "/ok.wav", {"exp": "253402300800"}), 403),
        Case("the listening page", _plain(key, "/ok.wav", "player=1"), 200),
        Case("the page of what is not audio", _plain(key, "/not-audio.mp3", "player=1"), 415),
        Case("the page with a format", _plain(key, "/ok.wav", "player=1&format=mp3"), 400),
        Case("a channel", _plain(key, "/ok.wav", "channel=1"), 200),
        Case("a channel it lacks", _plain(key, "/ok.wav", "channel=2"), 400),
        Case("split peaks", _plain(key, "/ok.wav", "peaks=1&split=1"), 200),
        Case("an unsigned mask", _plain(key, "/ok.wav", "mask=0-0.1"), 403),
        Case("a signed mask", _masked(key, "/ok.wav", {"mask": "0-0.1"}), 200),
        Case("a masked page", _masked(key, "/ok.wav", {"mask": "0-0.1", "player": "1"}), 200),
    ]
    with edge_and_api(root, key, tmp_path, env) as (edge_url, api):
        _agree(edge_url, api, cases)
    with edge_and_api(root, key, tmp_path / "strict", {**env, "GATEWAY_REQUIRE_SIGNED": "true"}) as (edge_url, api):
        _agree(edge_url, api, [
            Case("unsigned under strict mode", _plain(key, "/ok.wav"), 403),
            Case("signed under strict mode", _signed(key, "/ok.wav", {}), 200),
        ])  # fmt: skip


@pytest.mark.parametrize("moto_state", ["running", "killed"])
def test_inspector_and_edge_agree_on_s3_redirects_and_outages(tmp_path: Path, moto_state: str) -> None:
    key = new_key()
    root = tmp_path / "unused"
    root.mkdir()
    with running_moto(tmp_path / "moto") as moto:
        client = s3_client(moto.endpoint_url)
        client.create_bucket(Bucket="archive")
        client.put_object(Bucket="archive", Key="calls/ok.wav", Body=WAV)
        env = {**AWS_ENV, **FAST_FAILURE_ENV, "GATEWAY_S3_ENDPOINT_URL": moto.endpoint_url,
               "GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path / "cache")}  # fmt: skip
        with edge_and_api(root, key, tmp_path, env, "s3://archive/calls?redirect=true") as (edge_url, api):
            if moto_state == "running":
                cases = [
                    Case("S3 redirect", _plain(key, "/ok.wav"), 302),
                    Case("S3 missing", _plain(key, "/no.wav"), 404),
                ]
            else:
                moto.kill()
                cases = [Case("storage down", _plain(key, "/ok.wav"), 503)]
            _agree(edge_url, api, cases)
            if moto_state == "running":
                location = request(edge_url, cases[0].target).header("location") or ""
                assert urlsplit(location).path.endswith("/archive/calls/ok.wav")
