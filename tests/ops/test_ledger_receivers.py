"""The README's receivers: its Python and Node snippets accept a delivery and refuse any change, as documented.

They are run for real, the Node one with the system's `node` or the one
Playwright (installed by the suite) bundles.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from gateway.ledger.signing import signature_header

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
SECRET = b"whsec-test-0123456789abcdef"


def _signed(tmp_path: Path, body: bytes, at: int | None = None) -> tuple[Path, str]:
    path = tmp_path / "delivery.json"
    path.write_bytes(body)
    return path, signature_header(SECRET, body, int(time.time()) if at is None else at)


def _snippet(marker: str, language: str) -> str:
    match = re.search(re.escape(marker) + r"\s*```" + language + r"\n(.*?)```", README, re.DOTALL)
    assert match, f"README has no {language} block after {marker}"
    return match.group(1)


def test_the_readme_python_receiver_snippet_accepts_and_rejects(tmp_path: Path) -> None:
    namespace: dict[str, object] = {}
    exec(_snippet("<!-- readme-webhook-python -->", "python"), namespace)  # noqa: S102
    check = namespace["verify"]
    body = b'{"events":[{"id":"01A"}]}'
    _, header = _signed(tmp_path, body)
    assert check(SECRET, header, body) is True  # type: ignore[operator]
    assert check(SECRET, header, body + b" ") is False  # type: ignore[operator]
    assert check(b"another-secret-0123456789", header, body) is False  # type: ignore[operator]
    _, old = _signed(tmp_path, body, int(time.time()) - 301)
    assert check(SECRET, old, body) is False  # type: ignore[operator]


def _node() -> str:
    found = shutil.which("node")
    if found:
        return found
    from playwright._impl._driver import compute_driver_executable  # the suite installs Playwright, which has one

    return str(compute_driver_executable()[0])


def test_the_readme_node_receiver_snippet_accepts_and_rejects(tmp_path: Path) -> None:
    script = tmp_path / "verify.js"
    script.write_text(
        _snippet("<!-- readme-webhook-node -->", "js")
        + "\nconst [secret, header, file] = process.argv.slice(2);\n"
        + "process.stdout.write(String(verify(secret, header, require('fs').readFileSync(file))));\n"
    )
    body = b'{"events":[{"id":"01A","path":"/300/\xd0\xb7.wav"}]}'
    path, header = _signed(tmp_path, body)

    def run(secret: bytes, signature: str, data: bytes) -> str:
        path.write_bytes(data)
        result = subprocess.run([_node(), str(script), secret.decode(), signature, str(path)],
                                capture_output=True, text=True, check=True)  # fmt: skip
        return result.stdout

    assert run(SECRET, header, body) == "true"
    assert run(SECRET, header, body[:-1] + b" }") == "false"
    assert run(b"another-secret-0123456789", header, body) == "false"
    old = signature_header(SECRET, body, int(time.time()) - 301)
    assert run(SECRET, old, body) == "false"
