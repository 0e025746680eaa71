"""Attacks through the link API: ECB cut-and-paste of issued links, and what resolve/check reveal.

Real `storage-gateway api` and `storage-gateway serve` processes share a key and a storage that
holds `/300/ok.mp3` (the scoped client's own) and `/400/secret.mp3` (someone else's). The client
`crm` may only link to `/300/`.

ECB encrypts each 16-byte block alone: a path chosen so that `/400/secret.mp3` starts on a block
boundary (`/300/` + 11 × `a` = 16 bytes) makes the API encrypt, in the link's second block, a path
outside the client's prefix; dropping the first block of the token gives a working link to it.
The fix in legacy mode: a scoped client only gets links to files that exist. In strict mode
(signed links only) links ahead of recording are still issued, and a cut breaks the signature.

resolve and check must not be an oracle either: a link the client may not see, a link whose
blocks cannot be confined, and garbage all get the same 400, with nothing decrypted in it.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.crafted import block_cuts, blocks, encrypt_path, splice, tokens_in
from support.http import Reply, request
from support.keys import new_key
from support.processes import ApiServer, Gateway, api_client_entry, gateway_environment, running_api, running_gateway

CRM = "crm-bearer-" + "c" * 32  # the client scoped to /300/
OK = "/300/ok.mp3"
SECRET = "/400/secret.mp3"
CHOSEN = "/300/" + "a" * 11 + SECRET  # "/300/aaaaaaaaaaa" is exactly one block
FILES = {OK: os.urandom(3000), SECRET: b"SECRET-OF-400-" + os.urandom(3000)}
NO_SUCH_RECORDING = {"error": {"status": 404, "message": "path: no such recording", "field": "path"}}
NOT_A_LINK = {"error": {"status": 400, "message": "link: not a link this gateway opens", "field": "link"}}


@dataclass
class Site:
    """An edge and a link API over the same key and storage."""

    root: Path
    key: bytes
    edge: Gateway
    api: ApiServer

    def post(self, target: str, body: object) -> Reply:
        return self.api.post(target, body, CRM)

    def fetch(self, target: str) -> Reply:
        return request(self.edge.base_url, target)


@contextlib.contextmanager
def running_site(base: Path, strict: bool) -> Iterator[Site]:
    root = base / "storage"
    for path, data in FILES.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    key = new_key()
    mode = {"GATEWAY_REQUIRE_SIGNED": "true"} if strict else {}
    with running_gateway(root, [key], base / "edge", extra_env=mode) as edge:
        env = {
            "GATEWAY_PUBLIC_URL": edge.base_url,
            "GATEWAY_API_CLIENTS": api_client_entry("crm", CRM, "/300/"),
            **mode,
        }
        with running_api(root, [key], base / "api", extra_env=env) as api:
            yield Site(root, key, edge, api)


@pytest.fixture(scope="module")
def legacy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("api-legacy"), strict=False) as site:
        yield site


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_site(tmp_path_factory.mktemp("api-strict"), strict=True) as site:
        yield site


def derived_targets(text: str) -> set[str]:
    """Request targets made from anything token-like in an API answer: every contiguous run of its
    blocks, alone and with the query string of every link in the answer."""
    queries = {""}
    for found in json_strings(text):
        if "://" in found and urlsplit(found).query:
            queries.add("?" + urlsplit(found).query)
    targets = set()
    for candidate in tokens_in(text):
        try:
            cuts = block_cuts(candidate)
        except (ValueError, AssertionError):
            continue  # not whole blocks of base64: nothing the edge would open
        targets |= {"/" + cut + query for cut in cuts for query in queries}
    return targets


def json_strings(text: str) -> list[str]:
    """Every string value in a JSON document."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(text))
    return found


# -- issuing -----------------------------------------------------------------------------------


def test_the_secret_is_reachable_by_its_own_link(legacy: Site) -> None:
    """Control: the edge serves /400/secret.mp3 to whoever has its real link, so a cut that
    decrypts to it would be served too (what the tests below must never obtain)."""
    reply = legacy.fetch("/" + encrypt_path(SECRET, legacy.key))
    assert reply.status == 200 and reply.body == FILES[SECRET]


def test_scoped_client_gets_no_link_to_a_file_that_does_not_exist(legacy: Site) -> None:
    """The chosen plaintext is a path under /300/ that names no file: in legacy mode a scoped client
    gets a link only to a recording that exists, so the API never encrypts the client's blocks."""
    reply = legacy.post("/v1/links", {"path": CHOSEN})
    assert reply.status == 404, reply.body[:300]
    assert json.loads(reply.body) == NO_SUCH_RECORDING


@pytest.mark.parametrize("route", ["/v1/links", "/v1/links/batch"])
def test_no_cut_of_what_the_api_answers_opens_the_secret(legacy: Site, route: str) -> None:
    """Whatever the API answers to the chosen path, no run of blocks of any token in the answer,
    with or without its query string, makes the edge send the secret."""
    body = {"path": CHOSEN} if route == "/v1/links" else {"links": [{"path": CHOSEN}]}
    reply = legacy.post(route, body)
    assert reply.status < 500, reply.body[:300]
    leaks = []
    for target in sorted(derived_targets(reply.body.decode())):
        fetched = legacy.fetch(target)
        if FILES[SECRET] in fetched.body:
            leaks.append((target, fetched.status))
    assert leaks == [], f"the API answered {reply.status} {reply.body[:200]!r}; these cuts serve the secret: {leaks}"


