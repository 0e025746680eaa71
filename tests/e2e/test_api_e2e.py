"""The link API end to end: real `storage-gateway api` and `storage-gateway serve` processes sharing keys and storage.

Links issued by the API are fetched from the edge over HTTP; expiry,
tampering, other keys, rotation, revocation without restart and strict mode
are observed at the edge. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from support.http import Reply, request
from support.keys import new_key
from support.polling import poll
from support.processes import ApiServer, Gateway, api_client_entry, gateway_environment, running_api, running_gateway

from gateway.api.app import build_api
from gateway.api.models import MAX_BATCH
from gateway.config import load_settings
from gateway.links.signing import LinkSigner
from gateway.links.tokens import encrypt_path

ALL_TOKEN = "e2e-all-" + "x" * 32


def wav_bytes(frames: int = 4000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(os.urandom(frames * 2))
    return buffer.getvalue()


FILES = {
    "/300/a.mp3": b"ID3\x04\x00\x00\x00\x00\x00\x0a" + bytes(10) + bytes([0xFF, 0xFB, 0x90, 0x64]) + os.urandom(40_000),
    "/300/call.wav": wav_bytes(),
    "/300/renamed.mp3": wav_bytes(),
    "/300/звонок клиента.mp3": os.urandom(3000),
    "/300/expiring.mp3": os.urandom(2000),
    "/300/stripped.mp3": os.urandom(2000),
    "/300/revoke/by-path.mp3": os.urandom(1000),
    "/300/revoke/by-url.mp3": os.urandom(1000),
    "/300/revoke/dir/x.mp3": os.urandom(1000),
    "/300/rotation.mp3": os.urandom(1000),
    "/400/other.mp3": os.urandom(1000),
}


@dataclass
class World:
    root: Path
    old: bytes
    new: bytes
    revocations: Path
    edge: Gateway
    api: ApiServer
    crm_token: str
    clients: str
    workdir: Path

    def api_env(self, edge: Gateway, **extra: str) -> dict[str, str]:
        return {
            "GATEWAY_PUBLIC_URL": edge.base_url,
            "GATEWAY_API_CLIENTS": self.clients,
            "GATEWAY_REVOCATION_FILE": str(self.revocations),
            **extra,
        }

    def issue(self, body: dict[str, object], api: ApiServer | None = None) -> str:
        reply = (api or self.api).post("/v1/links", body, self.crm_token)
        assert reply.status == 200, reply.body
        return json.loads(reply.body)["record_url"]

    def revoke(self, line: str) -> None:
        """Add a line to the revocation file, replacing it atomically (as a ConfigMap update does)."""
        text = self.revocations.read_text() + line + "\n"
        temporary = self.revocations.with_suffix(".tmp")
        temporary.write_text(text)
        os.replace(temporary, self.revocations)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("api-e2e")
    root = base / "storage"
    for path, data in FILES.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    revocations = base / "revoked.txt"
    revocations.write_text("# revoked links\n")
    # The crm client is made the way ops make one: with `storage-gateway api-client add`.
    added = subprocess.run(
        ["storage-gateway", "api-client", "add", "crm", "--prefix", "/300/"],
        capture_output=True,
        text=True,
        check=True,
        cwd=base,
    )
    lines = dict(line.split(": ", 1) for line in added.stdout.splitlines())
    clients = ",".join([lines["client"], api_client_entry("all", ALL_TOKEN, "/")])
    old, new = new_key(), new_key()
    workdir = base / "processes"
    with running_gateway(root, [old], workdir, extra_env={"GATEWAY_REVOCATION_FILE": str(revocations)}) as edge:
        extra = {
            "GATEWAY_PUBLIC_URL": edge.base_url,
            "GATEWAY_API_CLIENTS": clients,
            "GATEWAY_REVOCATION_FILE": str(revocations),
        }
        with running_api(root, [old], workdir, extra_env=extra) as api:
            yield World(root, old, new, revocations, edge, api, lines["token"], clients, workdir)


def fetch(url: str, base_url: str | None = None, method: str = "GET") -> Reply:
    """GET a link; `base_url` sends its path and query to another edge (the same link after a restart)."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    return request(base_url or f"{parts.scheme}://{parts.netloc}", target, method)


