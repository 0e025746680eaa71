"""What a file in the storage, or a hostile query, can make the edge do: show inline only what cannot carry script.

A storage tree can hold anything someone managed to write there. `?inline=1`
shows only sound, pictures and video in the browser; every other file
downloads, and every file answer is sandboxed by its policy, should a
browser render it anyway. Query strings are bounded before anything reads
them.
"""

from __future__ import annotations

import pytest
from support.http import request
from support.processes import Gateway
from support.storage import Storage

SANDBOX = "sandbox; default-src 'none'"
MEDIA_ONLY = "default-src 'none'; media-src 'self'; img-src 'self'"  # a sandbox would stop the media document
WEB = {
    "/web/page.html": b"<html><script>document.title='ran'</script></html>",
    "/web/pic.svg": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "/web/note.txt": b"hello",
    "/web/doc.pdf": b"%PDF-1.4\n",
    "/web/call.mp3": b"ID3" + bytes(100),
    "/web/pic.png": b"\x89PNG\r\n\x1a\n" + bytes(50),
    "/web/clip.mp4": bytes(100),
}


@pytest.fixture(scope="module")
def web(storage: Storage) -> Storage:
    for path, data in WEB.items():
        storage.add(path, data)
    return storage


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("/web/page.html", False),
        ("/web/pic.svg", False),
        ("/web/note.txt", False),
        ("/web/doc.pdf", False),
        ("/web/call.mp3", True),
        ("/web/pic.png", True),
        ("/web/clip.mp4", True),
    ],
)
def test_inline_shows_only_media_and_every_answer_is_sandboxed(gateway: Gateway, web: Storage, path: str, shown: bool):
    for query, headers in (("?inline=1", {}), ("?inline=1", {"Range": "bytes=0-3"}), ("", {})):
        reply = request(gateway.base_url, gateway.target(path) + query, headers=headers)
        assert reply.status in (200, 206)
        disposition = reply.header("Content-Disposition") or ""
        assert disposition.startswith("inline" if shown and query else "attachment"), (path, query, disposition)
        assert reply.header("Content-Security-Policy") == (MEDIA_ONLY if shown else SANDBOX)
        assert reply.header("X-Content-Type-Options") == "nosniff"


@pytest.mark.parametrize("length", [8193, 30000, 65536])
def test_a_query_string_over_8_kib_is_414_before_anything_reads_it(gateway: Gateway, web: Storage, length: int):
    target = gateway.target("/web/call.mp3") + "?sig=x&filename=" + "a" * (length - len("sig=x&filename="))
    reply = request(gateway.base_url, target)
    # Past 16 KiB the target is refused while it is read, before the app sees it (an empty 414).
    assert (reply.status, reply.body) == (414, b"URI Too Long\n" if length <= 16 * 1024 else b"")
    at_limit = gateway.target("/web/call.mp3") + "?utm=" + "a" * (8192 - len("utm="))
    assert request(gateway.base_url, at_limit).status == 200
