"""The revocation list: parsing, matching tokens/URLs/files/prefixes, and re-reading the file on change."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import pytest

from gateway.links.revocation import Revocations
from gateway.links.tokens import encrypt_path

KEY = secrets.token_bytes(32)
T1 = encrypt_path("/300/a.mp3", KEY)
T16 = encrypt_path("/pad16/abcde.mp3", KEY)  # 16 bytes: the padded form ends with ==


def parsed(text: str) -> Revocations:
    revocations = Revocations()
    revocations.parse(text)
    return revocations


def test_nothing_is_revoked_by_default():
    revocations = Revocations()
    assert not revocations.revoked(T1, "300/a.mp3")
    assert not parsed("").revoked(T1, "300/a.mp3")
    assert not parsed("# only a comment\n\n   \n").revoked(T1, "300/a.mp3")


def test_a_bare_token_revokes_that_link_only():
    revocations = parsed(f"{T1}\n")
    assert revocations.revoked(T1, "300/a.mp3")
    assert not revocations.revoked(encrypt_path("/300/b.mp3", KEY), "300/b.mp3")
    # The same file reached through another token (another key) is not covered by a token entry.
    assert not revocations.revoked(encrypt_path("/300/a.mp3", secrets.token_bytes(32)), "300/a.mp3")


def test_token_padding_is_ignored_both_ways():
    padded = T16 + "=" * (-len(T16) % 4)
    assert padded.endswith("==")
    assert parsed(padded).revoked(T16, "pad16/abcde.mp3")
    assert parsed(T16).revoked(padded, "pad16/abcde.mp3")


def test_a_whole_url_revokes_its_token_whatever_the_query():
    revocations = parsed(f"https://storage.example.com/{T1}?exp=1&inline=1&sig=abc\n")
    assert revocations.tokens == {T1}
    assert revocations.revoked(T1, "300/a.mp3")
    assert parsed(f"http://127.0.0.1:8080/{T1}/\n").revoked(T1, "300/a.mp3")


def test_a_path_revokes_every_link_to_the_file():
    revocations = parsed("/300/a.mp3\n")
    assert revocations.files == {"300/a.mp3"}
    assert revocations.revoked(T1, "300/a.mp3")
    assert revocations.revoked("any-other-token-0123456789", "300/a.mp3")
    assert not revocations.revoked(T1, "300/a.mp3.bak")
    assert not revocations.revoked(T1, "300/b.mp3")


def test_paths_are_normalised_like_decrypted_paths():
    revocations = parsed("//300/./x/../a.mp3\n")
    assert revocations.files == {"300/a.mp3"}
    assert revocations.revoked(T1, "300/a.mp3")


def test_a_path_ending_in_slash_revokes_everything_below():
    revocations = parsed("/300/\n")
    assert revocations.prefixes == ("300/",)
    assert revocations.revoked(T1, "300/a.mp3")
    assert revocations.revoked(T1, "300/deep/er/b.wav")
    assert not revocations.revoked(T1, "3000/a.mp3")  # a sibling whose name starts the same
    assert not revocations.revoked(T1, "300")
    assert not revocations.revoked(T1, "400/a.mp3")


def test_comments_blank_lines_and_whitespace():
    revocations = parsed(
        f"""# revoked on 2024-05-01 by ops
   {T1}   # leaked in a ticket

/400/b.mp3 # customer request
\t/500/\t
"""
    )
    assert revocations.tokens == {T1}
    # A comment after a path could be part of the name: both readings are revoked, and it is reported.
    assert revocations.files == {"400/b.mp3", "400/b.mp3 # customer request"}
    assert revocations.prefixes == ("500/",)
    assert revocations.reported["ambiguous"] == 1 and revocations.reported["ignored"] == 0


def test_entries_outside_the_root_are_ignored_not_fatal():
    revocations = parsed("/../etc/passwd\n/300/../../x/\n/300/a.mp3\n")
    assert revocations.files == {"300/a.mp3"}
    assert revocations.prefixes == ()


def test_parse_replaces_the_previous_list():
    revocations = parsed(f"{T1}\n/300/\n/400/b.mp3\n")
    revocations.parse("/600/c.mp3\n")
    assert revocations.tokens == frozenset() and revocations.prefixes == ()
    assert revocations.files == {"600/c.mp3"}
    assert not revocations.revoked(T1, "300/a.mp3")


def write(path: Path, text: str) -> None:
    """Replace the file atomically, as an editor or a ConfigMap update does."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def test_load_reads_the_file_and_rereads_it_when_it_changes(tmp_path):
    path = tmp_path / "revoked.txt"
    path.write_text("/300/a.mp3\n")
    revocations = Revocations(path)

    asyncio.run(revocations.load())
    assert revocations.revoked(T1, "300/a.mp3")

    write(path, "/400/\n")
    asyncio.run(revocations.load())
    assert not revocations.revoked(T1, "300/a.mp3")
    assert revocations.revoked(T1, "400/b.mp3")

    # In place, another size: noticed as well.
    path.write_text(f"{T1}\n/400/\n")
    asyncio.run(revocations.load())
    assert revocations.tokens == {T1} and revocations.prefixes == ("400/",)


def test_load_skips_an_unchanged_file(tmp_path, monkeypatch):
    path = tmp_path / "revoked.txt"
    path.write_text("/300/a.mp3\n")
    revocations = Revocations(path)
    asyncio.run(revocations.load())
    reads = []
    monkeypatch.setattr(revocations, "parse", lambda text: reads.append(text))
    asyncio.run(revocations.load())
    asyncio.run(revocations.load())
    assert reads == []


