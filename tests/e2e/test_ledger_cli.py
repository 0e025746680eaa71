"""The ledger's command line as processes: `webhook verify` checks one delivery, `serve` refuses a ledger without a secret.

(The parts in process: unit/test_ledger.py; a real gateway and a real
receiver: test_ledger_e2e.py.)
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from gateway.ledger.signing import signature_header

ROOT = Path(__file__).resolve().parents[2]
SECRET = b"whsec-test-0123456789abcdef"


def _signed(tmp_path: Path, body: bytes, at: int | None = None) -> tuple[Path, str]:
    path = tmp_path / "delivery.json"
    path.write_bytes(body)
    return path, signature_header(SECRET, body, int(time.time()) if at is None else at)


def _verify(secret: str, signature: str, path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "webhook", "verify", "--secret", secret, "--signature", signature]
    return subprocess.run([*command, *options, str(path)], capture_output=True, text=True, check=False)


def test_the_cli_verifies_a_delivery_and_says_why_not(tmp_path: Path) -> None:
    body = b'{"events":[]}'
    path, header = _signed(tmp_path, body)
    ok = _verify(SECRET.decode(), header, path)
    assert ok.returncode == 0 and ok.stdout.startswith("valid"), ok.stderr
    path.write_bytes(body + b" ")
    changed = _verify(SECRET.decode(), header, path)
    assert changed.returncode == 1 and len(changed.stderr.strip().splitlines()) == 1
    assert "does not match" in changed.stderr
    old_path, old_header = _signed(tmp_path, body, int(time.time()) - 1000)
    old = _verify(SECRET.decode(), old_header, old_path, "--tolerance", "300")
    assert old.returncode == 1 and "outside" in old.stderr
    other = _verify("x" * 20, old_header, old_path, "--tolerance", "2000")
    assert other.returncode == 1 and "another secret" in other.stderr


def test_serve_with_webhook_urls_and_no_secret_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_KEY": "00" * 32, "GATEWAY_STORAGE": tmp_path.as_uri(),
           "GATEWAY_WEBHOOK_URLS": "https://platform.example/hook"}  # fmt: skip
    command = [sys.executable, "-m", "gateway.cli", "serve", "--port", "1"]
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    expected = (
        "storage-gateway: configuration error: GATEWAY_WEBHOOK_SECRET: required when webhook URLs are set "
        "(deliveries are signed with it)"
    )
    assert result.stderr.strip().splitlines() == [expected]