def with_query(url: str, change: dict[str, str | None]) -> str:
    parts = urlsplit(url)
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in change.items():
        if value is None:
            params.pop(name, None)
        else:
            params[name] = value
    return parts._replace(query=urlencode(params)).geturl()


def token_of(url: str) -> str:
    return urlsplit(url).path.rpartition("/")[2]


def status_until(url: str, wanted: int, timeout: float = 15.0, base_url: str | None = None) -> list[int]:
    """Fetch until the edge answers `wanted` (bounded); every status seen, in order."""
    seen: list[int] = []

    def probe() -> int:
        seen.append(fetch(url, base_url).status)
        return seen[-1]

    poll(probe, lambda status: status == wanted, timeout=timeout, interval=0.1)
    return seen


# --- issued links at the edge ------------------------------------------------------------------------


def test_issued_legacy_link_downloads_from_the_edge(world):
    url = world.issue({"path": "/300/a.mp3"})
    assert url == f"{world.edge.base_url}/{encrypt_path('/300/a.mp3', world.old)}"
    reply = fetch(url)
    assert reply.status == 200
    assert reply.body == FILES["/300/a.mp3"]
    assert reply.header("content-disposition") == 'attachment; filename="a.mp3"'
    assert reply.header("content-type") == "audio/mpeg"


@pytest.mark.parametrize("path", ["/300/a.mp3", "/300/звонок клиента.mp3"])
def test_issued_legacy_link_decrypts_with_openssl(world, path):
    token = token_of(world.issue({"path": path}))
    sealed = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    plain = subprocess.run(
        ["openssl", "enc", "-d", "-aes-256-ecb", "-nopad", "-K", world.old.hex()],
        input=sealed,
        capture_output=True,
        check=True,
    ).stdout
    assert plain.rstrip(b"\0").decode("utf-8") == path
    assert len(plain) % 16 == 0


def test_signed_link_with_name_and_inline_playback(world):
    url = world.issue({"path": "/300/call.wav", "filename": "Звонок 17 февраля.wav", "inline": True})
    reply = fetch(url)
    assert reply.status == 200 and reply.body == FILES["/300/call.wav"]
    disposition = reply.header("content-disposition")
    assert disposition.startswith("inline; ")
    assert "filename*=UTF-8''%D0%97%D0%B2%D0%BE%D0%BD%D0%BE%D0%BA%2017%20" in disposition
    # A legacy link cannot rename the download: only signed links carry a name.
    legacy = world.issue({"path": "/300/call.wav"})
    renamed = fetch(legacy + "?filename=evil.exe")
    assert renamed.status == 200 and renamed.header("content-disposition") == 'attachment; filename="call.wav"'


def test_signed_links_support_ranges_like_legacy_ones(world):
    url = world.issue({"path": "/300/a.mp3", "expires_in": 3600})
    parts = urlsplit(url)
    reply = request(world.edge.base_url, f"{parts.path}?{parts.query}", headers={"Range": "bytes=10-19"})
    assert reply.status == 206 and reply.body == FILES["/300/a.mp3"][10:20]


def test_expiry_turns_a_link_into_410(world):
    url = world.issue({"path": "/300/expiring.mp3", "expires_in": 1})
    seen = status_until(url, 410)
    assert seen[-1] == 410, seen
    assert set(seen) <= {200, 410}
    # and it stays gone
    assert fetch(url).status == 410
    body = json.loads(world.api.post("/v1/links/resolve", {"link": url}, world.crm_token).body)
    assert (body["expired"], body["signature_valid"], body["status"]) == (True, True, 410)


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "9999999999"},
        {"inline": None},
        {"inline": "0"},
        {"filename": "other.mp3"},
        {"filename": None},
        {"sig": "A" * 43},
        {"sig": ""},
    ],
)
def test_tampering_is_403(world, change):
    url = world.issue({"path": "/300/a.mp3", "expires_in": 3600, "inline": True, "filename": "x.mp3"})
    assert fetch(url).status == 200
    assert fetch(with_query(url, change)).status == 403