def test_a_missing_file_revokes_nothing_and_a_vanished_one_keeps_the_last_list(tmp_path):
    path = tmp_path / "revoked.txt"
    revocations = Revocations(path)
    asyncio.run(revocations.load())
    assert not revocations.revoked(T1, "300/a.mp3")

    path.write_text("/300/a.mp3\n")
    asyncio.run(revocations.load())
    assert revocations.revoked(T1, "300/a.mp3")

    path.unlink()
    asyncio.run(revocations.load())
    assert revocations.revoked(T1, "300/a.mp3")  # a deploy glitch must not un-revoke everything


def test_no_file_configured_is_a_no_op():
    revocations = Revocations(None)
    asyncio.run(revocations.load())
    assert not revocations.revoked(T1, "300/a.mp3")


def test_watch_picks_up_changes_without_a_restart(tmp_path):
    path = tmp_path / "revoked.txt"
    path.write_text("")
    revocations = Revocations(path)

    async def scenario() -> bool:
        await revocations.load()
        watcher = asyncio.create_task(revocations.watch(interval=0.02))
        try:
            write(path, "/300/\n")
            for _ in range(500):  # bounded: 10 s at most
                if revocations.revoked(T1, "300/a.mp3"):
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            watcher.cancel()

    assert asyncio.run(scenario())


def test_watch_survives_an_unreadable_file(tmp_path):
    path = tmp_path / "revoked.txt"
    path.write_text("/300/a.mp3\n")
    revocations = Revocations(path)

    async def scenario() -> bool:
        await revocations.load()
        watcher = asyncio.create_task(revocations.watch(interval=0.02))
        try:
            path.write_bytes(b"\xff\xfe not utf-8 \x80")
            await asyncio.sleep(0.1)
            assert not watcher.done()  # logged, not fatal
            assert revocations.revoked(T1, "300/a.mp3")  # the last good list stays
            write(path, "/400/\n")
            for _ in range(500):
                if revocations.revoked(T1, "400/x.mp3"):
                    return True
                await asyncio.sleep(0.02)
            return False
        finally:
            watcher.cancel()

    assert asyncio.run(scenario())


def test_hash_inside_a_name_is_not_a_comment():
    revocations = parsed("/300/a#1.mp3\n/300/#old/  # the archive of old calls\n")
    assert revocations.revoked("x" * 22, "300/a#1.mp3")
    assert not revocations.revoked("x" * 22, "300/a")
    assert revocations.revoked("x" * 22, "300/#old/b.mp3")
    assert not revocations.revoked("x" * 22, "300/b.mp3")  # not the whole directory


def test_a_relative_or_bare_link_with_a_query_revokes_its_token():
    for entry in (f"{T1}?exp=1&sig=abc", f"/{T1}?exp=1&sig=abc"):
        assert parsed(entry + "\n").revoked(T1, "300/a.mp3"), entry


def test_a_question_mark_is_part_of_a_name():
    revocations = parsed("/odd/a?b.mp3\n/odd/x?y=1&z\n")
    assert revocations.files == {"odd/a?b.mp3", "odd/x?y=1&z"}
    assert revocations.tokens == frozenset()
    assert revocations.reported == {"link": 0, "file": 2, "prefix": 0, "ignored": 0, "ambiguous": 0}


def test_a_name_with_a_blank_hash_is_revoked_under_both_readings_and_reported(caplog):
    revocations = parsed("/odd/a #b.mp3\n")
    assert revocations.revoked("x" * 22, "odd/a #b.mp3")
    assert revocations.revoked("x" * 22, "odd/a")  # the other reading: the safe side
    assert revocations.reported["ambiguous"] == 1
    assert any("line 1 is ambiguous" in record.getMessage() for record in caplog.records)


def test_trailing_blanks_are_revoked_under_both_readings_and_reported():
    revocations = parsed("/odd/ends-with-space.mp3 \n")
    assert revocations.files == {"odd/ends-with-space.mp3 ", "odd/ends-with-space.mp3"}
    assert revocations.reported["ambiguous"] == 1


def test_a_json_string_names_a_path_exactly():
    revocations = parsed('"/odd/ends-with-space.mp3 "\n"/odd/a #b.mp3"  # quoted, so this is a comment\n"/dir/"\n')
    assert revocations.files == {"odd/ends-with-space.mp3 ", "odd/a #b.mp3"}
    assert revocations.prefixes == ("dir/",)
    assert revocations.reported["ambiguous"] == 0 and revocations.reported["ignored"] == 0


@pytest.mark.parametrize(
    "line",
    [
        "not a token at all",
        "x" * 30,  # base64 characters, but not whole AES blocks
        f"{T1} trailing words",
        '"/odd/unterminated',
        '"relative/path.mp3"',
        '["/a.mp3"]',
        '"/../etc/passwd"',
        "/../etc/passwd",
        "https://storage.example.com/not-a-token?sig=1",
    ],
)
def test_every_line_that_revokes_nothing_is_reported(line, caplog):
    revocations = parsed(line + "\n")
    assert (revocations.tokens, revocations.files, revocations.prefixes) == (frozenset(), frozenset(), ())
    assert revocations.reported["ignored"] == 1
    assert any("line 1 ignored" in record.getMessage() for record in caplog.records)


def test_a_non_canonical_spelling_of_a_token_is_not_taken_for_it():
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    alias = T16[:-1] + alphabet[alphabet.index(T16[-1]) ^ 1]  # a bit base64 leaves unused
    revocations = parsed(alias + "\n")
    assert not revocations.revoked(T16, "pad16/abcde.mp3")
    assert revocations.reported["ignored"] == 1
