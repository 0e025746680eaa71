"""Attacks on revocation: other spellings of a revoked token, and revocation lines that revoke
nothing (or something else) without a word.

Base64 decoders ignore the unused low bits of a token's last character: a 16-byte token (22
characters) has 16 spellings, a 32-byte one (43 characters) 4, all opening the same blocks. Only
the canonical spelling is a link; the others must be the plain 404 (so no respelling of a revoked
link serves it), while `=` padding stays accepted.

The revocation file's grammar: `#` as the first non-blank character starts a comment; a line
starting with `/` is a path (`?` is part of the name), ending in `/` a prefix; a JSON string
literal names a path exactly; anything else is a link. A plain path with " #" in it or trailing
whitespace is ambiguous: both readings are revoked, with a warning naming the line and the gauge
`gateway_revocation_entries{kind="ambiguous"}`; an unusable line is logged and counted as
`kind="ignored"`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from support.crafted import answer, padded, spellings
from support.http import Reply, request
from support.keys import new_key
from support.ops import metric, scrape
from support.polling import poll
from support.processes import Gateway, free_port, running_gateway

# -- other spellings of a token ------------------------------------------------------------------

REVOKED = ["/pad16/abcde.mp3", "/pad32/abcdefghijklmnopqrstu.mp3"]
KEPT = ["/pad16/fghij.mp3", "/pad32/ABCDEFGHIJKLMNOPQRSTU.mp3"]
SPELLINGS = {16: 16, 32: 4}  # token bytes -> spellings that decode to them


@dataclass
class Aliases:
    gateway: Gateway
    contents: dict[str, bytes]

    def get(self, token: str) -> Reply:
        return request(self.gateway.base_url, "/" + token)


@pytest.fixture(scope="module")
def aliases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Aliases]:
    base = tmp_path_factory.mktemp("aliases")
    root = base / "storage"
    contents = {}
    for path in REVOKED + KEPT:
        assert len(path.encode()) in SPELLINGS
        contents[path] = os.urandom(1000)
        (root / path.lstrip("/")).parent.mkdir(parents=True, exist_ok=True)
        (root / path.lstrip("/")).write_bytes(contents[path])
    key = new_key()
    revocations = base / "revoked.txt"
    revocations.write_text("")
    with running_gateway(
        root, [key], base / "gateway", extra_env={"GATEWAY_REVOCATION_FILE": str(revocations)}
    ) as gateway:
        # Revoked after the start, as ops do, so the reload is what is tested.
        replacement = revocations.with_suffix(".new")
        replacement.write_text("".join(gateway.token(path) + "\n" for path in REVOKED))
        os.replace(replacement, revocations)
        found = Aliases(gateway, contents)
        first = gateway.token(REVOKED[0])
        assert poll(lambda: found.get(first).status, lambda status: status == 410, timeout=15.0) == 410
        yield found


def plain_404(aliases: Aliases) -> tuple[int, bytes, tuple[tuple[str, str], ...]]:
    """The edge's answer to a token that is no link at all."""
    reply = aliases.get("not-a-token-at-all-xxxxxxxx")
    assert reply.status == 404
    return answer(reply)


@pytest.mark.parametrize("path", REVOKED)
def test_revoked_link_is_410_and_no_other_spelling_serves_it(aliases: Aliases, path: str) -> None:
    token = aliases.gateway.token(path)
    spelled = spellings(token)
    assert len(spelled) == SPELLINGS[len(path.encode())]
    assert aliases.get(token).status == 410
    assert aliases.get(padded(token)).status == 410  # the padded form is the same link
    answers = {spelling: aliases.get(spelling) for spelling in spelled[1:]}
    served = {spelling: reply.status for spelling, reply in answers.items() if reply.status == 200}
    assert served == {}, "respellings of a revoked link serve the file"
    expected = plain_404(aliases)
    assert {spelling: answer(reply)[0] for spelling, reply in answers.items() if answer(reply) != expected} == {}


@pytest.mark.parametrize("path", KEPT)
def test_only_the_canonical_spelling_of_a_link_is_served(aliases: Aliases, path: str) -> None:
    token = aliases.gateway.token(path)
    for canonical in (token, padded(token)):
        reply = aliases.get(canonical)
        assert reply.status == 200 and reply.body == aliases.contents[path], canonical
    expected = plain_404(aliases)
    others = spellings(token)[1:]
    wrong = {spelling: answer(aliases.get(spelling))[0] for spelling in others + [padded(s) for s in others]}
    assert {spelling: status for spelling, status in wrong.items() if status != 404} == {}
    assert all(answer(aliases.get(spelling)) == expected for spelling in others)