def test_extra_unsigned_parameters_do_not_break_a_signed_link(world):
    url = world.issue({"path": "/300/a.mp3", "expires_in": 3600})
    assert fetch(with_query(url, {"utm_source": "crm", "t": "10"})).status == 200


def test_a_signature_made_with_another_key_is_403(world):
    token = token_of(world.issue({"path": "/300/a.mp3"}))
    forged = LinkSigner([new_key()]).sign(token, {"exp": "9999999999"})
    assert fetch(f"{world.edge.base_url}/{token}?{forged}").status == 403


def test_without_strict_mode_the_bare_token_of_a_signed_link_is_a_legacy_link(world):
    """Expiry binds only in strict mode: drop `exp` and `sig` and the token is the legacy link (by design)."""
    url = world.issue({"path": "/300/stripped.mp3", "expires_in": 3600})
    assert fetch(with_query(url, {"exp": None, "sig": None})).status == 200


def test_rotation_restart_the_edge_with_the_new_key_first(world):
    legacy = world.issue({"path": "/300/rotation.mp3"})
    signed = world.issue({"path": "/300/rotation.mp3", "expires_in": 3600, "inline": True})
    workdir = world.workdir / "rotation"
    revocation = {"GATEWAY_REVOCATION_FILE": str(world.revocations)}
    # Step 1: the edge restarts with the new key first and the old key second.
    with running_gateway(world.root, [world.new, world.old], workdir, extra_env=revocation) as rotated:
        assert fetch(legacy, rotated.base_url).status == 200
        assert fetch(signed, rotated.base_url).status == 200
        # Step 2: then the API issues with the new key...
        with running_api(world.root, [world.new, world.old], workdir, extra_env=world.api_env(rotated)) as api:
            new_legacy = world.issue({"path": "/300/rotation.mp3"}, api)
            new_signed = world.issue({"path": "/300/rotation.mp3", "expires_in": 3600}, api)
            assert token_of(new_legacy) == encrypt_path("/300/rotation.mp3", world.new)
            for url in (new_legacy, new_signed, legacy, signed):
                reply = fetch(url, rotated.base_url)
                assert reply.status == 200 and reply.body == FILES["/300/rotation.mp3"]
            # ...which an edge still on the old key alone would not serve: hence the order.
            assert fetch(new_legacy, world.edge.base_url).status == 404
            assert fetch(new_signed, world.edge.base_url).status == 403
            # resolve says which key opened each link, by fingerprint only
            old_report = json.loads(api.post("/v1/links/resolve", {"link": legacy}, world.crm_token).body)
            new_report = json.loads(api.post("/v1/links/resolve", {"link": new_legacy}, world.crm_token).body)
            assert old_report["key"]["index"] == 2 and new_report["key"]["index"] == 1
            assert old_report["key"]["fingerprint"] != new_report["key"]["fingerprint"]


@pytest.mark.parametrize("how", ["path", "url", "prefix"])
def test_revocation_takes_effect_without_restart(world, how):
    path = {"path": "/300/revoke/by-path.mp3", "url": "/300/revoke/by-url.mp3", "prefix": "/300/revoke/dir/x.mp3"}[how]
    url = world.issue({"path": path, "expires_in": 3600} if how == "url" else {"path": path})
    assert fetch(url).status == 200
    world.revoke({"path": path, "url": url, "prefix": "/300/revoke/dir/"}[how])
    seen = status_until(url, 410)
    assert seen[-1] == 410, seen
    assert set(seen) <= {200, 410}
    report = json.loads(world.api.post("/v1/links/resolve", {"link": url}, world.crm_token).body)
    assert (report["revoked"], report["served"], report["status"]) == (True, False, 410)
    # Others are untouched.
    assert fetch(world.issue({"path": "/300/a.mp3"})).status == 200


