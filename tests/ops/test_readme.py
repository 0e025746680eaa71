"""The README's commands are part of the product: run them as written."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from gateway.links.tokens import decrypt_token, encrypt_path

README = Path(__file__).resolve().parents[2] / "README.md"


def _block_after(marker: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(re.escape(marker) + r"\s*```sh\n(.*?)```", text, re.DOTALL)
    assert match, f"README has no sh block after {marker}"
    return match.group(1)


def test_openssl_snippet_makes_the_token_the_gateway_reads() -> None:
    script = _block_after("<!-- readme-openssl-encrypt -->")
    assert "key=$(storage-gateway keygen)" in script  # the snippet as a reader sees it
    key = bytes(range(32))
    for path in ("/300/2017-02-17-11-05-04_in_300_uhl4.mp3", "/300/звонок клиента.mp3", "/pad16/abcde.mp3"):
        runnable = script.replace("path='/300/2017-02-17-11-05-04_in_300_uhl4.mp3'", f"path='{path}'")
        runnable = re.sub(r"key=\$\(storage-gateway keygen\).*", f"key={key.hex()}", runnable)
        result = subprocess.run(["bash", "-c", runnable], capture_output=True, text=True, check=True)
        token = result.stdout.strip()
        assert token == encrypt_path(path, key)
        assert decrypt_token(token, [key]) == [(0, path)]


def test_first_command_serves_the_printed_sample_link(tmp_path: Path) -> None:
    """`storage-gateway serve` with nothing configured: the printed links work."""
    import io
    import os
    import urllib.request
    import wave

    from support.processes import free_port, stop_process, wait_ready

    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GATEWAY_", "PROMETHEUS_"))}
    log = tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen(
            ["storage-gateway", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", "/healthz", process, log, "storage-gateway serve (dev default)")
        links = re.findall(r"(?:download|play):\s+(\S+)", log.read_text(encoding="utf-8"))
        assert len(links) == 4  # two samples, each to download and to play
        for link in links:
            with urllib.request.urlopen(link, timeout=10) as response:
                body = response.read()
                assert response.headers["Content-Type"] == "audio/wav"
                inline = link.endswith("?inline=1")
                assert response.headers["Content-Disposition"].startswith("inline" if inline else "attachment")
            with wave.open(io.BytesIO(body)) as recording:
                assert recording.getnframes() / recording.getframerate() >= 5
        assert (tmp_path / ".gateway-dev" / "dev.key").stat().st_mode & 0o777 == 0o600
    finally:
        stop_process(process)
