"""The link API in process (Starlette's TestClient): issuing, auth, validation, batch, resolve, check, OpenAPI.

Also the configuration of API clients. The `api`, `api-client add` and
`link decrypt` commands run as processes in e2e/test_api_cli.py; the same
API is exercised over real processes next to a real edge in
e2e/test_api_e2e.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from starlette.testclient import TestClient
from support.linkapi import (
    ALL,
    CRM,
    FILES,
    K1,
    K2,
    MP3,
    OTHER,
    PUBLIC,
    entry,
    plant,
    settings_env,
)

from gateway.api import app as api_module
from gateway.api.app import build_api
from gateway.api.models import MAX_BATCH, MAX_CHECK, MAX_EXPIRES_IN
from gateway.config import ConfigError, load_settings
from gateway.links.clients import ApiClient
from gateway.links.clients import parse_client as api_client
from gateway.links.signing import LinkSigner
from gateway.links.tokens import encrypt_path

START = 1_800_000_000.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    client: TestClient
    root: Path
    clock: Clock
    revocations: Path

    def post(self, target: str, body: object = None, bearer: str | None = CRM, **kwargs: object):
        headers = dict(kwargs.pop("headers", {}) or {})  # type: ignore[call-overload]
        if bearer is not None:
            headers.setdefault("Authorization", f"Bearer {bearer}")
        if body is not None:
            kwargs["json"] = body
        return self.client.post(target, headers=headers, **kwargs)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return plant(tmp_path)


def make_env(root: Path, **extra: str) -> Iterator[Env]:
    revocations = root.parent / "revoked.txt"
    revocations.touch()
    settings = load_settings(None, settings_env(root, GATEWAY_REVOCATION_FILE=str(revocations), **extra))
    clock = Clock(START)
    with TestClient(build_api(settings, clock)) as client:
        yield Env(client, root, clock, revocations)


@pytest.fixture
def env(root: Path) -> Iterator[Env]:
    yield from make_env(root)


def query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def token_of(url: str) -> str:
    return urlsplit(url).path.rpartition("/")[2]


def error(response, status: int, field: str | None = None) -> str:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert body["status"] == status
    if field is not None:
        assert body["field"] == field, body
        assert body["message"].startswith(field), body
    assert response.headers["cache-control"] == "no-store"
    return body["message"]


# --- issuing ---------------------------------------------------------------------------------


def test_plain_link_is_the_legacy_link(env):
    reply = env.post("/v1/links", {"path": "/300/a.mp3"})
    assert reply.status_code == 200
    assert reply.headers["cache-control"] == "no-store"
    assert reply.json() == {
        "record_url": f"{PUBLIC}/{encrypt_path('/300/a.mp3', K1)}",
        "expires_at": None,
        "path": "/300/a.mp3",
        "signed": False,
    }


@pytest.mark.parametrize(
    ("asked", "normal"),
    [
        ("300/a.mp3", "/300/a.mp3"),
        ("//300//a.mp3", "/300/a.mp3"),
        ("/300/./sub/../a.mp3", "/300/a.mp3"),
        ("/300/звонок клиента.mp3", "/300/звонок клиента.mp3"),
    ],
)
def test_paths_are_normalised_before_encryption(env, asked, normal):
    reply = env.post("/v1/links", {"path": asked})
    assert reply.status_code == 200, reply.text
    assert reply.json()["path"] == normal
    assert token_of(reply.json()["record_url"]) == encrypt_path(normal, K1)


def test_a_client_limited_to_a_prefix_gets_links_to_existing_recordings_only(env):
    # In legacy mode a token is a legacy link whatever its query, and ECB encrypts each block
    # alone: a path the client chooses freely would let it cut a token for a path outside its
    # prefix out of the one it is given. A recording's own name is not the client's choice.
    reply = env.post("/v1/links", {"path": "/300/aaaaaaaaaaa/400/other.mp3"})
    assert reply.json() == {"error": {"status": 404, "message": "path: no such recording", "field": "path"}}
    assert env.post("/v1/links", {"path": "/300/not-yet.mp3", "expires_in": 60}).status_code == 404
    assert env.post("/v1/links", {"path": "/300/a.mp3"}).status_code == 200


def test_a_path_to_a_missing_file_still_gets_a_link_where_no_cut_can_escape(root):
    # Links are made before recordings are uploaded; the edge answers 404 until the file exists.
    for env, bearer in ((make_env(root), ALL), (make_env(root, GATEWAY_REQUIRE_SIGNED="true"), CRM)):
        with contextlib.closing(env) as running:
            world = next(running)
            reply = world.post("/v1/links", {"path": "/300/not-yet.mp3"}, bearer=bearer)
            assert reply.status_code == 200, reply.text


def test_expires_in_makes_a_signed_expiring_link(env):
    reply = env.post("/v1/links", {"path": "/300/a.mp3", "expires_in": 600})
    assert reply.status_code == 200
    body = reply.json()
    exp = int(START) + 600
    assert body["expires_at"] == "2027-01-15T08:10:00Z" and body["signed"] is True
    params = query(body["record_url"])
    assert params["exp"] == str(exp) and set(params) == {"exp", "sig"}
    token = token_of(body["record_url"])
    assert token == encrypt_path("/300/a.mp3", K1)
    assert LinkSigner([K1]).check(token, params, START) is None


def test_filename_and_inline_are_signed(env):
    reply = env.post("/v1/links", {"path": "/300/a.mp3", "filename": "звонок & co.mp3", "inline": True})
    body = reply.json()
    assert body["expires_at"] is None and body["signed"] is True
    params = query(body["record_url"])
    assert params["inline"] == "1" and params["filename"] == "звонок & co.mp3" and "exp" not in params
    assert LinkSigner([K1]).check(token_of(body["record_url"]), params, START + 10**9) is None


@pytest.mark.parametrize("options", [{"inline": False}, {"expires_in": None, "filename": None, "inline": None}])
def test_inline_false_and_nulls_mean_a_plain_link(env, options):
    body = env.post("/v1/links", {"path": "/300/a.mp3", **options}).json()
    assert body["signed"] is False and "?" not in body["record_url"]


def test_links_are_issued_with_the_first_key(root):
    for api in make_env(root, GATEWAY_KEY=f"{K2.hex()},{K1.hex()}"):
        body = api.post("/v1/links", {"path": "/300/a.mp3", "expires_in": 60}).json()
        token = token_of(body["record_url"])
        assert token == encrypt_path("/300/a.mp3", K2)
        assert LinkSigner([K2]).check(token, query(body["record_url"]), START) is None


def test_require_signed_makes_every_link_signed(root):
    for api in make_env(root, GATEWAY_REQUIRE_SIGNED="true"):
        body = api.post("/v1/links", {"path": "/300/a.mp3"}).json()
        assert body["signed"] is True and body["expires_at"] is None
        params = query(body["record_url"])
        assert set(params) == {"sig"}
        assert LinkSigner([K1]).check(token_of(body["record_url"]), params, START) is None


# --- authentication --------------------------------------------------------------------------

ENDPOINTS = {
    "/v1/links": {"path": "/300/a.mp3"},
    "/v1/links/batch": {"links": [{"path": "/300/a.mp3"}]},
    "/v1/links/resolve": {"link": encrypt_path("/300/a.mp3", K1)},
    "/v1/links/check": {"links": [encrypt_path("/300/a.mp3", K1)]},
}


@pytest.mark.parametrize("target", list(ENDPOINTS))
@pytest.mark.parametrize(
    ("header", "error_code"),
    [
        (None, None),
        (f"Bearer {CRM}x", "invalid_token"),
        ("Bearer " + "A" * 43, "invalid_token"),
        (f"Basic {base64.b64encode(b'crm:' + CRM.encode()).decode()}", "invalid_request"),
        ("Bearer", "invalid_request"),
        ("Bearer ", "invalid_request"),
        (f"Bearer {CRM} extra", "invalid_request"),
        (CRM, "invalid_request"),
        (f"Token {CRM}", "invalid_request"),
    ],
)
def test_missing_wrong_or_malformed_tokens_are_401(env, target, header, error_code):
    headers = {} if header is None else {"Authorization": header}
    reply = env.post(target, ENDPOINTS[target], bearer=None, headers=headers)
    error(reply, 401)
    challenge = reply.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    if error_code:
        assert f'error="{error_code}"' in challenge
    else:
        assert "error=" not in challenge


@pytest.mark.parametrize("target", list(ENDPOINTS))
def test_every_endpoint_accepts_a_right_token(env, target):
    assert env.post(target, ENDPOINTS[target], bearer=ALL).status_code == 200


def test_the_scheme_is_case_insensitive(env):
    reply = env.post("/v1/links", {"path": "/300/a.mp3"}, bearer=None, headers={"Authorization": f"bearer {CRM}"})
    assert reply.status_code == 200


def test_authentication_comes_before_reading_the_body(env):
    reply = env.post("/v1/links", bearer="nope", content=b"{not json")
    error(reply, 401)


def test_every_client_hash_is_compared(env, monkeypatch):
    """No early exit: the matching client is found by comparing against all of them, in constant time."""
    calls: list[tuple[bytes, bytes]] = []
    original = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return original(a, b)

    monkeypatch.setattr(api_module.hmac, "compare_digest", counting)
    for bearer in (CRM, ALL, OTHER, "unknown"):
        calls.clear()
        env.post("/v1/links", {"path": "/300/a.mp3"}, bearer=bearer)
        assert len(calls) == 3
        presented = hashlib.sha256(bearer.encode()).digest()
        assert all(a == presented and len(b) == 32 for a, b in calls)


def test_bearer_tokens_are_never_in_responses(env):
    for bearer in (CRM, "wrong"):
        reply = env.post("/v1/links", {"path": "/400/other.mp3"}, bearer=bearer)
        assert bearer not in reply.text


# --- authorisation by prefix -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/400/other.mp3",
        "/3000/sibling.mp3",  # a prefix is a directory, not a string prefix
        "/300",
        "/300/",
        "/300/../400/other.mp3",
        "/300/sub/../../400/other.mp3",
    ],
)
def test_paths_outside_the_prefix_are_403(env, path):
    message = error(env.post("/v1/links", {"path": path}), 403, "path")
    assert "/300/" in message


@pytest.mark.parametrize("path", ["/300/../../etc/passwd", "/../300/a.mp3", "/", "//", "/300/a\nb.mp3", "/300/a\x00"])
def test_paths_refused_by_confinement_are_400(env, path):
    error(env.post("/v1/links", {"path": path}, bearer=ALL), 400, "path")


def test_percent_sequences_are_literal_names_not_escapes(env):
    # The path is a storage path, not a URL: %2e%2e is a file called "%2e%2e", inside /300/.
    body = env.post("/v1/links", {"path": "/300/%2e%2e/x.mp3"}, bearer=ALL).json()
    assert body["path"] == "/300/%2e%2e/x.mp3"


def test_the_root_prefix_allows_everything(env):
    for path in FILES:
        assert env.post("/v1/links", {"path": path}, bearer=ALL).status_code == 200


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"", "body"),
        (b"{", "body"),
        (b"{'path': '/300/a.mp3'}", "body"),
        (b'{"path": "/300/a.mp3"', "body"),
        (b"\xff\xfe{}", "body"),
        (b'[{"path": "/300/a.mp3"}]', "body"),
        (b'"/300/a.mp3"', "body"),
        (b"null", "body"),
        (b'{"path": "/300/a.mp3", "expires_in": NaN}', "body"),
        (b'{"path": "/300/a.mp3", "expires_in": Infinity}', "body"),
        (b"[" * 100_000 + b"]" * 100_000, "body"),
    ],
)
def test_malformed_json_is_400(env, body, field):
    error(env.post("/v1/links", content=body, headers={"content-type": "application/json"}), 400, field)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "path"),
        ({"expires_in": 60}, "path"),
        ({"path": None}, "path"),
        ({"path": 300}, "path"),
        ({"path": ["/300/a.mp3"]}, "path"),
        ({"path": {"p": 1}}, "path"),
        ({"path": ""}, "path"),
        ({"path": "/300/a.mp3", "expires_in": -1}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": 0}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": 1.5}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": 60.0}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": "60"}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": True}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": MAX_EXPIRES_IN + 1}, "expires_in"),
        ({"path": "/300/a.mp3", "expires_in": 10**30}, "expires_in"),
        ({"path": "/300/a.mp3", "filename": 1}, "filename"),
        ({"path": "/300/a.mp3", "filename": ""}, "filename"),
        ({"path": "/300/a.mp3", "filename": ".."}, "filename"),
        ({"path": "/300/a.mp3", "filename": "a/b.mp3"}, "filename"),
        ({"path": "/300/a.mp3", "filename": "a\\b.mp3"}, "filename"),
        ({"path": "/300/a.mp3", "filename": "a\r\nSet-Cookie: x.mp3"}, "filename"),
        ({"path": "/300/a.mp3", "filename": "x" * 256}, "filename"),
        ({"path": "/300/a.mp3", "inline": "yes"}, "inline"),
        ({"path": "/300/a.mp3", "inline": 1}, "inline"),
        ({"path": "/300/a.mp3", "expire_in": 60}, "expire_in"),  # a typo must not make a permanent link
        ({"path": "/300/a.mp3", "sig": "x"}, "sig"),
    ],
)
def test_invalid_fields_are_400_naming_the_field(env, body, field):
    error(env.post("/v1/links", body), 400, field)


def test_field_errors_come_before_prefix_errors(env):
    error(env.post("/v1/links", {"path": "/400/other.mp3", "expires_in": -5}), 400, "expires_in")


def test_a_body_over_the_limit_is_413(env):
    reply = env.post("/v1/links", content=b" " * (api_module.MAX_BODY_BYTES + 1))
    error(reply, 413, "body")


def test_largest_accepted_values(env):
    name = "я" * 127  # 254 bytes
    reply = env.post("/v1/links", {"path": "/300/a.mp3", "expires_in": MAX_EXPIRES_IN, "filename": name})
    assert reply.status_code == 200, reply.text


def test_unknown_routes_and_methods_answer_json(env):
    error(env.client.get("/v1/nothing"), 404)
    reply = env.client.get("/v1/links")
    error(reply, 405)
    assert reply.headers["allow"] == "POST"


# --- batch -------------------------------------------------------------------------------------


def test_batch_answers_each_item_in_order(env):
    items = [
        {"path": "/300/a.mp3"},
        {"path": "/400/other.mp3"},
        {"path": "/300/a.mp3", "expires_in": -1},
        "not an object",
        {"path": "/300/../../etc/passwd"},
        {"path": "/300/call.wav", "expires_in": 60, "inline": True},
        {},
        {"path": "/300/a.mp3", "bogus": 1},
    ]
    reply = env.post("/v1/links/batch", {"links": items})
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert len(results) == len(items)
    assert results[0]["record_url"] == f"{PUBLIC}/{encrypt_path('/300/a.mp3', K1)}"
    assert results[1]["error"]["status"] == 403 and results[1]["error"]["field"] == "path"
    assert results[2]["error"] == {"status": 400, "field": "expires_in", "message": results[2]["error"]["message"]}
    assert results[3]["error"]["status"] == 400 and results[3]["error"]["field"] == "body"
    assert results[4]["error"]["status"] == 400 and results[4]["error"]["field"] == "path"
    assert query(results[5]["record_url"])["inline"] == "1" and results[5]["expires_at"]
    assert results[6]["error"]["field"] == "path"
    assert results[7]["error"]["field"] == "bogus"


def test_batch_of_the_maximum_size(env):
    items = [{"path": f"/300/file-{n}.mp3"} for n in range(MAX_BATCH)]
    results = env.post("/v1/links/batch", {"links": items}, bearer=ALL).json()["results"]
    assert len(results) == MAX_BATCH
    assert [token_of(r["record_url"]) for r in results[:3]] == [
        encrypt_path(f"/300/file-{n}.mp3", K1) for n in range(3)
    ]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"links": [{"path": "/300/a.mp3"}] * (MAX_BATCH + 1)}, "links"),
        ({}, "links"),
        ({"links": None}, "links"),
        ({"links": {"path": "/300/a.mp3"}}, "links"),
        ({"links": "/300/a.mp3"}, "links"),
        ({"links": [], "extra": 1}, "extra"),
    ],
)
def test_batch_refused_as_a_whole(env, body, field):
    message = error(env.post("/v1/links/batch", body), 400, field)
    if field == "links" and isinstance(body.get("links"), list):
        assert str(MAX_BATCH) in message


def test_an_empty_batch_is_fine(env):
    assert env.post("/v1/links/batch", {"links": []}).json() == {"results": []}


# --- resolve -------------------------------------------------------------------------------------


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def test_resolve_a_plain_link(env):
    url = env.post("/v1/links", {"path": "/300/call.wav"}).json()["record_url"]
    reply = env.post("/v1/links/resolve", {"link": url})
    assert reply.status_code == 200
    assert reply.json() == {
        "path": "/300/call.wav",
        "key": {"index": 1, "fingerprint": fingerprint(K1)},
        "signed": False,
        "signature_valid": None,
        "expires_at": None,
        "expired": False,
        "revoked": False,
        "exists": True,
        "size": len(FILES["/300/call.wav"]),
        "content_type": "audio/wav",
        "last_modified": "2017-02-17T11:05:04Z",
        "storage": "disk",
        "served": True,
        "status": 200,
        "reason": None,
        "detail": None,
    }
    assert K1.hex() not in reply.text and K1.hex().upper() not in reply.text


@pytest.mark.parametrize("form", ["token", "padded", "url", "url-with-tracking", "relative"])
def test_resolve_accepts_a_token_or_any_link_form(env, form):
    token = encrypt_path("/300/a.mp3", K1)
    link = {
        "token": token,
        "padded": token + "=" * (-len(token) % 4),
        "url": f"{PUBLIC}/{token}",
        "url-with-tracking": f"{PUBLIC}/{token}?utm_source=crm#t=10",
        "relative": f"/{token}",
    }[form]
    body = env.post("/v1/links/resolve", {"link": link}).json()
    assert body["path"] == "/300/a.mp3" and body["exists"] is True


def test_resolve_a_signed_link_through_its_life(env):
    url = env.post("/v1/links", {"path": "/300/a.mp3", "expires_in": 60}).json()["record_url"]
    body = env.post("/v1/links/resolve", {"link": url}).json()
    assert (body["signed"], body["signature_valid"], body["expired"], body["served"]) == (True, True, False, True)
    assert body["expires_at"] == "2027-01-15T08:01:00Z"

    env.clock.now = START + 60
    body = env.post("/v1/links/resolve", {"link": url}).json()
    assert (body["signature_valid"], body["expired"], body["served"]) == (True, True, False)
    assert (body["status"], body["reason"]) == (410, "expired")

    tampered = url.replace(f"exp={int(START) + 60}", f"exp={int(START) + 6000}")
    body = env.post("/v1/links/resolve", {"link": tampered}).json()
    assert (body["signature_valid"], body["served"], body["status"], body["reason"]) == (False, False, 403, "signature")
    assert body["exists"] is True  # still looked up: the report says everything it knows


def test_resolve_reports_revocation_without_restart(env):
    url = env.post("/v1/links", {"path": "/300/sub/deep.mp3"}).json()["record_url"]
    assert env.post("/v1/links/resolve", {"link": url}).json()["revoked"] is False
    env.revocations.write_text("/300/sub/\n")
    body = env.post("/v1/links/resolve", {"link": url}).json()
    assert (body["revoked"], body["served"], body["status"], body["reason"]) == (True, False, 410, "revoked")


def test_resolve_a_missing_file(env):
    body = env.post("/v1/links/resolve", {"link": encrypt_path("/300/gone.mp3", K1)}).json()
    assert (body["exists"], body["size"], body["last_modified"], body["storage"]) == (False, None, None, None)
    assert (body["served"], body["status"], body["reason"]) == (False, 404, "not_found")
    assert body["content_type"] == "audio/mpeg"


def test_resolve_a_directory(env):
    body = env.post("/v1/links/resolve", {"link": encrypt_path("/300/sub", K1)}).json()
    assert (body["exists"], body["reason"]) == (False, "not_file")


def test_resolve_says_which_key_opened_the_link(root):
    for api in make_env(root, GATEWAY_KEY=f"{K2.hex()},{K1.hex()}"):
        old = api.post("/v1/links/resolve", {"link": encrypt_path("/300/a.mp3", K1)}).json()
        assert old["key"] == {"index": 2, "fingerprint": fingerprint(K1)}
        new = api.post("/v1/links/resolve", {"link": encrypt_path("/300/a.mp3", K2)}).json()
        assert new["key"] == {"index": 1, "fingerprint": fingerprint(K2)}


def test_resolve_is_limited_to_the_callers_prefix(env):
    # Outside the prefix, a link is answered exactly as garbage is: not even "it is outside" is told.
    garbage = env.post("/v1/links/resolve", {"link": "garbage"})
    link = encrypt_path("/400/other.mp3", K1)
    assert env.post("/v1/links/resolve", {"link": link}, bearer=OTHER).status_code == 200
    missing = encrypt_path("/400/missing.mp3", K1)
    for outside in (link, missing, encrypt_path("/300/../400/other.mp3", K1)):
        reply = env.post("/v1/links/resolve", {"link": outside})
        assert (reply.status_code, reply.content) == (garbage.status_code, garbage.content)
    error(garbage, 400, "link")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"link": "garbage"}, "link"),
        ({"link": "A" * 23}, "link"),
        ({"link": encrypt_path("/300/a.mp3", K2)}, "link"),  # no configured key opens it
        ({"link": encrypt_path("/../etc/passwd", K1)}, "link"),  # opens, but to a refused path
        ({"link": encrypt_path("/300/a\nb.mp3", K1)}, "link"),
        ({"link": ""}, "link"),
        ({"link": 5}, "link"),
        ({"link": None}, "link"),
        ({}, "link"),
        ({"link": "x", "path": "/300/a.mp3"}, "path"),
    ],
)
def test_resolve_refuses_what_is_not_a_link(env, body, field):
    error(env.post("/v1/links/resolve", body, bearer=ALL), 400, field)


# --- check ---------------------------------------------------------------------------------------


def test_check_reports_existence_size_and_real_type(env):
    links = [encrypt_path(path, K1) for path in ("/300/a.mp3", "/300/call.wav", "/300/renamed.mp3")]
    links += [encrypt_path("/300/unknown.mp3", K1), encrypt_path("/300/gone.mp3", K1)]
    results = env.post("/v1/links/check", {"links": links}).json()["results"]
    assert [r["link"] for r in results] == links
    mp3, wav, renamed, unknown, gone = results
    assert (mp3["exists"], mp3["size"], mp3["content_type"], mp3["detected_type"], mp3["type_mismatch"]) == (
        True,
        len(MP3),
        "audio/mpeg",
        "audio/mpeg",
        False,
    )
    assert (wav["detected_format"], wav["type_mismatch"], wav["served"]) == ("wav", False, True)
    assert (renamed["content_type"], renamed["detected_type"], renamed["type_mismatch"]) == (
        "audio/mpeg",
        "audio/wav",
        True,
    )
    assert (unknown["detected_type"], unknown["type_mismatch"]) == (None, None)
    assert (gone["exists"], gone["served"], gone["detected_type"], gone["type_mismatch"]) == (False, False, None, None)


def test_check_says_whether_each_link_would_be_served(env):
    fresh = env.post("/v1/links", {"path": "/300/a.mp3", "expires_in": 5}).json()["record_url"]
    lasting = env.post("/v1/links", {"path": "/300/call.wav", "expires_in": 500}).json()["record_url"]
    tampered = lasting.replace("exp=", "exp=1")
    revoked = env.post("/v1/links", {"path": "/300/sub/deep.mp3"}).json()["record_url"]
    env.revocations.write_text(token_of(revoked) + "\n")
    env.clock.now = START + 10
    results = env.post("/v1/links/check", {"links": [fresh, lasting, tampered, revoked]}).json()["results"]
    assert [(r["served"], r["status"], r["reason"]) for r in results] == [
        (False, 410, "expired"),
        (True, 200, None),
        (False, 403, "signature"),
        (False, 410, "revoked"),
    ]
    assert [r["expired"] for r in results] == [True, False, False, False]
    assert [r["revoked"] for r in results] == [False, False, False, True]


def test_check_refuses_items_one_by_one(env):
    links = [encrypt_path("/300/a.mp3", K1), encrypt_path("/400/other.mp3", K1), "garbage", 42, None]
    results = env.post("/v1/links/check", {"links": links}).json()["results"]
    assert results[0]["served"] is True
    assert [r.get("error", {}).get("status") for r in results[1:]] == [400, 400, 400, 400]
    assert results[1] == results[2]  # outside the prefix is told apart from garbage in no way


def test_check_limits(env):
    links = [encrypt_path("/300/a.mp3", K1)] * MAX_CHECK
    assert len(env.post("/v1/links/check", {"links": links}).json()["results"]) == MAX_CHECK
    error(env.post("/v1/links/check", {"links": links + links[:1]}), 400, "links")
    error(env.post("/v1/links/check", {"links": "x"}), 400, "links")
    error(env.post("/v1/links/check", {}), 400, "links")


# --- OpenAPI and health ----------------------------------------------------------------------------


def test_openapi_lists_every_route(env):
    reply = env.client.get("/openapi.json")  # no authentication
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/json")
    document = reply.json()
    assert document["openapi"].startswith("3.")
    routes = {route.path: route.methods for route in env.client.app.app.routes}
    assert set(document["paths"]) == set(routes)
    for path, methods in routes.items():
        assert {method.lower() for method in methods} - {"head"} == set(document["paths"][path])
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for path in ("/v1/links", "/v1/links/batch", "/v1/links/resolve", "/v1/links/check"):
        operation = document["paths"][path]["post"]
        assert {"200", "400", "401"} <= set(operation["responses"])
        assert "application/json" in operation["requestBody"]["content"]
    assert document["paths"]["/openapi.json"]["get"]["security"] == []


def test_healthz_needs_no_token(env):
    assert env.client.get("/healthz").json() == {"status": "ok"}


# --- configuration of clients ------------------------------------------------------------------------


def test_clients_from_the_environment(root):
    settings = load_settings(None, settings_env(root))
    assert [(c.id, c.prefix) for c in settings.clients] == [("crm", "300/"), ("all", ""), ("other", "400/")]
    assert settings.clients[0].token_sha256 == hashlib.sha256(CRM.encode()).digest()
    assert "token_sha256" not in repr(settings.clients[0])


def test_clients_from_the_toml_file_in_either_spelling(root, tmp_path):
    one, two = entry("crm", CRM, "/300/"), entry("all", ALL, "/")
    base = f'key = "{K1.hex()}"\nstorage = "{root.as_uri()}"\n'
    for text in (
        base + f'[api]\nclients = ["{one}", "{two}"]\n',
        base + f'api_clients = ["{one}", "{two}"]\n',
        base + f'api_clients = "{one},{two}"\n',
    ):
        config = tmp_path / "gateway.toml"
        config.write_text(text)
        settings = load_settings(config, {})
        assert [c.id for c in settings.clients] == ["crm", "all"]
        # The environment replaces the file's list, whichever spelling the file uses.
        settings = load_settings(config, {"GATEWAY_API_CLIENTS": entry("ops", OTHER, "/400/")})
        assert [c.id for c in settings.clients] == ["ops"]


def test_both_spellings_in_one_file_are_refused(root, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'key = "{K1.hex()}"\nstorage = "{root.as_uri()}"\napi_clients = "{entry("a", CRM, "/")}"\n'
        f'[api]\nclients = ["{entry("b", ALL, "/")}"]\n'
    )
    with pytest.raises(ConfigError, match="keep one"):
        load_settings(config, {})


def test_no_clients_is_fine_for_the_edge(root):
    env = settings_env(root)
    del env["GATEWAY_API_CLIENTS"]
    assert load_settings(None, env).clients == ()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (f"crm:{'ab' * 31}:/300/", "62 characters, expected 64"),
        (f"crm:{'ab' * 33}:/300/", "66 characters, expected 64"),
        (f"crm:{'zz' * 32}:/300/", "not hexadecimal"),
        (f"crm:{'ab' * 32}:300/", "must start with /"),
        (f"crm:{'ab' * 32}:", "must start with /"),
        (f"crm:{'ab' * 32}:/../x/", "refused"),
        (f"crm:{'ab' * 32}", "is not id:sha256hex:/prefix/"),
        (f":{'ab' * 32}:/300/", "client id"),
        (f"c r m:{'ab' * 32}:/300/", "client id"),
        (f"crm:{'ab' * 32}:/300/,crm:{'cd' * 32}:/400/", "duplicate client id 'crm'"),
    ],
)
def test_bad_client_entries_stop_at_start_with_one_line(root, value, problem):
    with pytest.raises(ConfigError) as caught:
        load_settings(None, settings_env(root, GATEWAY_API_CLIENTS=value))
    message = str(caught.value)
    assert message.startswith("configuration error: GATEWAY_API_CLIENTS: ")
    assert problem in message and "\n" not in message
    assert "ab" * 32 not in message  # the hash is not echoed back


def test_a_bad_entry_in_the_file_names_the_file(root, tmp_path):
    config = tmp_path / "gateway.toml"
    config.write_text(f'key = "{K1.hex()}"\nstorage = "{root.as_uri()}"\n[api]\nclients = ["crm:xyz:/300/"]\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config, {})
    assert str(caught.value).startswith(f"configuration error: [api] clients in {config}: entry 1: ")


@pytest.mark.parametrize(("prefix", "normal"), [("/300/", "300/"), ("/300", "300/"), ("/", ""), ("//a/./b/", "a/b/")])
def test_client_prefixes_are_directories(prefix, normal):
    client = api_client(f"x:{'ab' * 32}:{prefix}")
    assert isinstance(client, ApiClient) and client.prefix == normal
    if normal:
        assert client.allows(normal + "f.mp3") and not client.allows(normal.rstrip("/") + "0/f.mp3")


def test_the_api_needs_clients_and_a_public_url(root):
    env = settings_env(root)
    del env["GATEWAY_API_CLIENTS"]
    with pytest.raises(ConfigError, match="GATEWAY_API_CLIENTS"):
        build_api(load_settings(None, env))
    env = settings_env(root)
    del env["GATEWAY_PUBLIC_URL"]
    with pytest.raises(ConfigError, match="GATEWAY_PUBLIC_URL"):
        build_api(load_settings(None, env))