def test_strict_mode_refuses_legacy_links_and_serves_signed_ones(world):
    strict = {"GATEWAY_REQUIRE_SIGNED": "true", "GATEWAY_REVOCATION_FILE": str(world.revocations)}
    workdir = world.workdir / "strict"
    with running_gateway(world.root, [world.old], workdir, extra_env=strict) as edge:
        legacy = world.issue({"path": "/300/a.mp3"})
        signed = world.issue({"path": "/300/a.mp3", "expires_in": 3600})
        assert fetch(legacy, edge.base_url).status == 403
        assert fetch(signed, edge.base_url).status == 200
        assert fetch(with_query(signed, {"exp": None, "sig": None}), edge.base_url).status == 403
        # An API sharing the strict configuration signs every link, even without options.
        with running_api(world.root, [world.old], workdir, extra_env=world.api_env(edge, **strict)) as api:
            reply = api.post("/v1/links", {"path": "/300/a.mp3"}, world.crm_token)
            body = json.loads(reply.body)
            assert body["signed"] is True and body["expires_at"] is None
            fetched = fetch(body["record_url"])
            assert fetched.status == 200 and fetched.body == FILES["/300/a.mp3"]


# --- the API's refusals over HTTP ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "error_code"),
    [(None, None), ("Bearer wrong-token", "invalid_token"), ("Basic Y3JtOnNlY3JldA==", "invalid_request")],
)
def test_401_for_missing_wrong_or_malformed_tokens(world, header, error_code):
    headers = {} if header is None else {"Authorization": header}
    reply = world.api.post("/v1/links", {"path": "/300/a.mp3"}, None, headers)
    assert reply.status == 401
    assert reply.header("www-authenticate").startswith("Bearer ")
    assert json.loads(reply.body)["error"]["status"] == 401
    if error_code:
        assert f'error="{error_code}"' in reply.header("www-authenticate")


@pytest.mark.parametrize(
    ("target", "body", "status", "field"),
    [
        ("/v1/links", {"path": "/300/../400/other.mp3"}, 403, "path"),
        ("/v1/links", {"path": "/300/../../etc/passwd"}, 400, "path"),
        ("/v1/links", {"path": "/400/other.mp3"}, 403, "path"),
        ("/v1/links", b"{not json", 400, "body"),
        ("/v1/links", b"[]", 400, "body"),
        ("/v1/links", {}, 400, "path"),
        ("/v1/links", {"path": 300}, 400, "path"),
        ("/v1/links", {"path": "/300/a.mp3", "expires_in": "60"}, 400, "expires_in"),
        ("/v1/links", {"path": "/300/a.mp3", "expires_in": -1}, 400, "expires_in"),
        ("/v1/links", {"path": "/300/a.mp3", "inline": "yes"}, 400, "inline"),
        ("/v1/links", {"path": "/300/a.mp3", "filename": "../x"}, 400, "filename"),
        ("/v1/links/batch", {"links": [{"path": "/300/a.mp3"}] * (MAX_BATCH + 1)}, 400, "links"),
        ("/v1/links/batch", {"links": "x"}, 400, "links"),
        ("/v1/links/resolve", {"link": "garbage"}, 400, "link"),
        ("/v1/links/check", {"links": ["x"] * 101}, 400, "links"),
    ],
)
def test_refusals(world, target, body, status, field):
    reply = world.api.post(target, body, world.crm_token)
    assert reply.status == status, reply.body
    error = json.loads(reply.body)["error"]
    assert (error["status"], error["field"]) == (status, field)
    assert error["message"].startswith(field)


def test_batch_over_http_with_partial_failures(world):
    items = [{"path": f"/300/{name}"} for name in ("a.mp3", "call.wav")]
    items += [
        {"path": "/400/other.mp3"},
        {"path": "/300/a.mp3", "expires_in": 0},
        {"path": "/300/a.mp3", "inline": True},
    ]
    reply = world.api.post("/v1/links/batch", {"links": items}, world.crm_token)
    assert reply.status == 200
    results = json.loads(reply.body)["results"]
    assert [result.get("error", {}).get("status") for result in results] == [None, None, 403, 400, None]
    for result, item in zip(results, items, strict=True):
        if "record_url" in result:
            fetched = fetch(result["record_url"])
            assert fetched.status == 200 and fetched.body == FILES[item["path"]]


