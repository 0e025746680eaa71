"""The command line end to end: `storage-gateway` and `python -m gateway` run as processes.

Bad configuration exits 2 with one line; keygen, `link encrypt` and
`link decrypt` print what the library computes. (The settings themselves:
unit/test_config.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.settings import K1, K1_HEX, K2, K2_HEX, env, write_toml

from gateway.links.tokens import encrypt_path, parse_key


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # Nothing here may create .gateway-dev in the project by accident.
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def store(tmp_path) -> Path:
    root = tmp_path / "recordings"
    root.mkdir()
    return root


ENTRY_POINTS = {"console-script": ["storage-gateway"], "python-m": [sys.executable, "-m", "gateway"]}


def run_cli(args: list[str], cwd: Path, entry: str = "console-script", **variables: str):
    environ = {name: value for name, value in os.environ.items() if not name.startswith("GATEWAY_")}
    environ.update(PYTHONUTF8="1", **variables)
    return subprocess.run(
        [*ENTRY_POINTS[entry], *args],
        env=environ,
        cwd=cwd,
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,  # the exit status is what the tests look at
    )


SERVE = ["serve", "--host", "127.0.0.1", "--port", "0"]


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize(
    ("case", "setting"),
    [
        ("wrong-key-length", "GATEWAY_KEY"),
        ("non-hex-key", "GATEWAY_KEY"),
        ("missing-storage-root", "GATEWAY_STORAGE"),
        ("unknown-scheme", "GATEWAY_STORAGE"),
        ("bad-number", "GATEWAY_MAX_RANGES"),
    ],
)
def test_serve_with_bad_configuration_exits_2_with_one_line(tmp_path, store, entry, case, setting):
    variables = {
        "wrong-key-length": {"GATEWAY_KEY": K1_HEX[:40], "GATEWAY_STORAGE": store.as_uri()},
        "non-hex-key": {"GATEWAY_KEY": "x" * 64, "GATEWAY_STORAGE": store.as_uri()},
        "missing-storage-root": {"GATEWAY_KEY": K1_HEX, "GATEWAY_STORAGE": (tmp_path / "absent").as_uri()},
        "unknown-scheme": {"GATEWAY_KEY": K1_HEX, "GATEWAY_STORAGE": "ftp://archive/recordings"},
        "bad-number": {"GATEWAY_KEY": K1_HEX, "GATEWAY_STORAGE": store.as_uri(), "GATEWAY_MAX_RANGES": "0"},
    }[case]
    done = run_cli(SERVE, tmp_path, entry, **variables)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert setting in lines[0]
    assert done.stdout == ""


def test_serve_with_unknown_toml_key_exits_2(tmp_path, store):
    config = write_toml(tmp_path, f'key = "{K1_HEX}"\nstorage = "{store.as_uri()}"\n[edge]\nworkers = 4\n')
    done = run_cli([*SERVE, "--config", str(config)], tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "edge.workers" in done.stderr


def test_serve_with_missing_config_file_exits_2(tmp_path):
    done = run_cli([*SERVE, "--config", str(tmp_path / "absent.toml")], tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "--config" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_keygen_prints_an_accepted_hex_key(tmp_path, entry):
    first = run_cli(["keygen"], tmp_path, entry)
    second = run_cli(["keygen"], tmp_path, entry)
    assert first.returncode == 0 and second.returncode == 0
    key = first.stdout.strip()
    assert len(key) == 64 and key == key.lower()
    assert len(parse_key(key)) == 32
    assert key != second.stdout.strip()
    assert not (tmp_path / ".gateway-dev").exists()


def test_keygen_prints_an_accepted_base64_key(tmp_path):
    done = run_cli(["keygen", "--base64"], tmp_path)
    assert done.returncode == 0
    key = done.stdout.strip()
    assert key.startswith("base64:")
    assert len(parse_key(key)) == 32


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
@pytest.mark.parametrize("path", ["/300/2017-02-17-11-05-04_in_300_uhl4.mp3", "/300/звонок клиента.mp3"])
def test_link_encrypt_then_decrypt(tmp_path, store, entry, path):
    variables = env(store)
    encrypted = run_cli(["link", "encrypt", path], tmp_path, entry, **variables)
    assert encrypted.returncode == 0, encrypted.stderr
    token = encrypted.stdout.strip()
    assert token == encrypt_path(path, K1)
    decrypted = run_cli(["link", "decrypt", token], tmp_path, entry, **variables)
    assert decrypted.returncode == 0, decrypted.stderr
    assert decrypted.stdout.splitlines()[0] == path  # the first line is the bare path; details follow


def test_link_decrypt_accepts_a_whole_url_with_query_string(tmp_path, store):
    path = "/300/2017-02-17-11-05-04_in_300_uhl4.mp3"
    url = f"https://storage.example.com/{encrypt_path(path, K1)}?inline=1&expires=1700000000&sig=abc"
    done = run_cli(["link", "decrypt", url], tmp_path, **env(store))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == path


def test_link_encrypt_prints_the_full_url_with_public_url(tmp_path, store):
    path = "/300/x.mp3"
    variables = env(store, GATEWAY_PUBLIC_URL="https://storage.example.com/")
    encrypted = run_cli(["link", "encrypt", path], tmp_path, **variables)
    assert encrypted.returncode == 0, encrypted.stderr
    assert encrypted.stdout.strip() == f"https://storage.example.com/{encrypt_path(path, K1)}"
    decrypted = run_cli(["link", "decrypt", encrypted.stdout.strip()], tmp_path, **variables)
    assert decrypted.stdout.splitlines()[0] == path


def test_link_reads_config_file(tmp_path, store):
    config = write_toml(tmp_path, f'key = "{K2_HEX}"\nstorage = "{store.as_uri()}"\n')
    done = run_cli(["link", "encrypt", "/300/x.mp3", "--config", str(config)], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == encrypt_path("/300/x.mp3", K2)


def test_link_decrypt_with_second_key(tmp_path, store):
    token = encrypt_path("/300/x.mp3", K2)
    done = run_cli(["link", "decrypt", token], tmp_path, **env(store, GATEWAY_KEY=f"{K1_HEX},{K2_HEX}"))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "/300/x.mp3"
    assert lines[1].startswith("key: 2 (fingerprint ")


@pytest.mark.parametrize(
    "garbage",
    [
        "garbage",
        "!!!!!!!!!!!!!!!!!!!!!!!!",
        "A" * 23,
        "https://storage.example.com/short",
        encrypt_path("/300/x.mp3", K2),
    ],
)
def test_link_decrypt_of_garbage_fails_with_a_message(tmp_path, store, garbage):
    done = run_cli(["link", "decrypt", garbage], tmp_path, **env(store))
    assert done.returncode != 0
    assert done.stdout == ""
    assert "not a link token" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("path", ["/../etc/passwd", "/300/../../x.mp3", "/", "/300/a\nb.mp3"])
def test_link_encrypt_refuses_paths_outside_the_storage(tmp_path, store, path):
    done = run_cli(["link", "encrypt", path], tmp_path, **env(store))
    assert done.returncode != 0
    assert done.stdout == ""
    assert "cannot make a link" in done.stderr
    assert "Traceback" not in done.stderr