def test_scoped_client_still_gets_the_plain_legacy_link_of_an_existing_file(legacy: Site) -> None:
    """The fix must not sign or change links to existing recordings: the same link the telephony
    platform (and `storage-gateway link encrypt`) makes."""
    reply = legacy.post("/v1/links", {"path": OK})
    assert reply.status == 200, reply.body[:300]
    env = gateway_environment([legacy.key], legacy.root, extra_env={"GATEWAY_PUBLIC_URL": legacy.edge.base_url})
    made = subprocess.run(
        ["storage-gateway", "link", "encrypt", OK], env=env, capture_output=True, text=True, timeout=30, check=True
    )
    url = json.loads(reply.body)["record_url"]
    assert url == made.stdout.strip() == f"{legacy.edge.base_url}/{encrypt_path(OK, legacy.key)}"
    fetched = legacy.fetch(urlsplit(url).path)
    assert fetched.status == 200 and fetched.body == FILES[OK]


def test_strict_mode_signs_links_ahead_of_recording_and_every_cut_is_403(strict: Site) -> None:
    """With only signed links served, a link to a file not recorded yet is issued (and signed);
    any run of its blocks other than the whole token breaks the signature, with or without the
    query: 403. The whole token names no file yet: 404 with its signature, 403 without."""
    reply = strict.post("/v1/links", {"path": CHOSEN})
    assert reply.status == 200, reply.body[:300]
    issued = json.loads(reply.body)
    assert issued["signed"] is True
    parts = urlsplit(issued["record_url"])
    token, query = parts.path.rpartition("/")[2], "?" + parts.query
    assert len(blocks(token)) == 2
    answers = {}
    for cut in block_cuts(token):
        for suffix in ("", query):
            if (cut, suffix) != (token, query):
                answers["/" + cut + suffix] = strict.fetch("/" + cut + suffix)
    assert {target: reply.status for target, reply in answers.items()} == dict.fromkeys(answers, 403)
    assert all(FILES[SECRET] not in reply.body for reply in answers.values())
    assert strict.fetch(parts.path + query).status == 404


# -- resolve and check -----------------------------------------------------------------------------


def nul_block(key: bytes) -> bytes:
    """The last block of a short path's token: it decrypts to the path's end and NUL padding."""
    return blocks(encrypt_path("/300/a.mp3", key))[-1]


def unconfinable(key: bytes) -> str:
    """A token whose middle block decrypts to NUL-padded bytes, pasted between the blocks of
    another token: its path holds NULs, so it cannot be confined."""
    two = blocks(encrypt_path("/300/bbbbbbbbbbb/300/ok.mp3", key))
    return splice(two[0], nul_block(key), two[1])


def refused_links(site: Site) -> dict[str, str]:
    """Links the /300/ client may learn nothing about, by what they are."""
    return {
        "unconfinable": unconfinable(site.key),
        "unconfinable, signature-looking": unconfinable(site.key) + "?sig=x",
        "unconfinable, as a URL": f"{site.edge.base_url}/{unconfinable(site.key)}?sig=x",
        "outside the prefix": encrypt_path(SECRET, site.key),
        "outside the prefix, signature-looking": encrypt_path(SECRET, site.key) + "?sig=x",
        "outside the prefix, as a URL": f"{site.edge.base_url}/{encrypt_path(SECRET, site.key)}",
        # Any token can be made unconfinable by appending a NUL-padded block: a decryption oracle.
        "outside the prefix, made unconfinable": splice(encrypt_path(SECRET, site.key), nul_block(site.key)) + "?sig=x",
        "garbage": "not-a-token",
        "random blocks": base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode(),
    }


def test_resolve_answers_the_same_400_for_links_it_must_not_explain(legacy: Site) -> None:
    """Byte for byte the same answer for a link outside the prefix, one that cannot be confined and
    garbage: no decrypted path, no existence, no size, no key index."""
    answers = {what: legacy.post("/v1/links/resolve", {"link": link}) for what, link in refused_links(legacy).items()}
    expected = json.dumps(NOT_A_LINK)
    wrong = {
        what: (reply.status, reply.body.decode(errors="replace"))
        for what, reply in answers.items()
        if reply.status != 400 or json.loads(reply.body) != NOT_A_LINK
    }
    assert wrong == {}, f"answers other than 400 {expected}"
    assert len({reply.body for reply in answers.values()}) == 1, "the same JSON, byte for byte"


def test_check_reports_the_same_error_for_links_it_must_not_explain(legacy: Site) -> None:
    links = refused_links(legacy)
    good = f"{legacy.edge.base_url}/{encrypt_path(OK, legacy.key)}"
    reply = legacy.post("/v1/links/check", {"links": [*links.values(), good]})
    assert reply.status == 200, reply.body[:300]
    results = json.loads(reply.body)["results"]
    assert results[-1]["path"] == OK and results[-1]["exists"] is True  # control: check does explain a good link
    reported = dict(zip(links, results[:-1], strict=True))
    assert {what: item for what, item in reported.items() if item != NOT_A_LINK} == {}
