"""The link API's commands as processes: `api` refusing to start, `api-client add`, `link decrypt`.

(The API itself, in process: unit/test_api.py; over real processes next to
a real edge: test_api_e2e.py.)
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from support.linkapi import (
    FILES,
    K1,
    K2,
    PUBLIC,
    plant,
    settings_env,
)

from gateway.api.app import build_api
from gateway.config import load_settings
from gateway.links.clients import parse_client as api_client
from gateway.links.signing import LinkSigner
from gateway.links.tokens import encrypt_path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return plant(tmp_path)


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:8]


def run_cli(args: list[str], cwd: Path, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    env.update(variables)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("drop", "setting"), [("GATEWAY_API_CLIENTS", "GATEWAY_API_CLIENTS"), ("GATEWAY_PUBLIC_URL", "GATEWAY_PUBLIC_URL")]
)
def test_api_command_refuses_to_start_without_its_settings(root, tmp_path, drop, setting):
    env = settings_env(root)
    del env[drop]
    done = run_cli(["api", "--port", "1"], tmp_path, **env)
    assert done.returncode == 2
    assert done.stderr.startswith(f"storage-gateway: configuration error: {setting}: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def test_api_command_refuses_a_bad_client_entry(root, tmp_path):
    done = run_cli(["api"], tmp_path, **settings_env(root, GATEWAY_API_CLIENTS="crm:abc:/300/"))
    assert done.returncode == 2
    assert done.stderr.startswith("storage-gateway: configuration error: GATEWAY_API_CLIENTS: entry 1: ")


def test_api_client_add_prints_a_token_once_and_its_entry(tmp_path):
    first = run_cli(["api-client", "add", "crm", "--prefix", "/300/"], tmp_path)
    second = run_cli(["api-client", "add", "crm", "--prefix", "/300/"], tmp_path)
    assert first.returncode == 0, first.stderr
    lines = dict(line.split(": ", 1) for line in first.stdout.splitlines())
    token, client = lines["token"], lines["client"]
    assert len(token) == 43 and set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert client == f"crm:{hashlib.sha256(token.encode()).hexdigest()}:/300/"
    parsed = api_client(client)
    assert parsed.token_sha256 == hashlib.sha256(token.encode()).digest() and parsed.prefix == "300/"
    assert token not in first.stderr and "GATEWAY_API_CLIENTS" in first.stderr
    assert second.stdout.splitlines()[0] != first.stdout.splitlines()[0]
    assert not (tmp_path / ".gateway-dev").exists()


def test_api_client_add_token_works_against_the_api(root, tmp_path):
    done = run_cli(["api-client", "add", "crm", "--prefix", "/300/"], tmp_path)
    lines = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    settings = load_settings(None, settings_env(root, GATEWAY_API_CLIENTS=lines["client"]))
    with TestClient(build_api(settings)) as client:
        reply = client.post(
            "/v1/links", json={"path": "/300/a.mp3"}, headers={"Authorization": f"Bearer {lines['token']}"}
        )
        assert reply.status_code == 200


@pytest.mark.parametrize(("client_id", "prefix"), [("crm", "300/"), ("bad:id", "/300/"), ("crm", "/../")])
def test_api_client_add_refuses_bad_input(tmp_path, client_id, prefix):
    done = run_cli(["api-client", "add", client_id, "--prefix", prefix], tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("storage-gateway: ")


def test_link_decrypt_shows_what_resolve_shows(root, tmp_path):
    revoked = root.parent / "revoked.txt"
    revoked.write_text("")
    variables = settings_env(root, GATEWAY_KEY=f"{K2.hex()},{K1.hex()}", GATEWAY_REVOCATION_FILE=str(revoked))
    query_string = LinkSigner([K1]).sign(encrypt_path("/300/call.wav", K1), {"exp": "2000000000", "inline": "1"})
    url = f"{PUBLIC}/{encrypt_path('/300/call.wav', K1)}?{query_string}"
    done = run_cli(["link", "decrypt", url], tmp_path, **variables)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "/300/call.wav"
    fields = dict(line.split(": ", 1) for line in lines[1:])
    assert fields == {
        "key": f"2 (fingerprint {fingerprint(K1)})",
        "signed": "true",
        "signature_valid": "true",
        "expires_at": "2033-05-18T03:33:20Z",
        "expired": "false",
        "revoked": "false",
        "exists": "true",
        "size": str(len(FILES["/300/call.wav"])),
        "content_type": "audio/wav",
        "last_modified": "2017-02-17T11:05:04Z",
        "storage": "disk",
        "served": "true",
        "status": "200",
        "reason": "null",
        "detail": "null",
    }
    revoked.write_text("/300/call.wav\n")
    fields = dict(
        line.split(": ", 1) for line in run_cli(["link", "decrypt", url], tmp_path, **variables).stdout.splitlines()[1:]
    )
    assert (fields["revoked"], fields["served"], fields["status"]) == ("true", "false", "410")


def test_link_decrypt_of_a_missing_file_and_a_refused_path(root, tmp_path):
    done = run_cli(["link", "decrypt", encrypt_path("/300/gone.mp3", K1)], tmp_path, **settings_env(root))
    assert done.stdout.splitlines()[0] == "/300/gone.mp3"
    assert "exists: false" in done.stdout and "reason: not_found" in done.stdout
    done = run_cli(["link", "decrypt", encrypt_path("/../etc/passwd", K1)], tmp_path, **settings_env(root))
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == "/../etc/passwd" and "reason: path" in done.stdout