def test_batch_of_the_maximum_size_over_http(world):
    items = [{"path": f"/300/batch/{n}.mp3"} for n in range(MAX_BATCH)]
    # Links to recordings not there yet: a client of the whole storage (a /300/ client gets 404s).
    reply = world.api.post("/v1/links/batch", {"links": items}, ALL_TOKEN)
    assert reply.status == 200
    results = json.loads(reply.body)["results"]
    assert len(results) == MAX_BATCH and all("record_url" in result for result in results)
    assert token_of(results[-1]["record_url"]) == encrypt_path(f"/300/batch/{MAX_BATCH - 1}.mp3", world.old)


def test_resolve_over_http(world):
    url = world.issue({"path": "/300/call.wav", "expires_in": 3600})
    reply = world.api.post("/v1/links/resolve", {"link": url}, world.crm_token)
    assert reply.status == 200 and reply.header("cache-control") == "no-store"
    report = json.loads(reply.body)
    assert report["path"] == "/300/call.wav"
    assert report["key"]["index"] == 1 and len(report["key"]["fingerprint"]) == 8
    assert world.old.hex() not in reply.body.decode()
    assert (report["exists"], report["size"], report["content_type"]) == (
        True,
        len(FILES["/300/call.wav"]),
        "audio/wav",
    )
    assert report["last_modified"].endswith("Z")
    assert (report["signed"], report["signature_valid"], report["expired"], report["revoked"]) == (
        True,
        True,
        False,
        False,
    )
    assert report["served"] is True
    outside = world.api.post("/v1/links/resolve", {"link": encrypt_path("/400/other.mp3", world.old)}, world.crm_token)
    garbage = world.api.post("/v1/links/resolve", {"link": "garbage"}, world.crm_token)
    assert (outside.status, outside.body) == (garbage.status, garbage.body)
    assert outside.status == 400
    everything = world.api.post("/v1/links/resolve", {"link": encrypt_path("/400/other.mp3", world.old)}, ALL_TOKEN)
    assert everything.status == 200


def test_check_over_http_reports_a_wav_named_mp3(world):
    links = [world.issue({"path": path}) for path in ("/300/a.mp3", "/300/call.wav", "/300/renamed.mp3")]
    links.append(world.edge.base_url + "/" + encrypt_path("/300/missing.mp3", world.old))
    reply = world.api.post("/v1/links/check", {"links": links}, world.crm_token)
    assert reply.status == 200
    results = json.loads(reply.body)["results"]
    assert [(r["exists"], r["detected_type"], r["type_mismatch"], r["served"]) for r in results] == [
        (True, "audio/mpeg", False, True),
        (True, "audio/wav", False, True),
        (True, "audio/wav", True, True),
        (False, None, None, False),
    ]
    assert results[2]["content_type"] == "audio/mpeg"
    # What check says about serving is what the edge does.
    assert [fetch(link).status for link in links] == [200, 200, 200, 404]


def test_openapi_lists_every_route(world):
    reply = request(world.api.base_url, "/openapi.json")
    assert reply.status == 200
    document = json.loads(reply.body)
    environment = gateway_environment(world.api.keys, world.root, extra_env=world.api_env(world.edge))
    routes = build_api(load_settings(None, environment)).app.routes
    assert set(document["paths"]) == {route.path for route in routes}
    assert {"/v1/links", "/v1/links/batch", "/v1/links/resolve", "/v1/links/check"} <= set(document["paths"])


def test_link_decrypt_from_the_shell_on_an_issued_link(world):
    url = world.issue({"path": "/300/call.wav", "expires_in": 3600})
    environment = gateway_environment(world.api.keys, world.root, extra_env=world.api_env(world.edge))
    done = subprocess.run(
        ["storage-gateway", "link", "decrypt", url], env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "/300/call.wav"
    assert "signed: true" in lines and "exists: true" in lines and "served: true" in lines
    path_only = subprocess.run(
        f"storage-gateway link decrypt '{url}' | head -n1",
        shell=True,
        env=environment,
        capture_output=True,
        text=True,
        check=True,
    )
    assert path_only.stdout == "/300/call.wav\n"