# -- revocation lines that say something else than they seem -------------------------------------

ODD = {
    "/odd/a?b.mp3": os.urandom(500),
    "/odd/a #b.mp3": os.urandom(500),
    "/odd/a": os.urandom(500),  # the other reading of "/odd/a #b.mp3"
    "/odd/ends-with-space.mp3 ": os.urandom(500),
    "/odd/plain.mp3": os.urandom(500),
}
LINES = [
    "# revoked recordings",  # 1
    "/odd/a?b.mp3",  # 2: a path: `?` is part of the name
    "/odd/a #b.mp3",  # 3: ambiguous: the whole name, or "/odd/a" and a comment
    '"/odd/ends-with-space.mp3 "',  # 4: a JSON string literal: exactly that name
    "not a token at all",  # 5: neither a path nor a link: ignored, and said so
    "   # /odd/plain.mp3 (an indented comment revokes nothing)",  # 6
]
AMBIGUOUS_LINE, IGNORED_LINE = 3, 5


@dataclass
class Odd:
    gateway: Gateway
    metrics_url: str


@pytest.fixture(scope="module")
def odd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Odd]:
    base = tmp_path_factory.mktemp("revocation-lines")
    root = base / "storage"
    (root / "odd").mkdir(parents=True)
    for path, data in ODD.items():
        (root / path.lstrip("/")).write_bytes(data)
    revocations = base / "revoked.txt"
    revocations.write_text("\n".join(LINES) + "\n")
    port = free_port()
    with running_gateway(
        root,
        [new_key()],
        base / "gateway",
        extra_env={"GATEWAY_REVOCATION_FILE": str(revocations)},
        extra_args=["--metrics-port", str(port)],
        split_stderr=True,
    ) as gateway:
        yield Odd(gateway, f"http://127.0.0.1:{port}")


def status(odd: Odd, path: str) -> int:
    return request(odd.gateway.base_url, odd.gateway.target(path)).status


@pytest.mark.parametrize(
    "path",
    ["/odd/a?b.mp3", "/odd/a #b.mp3", "/odd/a", "/odd/ends-with-space.mp3 "],
    ids=["question-mark", "space-hash", "space-hash-cut", "json-literal-trailing-space"],
)
def test_a_listed_path_is_revoked_whatever_its_characters(odd: Odd, path: str) -> None:
    assert status(odd, path) == 410


def test_a_file_no_line_names_is_still_served(odd: Odd) -> None:
    reply = request(odd.gateway.base_url, odd.gateway.target("/odd/plain.mp3"))
    assert reply.status == 200 and reply.body == ODD["/odd/plain.mp3"]


def mentions_line(text: str, number: int) -> bool:
    """Whether a log line names line `number` of the revocation file (`line 3`, `line #3`, `revoked.txt:3:`)."""
    pattern = re.compile(rf"(\bline\s*#?:?\s*{number}\b|revoked\.txt:{number}\b)", re.IGNORECASE)
    return any(pattern.search(line) for line in text.splitlines())


def test_an_ambiguous_line_is_warned_about_and_counted(odd: Odd) -> None:
    assert odd.gateway.stderr_log is not None
    stderr = odd.gateway.stderr_log.read_text(errors="replace")
    assert mentions_line(stderr, AMBIGUOUS_LINE), f"no warning naming line {AMBIGUOUS_LINE}:\n{stderr[-2000:]}"
    assert metric(scrape(odd.metrics_url), "gateway_revocation_entries", kind="ambiguous") == 1


def test_an_unusable_line_is_logged_and_counted(odd: Odd) -> None:
    assert odd.gateway.stderr_log is not None
    stderr = odd.gateway.stderr_log.read_text(errors="replace")
    assert mentions_line(stderr, IGNORED_LINE), f"nothing logged about line {IGNORED_LINE}:\n{stderr[-2000:]}"
    assert metric(scrape(odd.metrics_url), "gateway_revocation_entries", kind="ignored") == 1
