"""The link token codec, checked against openssl as an independent implementation.

The contract: UTF-8 path, NUL-padded to 16 bytes (never PKCS#7), AES-256-ECB,
URL-safe base64 with optional `=` padding. openssl does the AES and the base64
here; Python only swaps `+/` for `-_` and drops `=`.
"""

from __future__ import annotations

import base64
import random
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.links.tokens import (
    MAX_TOKEN_CHARS,
    MIN_TOKEN_CHARS,
    TokenError,
    decrypt_token,
    encrypt_path,
    format_key,
    parse_key,
    token_bytes,
)

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"

KEY_HEX = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
KEY = bytes.fromhex(KEY_HEX)
# The AES-256 key of NIST SP 800-38A, used as "the other key".
KEY2_HEX = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4"
KEY2 = bytes.fromhex(KEY2_HEX)


# --- openssl as the reference implementation ---------------------------------------------


def _openssl(args: list[str], data: bytes) -> bytes:
    done = subprocess.run([OPENSSL, "enc", *args], input=data, capture_output=True, check=True)
    return done.stdout


def openssl_token(path: str, key: bytes) -> str:
    """Token for `path` made by openssl: NUL padding here, AES and base64 by openssl."""
    data = path.encode("utf-8")
    data += b"\0" * (-len(data) % 16)
    b64 = _openssl(["-aes-256-ecb", "-nopad", "-K", key.hex(), "-a", "-A"], data).decode("ascii").strip()
    return b64.translate(str.maketrans("+/", "-_")).rstrip("=")


def openssl_path(token: str, key: bytes) -> str:
    """The path inside `token`, as openssl decrypts it (NULs stripped from the right)."""
    b64 = token.translate(str.maketrans("-_", "+/"))
    b64 += "=" * (-len(b64) % 4)
    plain = _openssl(["-d", "-aes-256-ecb", "-nopad", "-K", key.hex(), "-a", "-A"], b64.encode() + b"\n")
    return plain.rstrip(b"\0").decode("utf-8")


PATHS = [
    "/300/2017-02-17-11-05-04_in_300_uhl4.mp3",
    "/300/abcdefg.mp3",  # exactly 16 bytes
    "/300/2017-02-17/abcdefghijkl.mp3",  # exactly 32 bytes
    "a",  # 1 byte
    "/300/abcdefg.mp",  # 15 bytes
    "/300/abcdefg.mp3x",  # 17 bytes
    "/300/звонок-клиента.mp3",  # Cyrillic
    "/300/abcdefghijя.mp3",  # a 2-byte character across the first block boundary
    "/录音/通话记录.wav",  # Chinese
    "/300/📞 call 🎧.mp3",  # emoji (4-byte UTF-8)
    "/300/with space.mp3",
    "/300/a?b#c&d%e+f=g.mp3",  # URL-special characters
    "/300/%2e%2e/x%20y.mp3",  # percent signs are just characters
    "/300/" + "x" * 300 + ".wav",  # many blocks
]


def test_reference_paths_have_the_lengths_the_cases_claim():
    assert len(b"/300/abcdefg.mp3") == 16
    assert len(b"/300/2017-02-17/abcdefghijkl.mp3") == 32
    assert len("/300/abcdefghijя.mp3".encode()) == 21
    assert "/300/abcdefghijя.mp3".encode()[15:17] == "я".encode()


@pytest.mark.parametrize("path", PATHS)
def test_encrypt_path_matches_openssl(path):
    assert encrypt_path(path, KEY) == openssl_token(path, KEY)


@pytest.mark.parametrize("path", PATHS)
def test_openssl_tokens_decrypt_to_the_path(path):
    token = openssl_token(path, KEY2)
    assert decrypt_token(token, [KEY2]) == [(0, path)]


@pytest.mark.parametrize("path", PATHS)
def test_our_tokens_decrypt_with_openssl(path):
    assert openssl_path(encrypt_path(path, KEY), KEY) == path


@pytest.mark.parametrize(
    ("path", "blocks"),
    [("/300/abcdefg.mp3", 1), ("/300/2017-02-17/abcdefghijkl.mp3", 2), ("a", 1), ("/300/abcdefg.mp3x", 2)],
)
def test_whole_blocks_get_no_padding_block(path, blocks):
    token = encrypt_path(path, KEY)
    assert len(token_bytes(token)) == 16 * blocks
    # Never PKCS#7: a block-aligned path would grow by a whole block.
    assert len(token) == {1: 22, 2: 43}[blocks]


# Fixed vectors, made with openssl 3.0 (bash), key = bytes 0x00..0x1f:
K = KEY_HEX
FIXED_VECTORS = [
    # { printf '%s' '/300/2017-02-17-11-05-04_in_300_uhl4.mp3'; head -c 8 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -a -A | tr '+/' '-_' | tr -d '='
    (K, "/300/2017-02-17-11-05-04_in_300_uhl4.mp3", "jSKlniNvqyw-cb7X-miv-dDb9tH2uPVucp-j8AqV_zb-TF_yDkg6Wv-cqcpTz-mK"),
    # { printf '%s' '/300/abcdefg.mp3'; head -c 0 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -a -A | tr '+/' '-_' | tr -d '='
    (K, "/300/abcdefg.mp3", "UJz1m3FlKrSgzWAncHZa5g"),
    # { printf '%s' '/300/2017-02-17/abcdefghijkl.mp3'; head -c 0 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -a -A | tr '+/' '-_' | tr -d '='
    (K, "/300/2017-02-17/abcdefghijkl.mp3", "Px25a1WrL4fx_gLfRwXZ0JvZZZW1M1PhaffTxFgbZVE"),
    # { printf '%s' '/300/звонок-клиента.mp3'; head -c 12 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -a -A | tr '+/' '-_' | tr -d '='
    (K, "/300/звонок-клиента.mp3", "omwzclP5wc-sGzQLko0nLR-T-ruFNgFRntnk6hOCK4tQSVk4I7y4t8HkgNRdOxEz"),
    # { printf '%s' 'a'; head -c 15 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -a -A | tr '+/' '-_' | tr -d '='
    (K, "a", "5wfu3twqpFuKD-jd4EPEtQ"),
    # { printf '%s' '/300/录音 📞 a?b#c&d%e+f=g.mp3'; head -c 14 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f -a -A | tr '+/' '-_' | tr -d '='
    (K, "/300/录音 📞 a?b#c&d%e+f=g.mp3", "rUXZaiv5XmaE0Fk66LjjPZoDslG9ZOzC9OuxVaKRekjSDT3hAgE7RlbzJHzWobok"),
    # { printf '%s' '/300/2017-02-17-11-05-04_in_300_uhl4.mp3'; head -c 8 /dev/zero; } | openssl enc -aes-256-ecb -nopad -K 603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4 -a -A | tr '+/' '-_' | tr -d '='
    (
        KEY2_HEX,
        "/300/2017-02-17-11-05-04_in_300_uhl4.mp3",
        "oSvEwPfXIUbNs4aJoy2t99Ek7sgKOodswpalr3x7w-bU3T6NEvMN465RioCl_BGX",
    ),
]


@pytest.mark.parametrize(("key_hex", "path", "token"), FIXED_VECTORS)
def test_fixed_vector_encrypts(key_hex, path, token):
    assert encrypt_path(path, parse_key(key_hex)) == token


@pytest.mark.parametrize(("key_hex", "path", "token"), FIXED_VECTORS)
def test_fixed_vector_decrypts(key_hex, path, token):
    assert decrypt_token(token, [parse_key(key_hex)]) == [(0, path)]


# --- padding -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/300/abcdefg.mp3", "/300/2017-02-17/abcdefghijkl.mp3", "/300/звонок-клиента.mp3"])
def test_tokens_decode_with_and_without_padding(path):
    unpadded = encrypt_path(path, KEY)
    assert "=" not in unpadded
    padded = base64.urlsafe_b64encode(token_bytes(unpadded)).decode()
    assert decrypt_token(unpadded, [KEY]) == [(0, path)]
    assert decrypt_token(padded, [KEY]) == [(0, path)]


def test_padded_token_of_one_block_has_two_equals_signs():
    padded = base64.urlsafe_b64encode(token_bytes("UJz1m3FlKrSgzWAncHZa5g")).decode()
    assert padded == "UJz1m3FlKrSgzWAncHZa5g=="
    assert decrypt_token(padded, [KEY]) == [(0, "/300/abcdefg.mp3")]


# --- keys ----------------------------------------------------------------------------------


def test_parse_key_reads_lower_and_upper_case_hex():
    assert parse_key(KEY_HEX) == KEY
    assert parse_key(KEY_HEX.upper()) == KEY
    assert parse_key(f"  {KEY_HEX}\n") == KEY


def test_parse_key_reads_base64_form():
    assert parse_key("base64:" + base64.b64encode(KEY).decode()) == KEY
    assert parse_key("base64:" + base64.b64encode(KEY2).decode() + "\n") == KEY2


def test_format_key_round_trips():
    assert format_key(KEY2) == KEY2_HEX
    assert parse_key(format_key(KEY2)) == KEY2


@pytest.mark.parametrize("text", ["", "00", KEY_HEX[:-2], KEY_HEX + "00", KEY_HEX[:-1], KEY_HEX + "0"])
def test_parse_key_refuses_wrong_hex_length(text):
    with pytest.raises(ValueError, match="64 hex"):
        parse_key(text)


@pytest.mark.parametrize("text", ["g" * 64, "0x" + KEY_HEX[2:], KEY_HEX[:-1] + "z", "я" * 64])
def test_parse_key_refuses_non_hex(text):
    with pytest.raises(ValueError, match="hexadecimal"):
        parse_key(text)


@pytest.mark.parametrize(
    "text",
    [
        # 64 characters, but with whitespace inside: not 64 hex digits.
        "00 " * 16 + "00" * 8,  # bytes.fromhex() would read 24 bytes: a silent AES-192 key
        "0011 " * 12 + "0011",  # ... or 26 bytes, which AES refuses only at the first request
        KEY_HEX[:30] + "\t\t" + KEY_HEX[32:],
    ],
)
def test_parse_key_refuses_whitespace_inside_hex(text):
    assert len(text) == 64
    try:
        key = parse_key(text)
    except ValueError:
        return
    pytest.fail(f"parse_key({text!r}) accepted it and returned a {len(key)}-byte key")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x01" * 16, b"\x01" * 31, b"\x01" * 33, b"\x01" * 64],
)
def test_parse_key_refuses_base64_of_wrong_length(raw):
    with pytest.raises(ValueError, match=f"decodes to {len(raw)} bytes, expected 32"):
        parse_key("base64:" + base64.b64encode(raw).decode())


@pytest.mark.parametrize("body", ["!!!!", "abc", base64.b64encode(KEY).decode()[:-1], "AAAA AAAA"])
def test_parse_key_refuses_bad_base64(body):
    with pytest.raises(ValueError, match="base64"):
        parse_key("base64:" + body)


# --- several keys ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_token_of_second_key_is_found_with_index_one(path):
    token = openssl_token(path, KEY2)
    # Both keys are fixed, so this is deterministic: KEY does not open these tokens.
    assert decrypt_token(token, (KEY, KEY2)) == [(1, path)]


@pytest.mark.parametrize("path", PATHS)
def test_token_of_first_key_is_found_with_index_zero(path):
    assert decrypt_token(encrypt_path(path, KEY), (KEY, KEY2)) == [(0, path)]


@pytest.mark.parametrize("path", PATHS)
def test_token_for_an_unknown_key_is_a_decrypt_error(path):
    with pytest.raises(TokenError) as caught:
        decrypt_token(encrypt_path(path, KEY2), (KEY,))
    assert caught.value.reason == "decrypt"


def test_wrong_key_practically_never_yields_utf8():
    # A fixed, seeded sample: deterministic, so it cannot flake.
    rng = random.Random(20240217)
    paths = [
        "/"
        + "/".join(rng.choice(["300", "301", "archive", "звонки"]) for _ in range(2))
        + f"/{rng.randrange(10**9)}_{''.join(rng.choices('abcxyz_-', k=rng.randrange(1, 40)))}.mp3"
        for _ in range(300)
    ]
    opened = []
    for path in paths:
        try:
            opened.append(decrypt_token(encrypt_path(path, KEY), (KEY2,)))
        except TokenError as exc:
            assert exc.reason == "decrypt"
    assert opened == []


def test_no_keys_is_a_decrypt_error():
    with pytest.raises(TokenError) as caught:
        decrypt_token(encrypt_path("/300/x.mp3", KEY), ())
    assert caught.value.reason == "decrypt"


# --- garbage -------------------------------------------------------------------------------


GOOD = "UJz1m3FlKrSgzWAncHZa5g"  # 22 characters, one block


@pytest.mark.parametrize(
    "token",
    [
        "",
        "A",
        GOOD[:21],  # too short
        "A" * (MAX_TOKEN_CHARS + 1),  # too long
        "A" * 6000,
        GOOD[:-1] + "+",  # standard-alphabet characters are not in a token
        GOOD[:-1] + "/",
        GOOD[:-1] + ".",
        GOOD[:-1] + "~",
        GOOD + " ",
        " " + GOOD,
        GOOD[:11] + "%" + GOOD[12:],
        GOOD[:-1] + "Я",  # a Cyrillic letter is not base64
        GOOD[:-1] + "\0",
        GOOD + "===",  # at most two padding characters
        GOOD[:10] + "=" + GOOD[10:],  # padding in the middle
        "=" * 24,
        "A" * 23,  # 17 bytes
        "A" * 24,  # 18 bytes
        "A" * 32,  # 24 bytes
        "A" * 25,  # not even valid base64 (4n+1 characters)
        "A" * 43 + "A",  # 33 bytes
        "A" * MAX_TOKEN_CHARS,  # 4200 bytes: not whole blocks
        GOOD + "\n",
    ],
)
def test_garbage_is_a_decode_error(token):
    with pytest.raises(TokenError) as caught:
        decrypt_token(token, (KEY, KEY2))
    assert caught.value.reason == "decode"


def test_token_length_bounds_are_as_documented():
    assert MIN_TOKEN_CHARS == 22
    assert len(token_bytes(GOOD)) == 16
    # The longest path the gateway can hold (4 KiB) still fits in a token.
    longest = "/" + "x" * 4095
    token = encrypt_path(longest, KEY)
    assert len(token) <= MAX_TOKEN_CHARS
    assert decrypt_token(token, [KEY]) == [(0, longest)]


def test_empty_path_cannot_be_encrypted():
    with pytest.raises(ValueError):
        encrypt_path("", KEY)


def test_token_error_is_a_value_error_with_reason():
    with pytest.raises(ValueError):
        token_bytes("!")
    assert TokenError("decode", "x").reason == "decode"


# --- properties ------------------------------------------------------------------------------

paths = st.text(min_size=1, max_size=600).filter(lambda s: not s.endswith("\0"))


@given(paths)
def test_decrypt_inverts_encrypt(path):
    token = encrypt_path(path, KEY)
    assert decrypt_token(token, [KEY]) == [(0, path)]
    assert MIN_TOKEN_CHARS <= len(token) <= MAX_TOKEN_CHARS
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(paths)
def test_decrypt_inverts_encrypt_with_padding_added(path):
    token = encrypt_path(path, KEY)
    padded = token + "=" * (-len(token) % 4)
    assert (1, path) in decrypt_token(padded, [KEY2, KEY])


@settings(max_examples=25, deadline=None)
@given(st.text(min_size=1, max_size=80).filter(lambda s: not s.endswith("\0")))
def test_encrypt_agrees_with_openssl_for_any_text(path):
    token = encrypt_path(path, KEY2)
    assert token == openssl_token(path, KEY2)
    assert openssl_path(token, KEY2) == path


# --- one spelling per token ---------------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def spellings(token: str) -> list[str]:
    """Every token whose base64 decodes to the same bytes: the last character's unused low bits varied."""
    unused = {2: 4, 3: 2}.get(len(token.rstrip("=")) % 4, 0)  # characters in the last group -> unused bits
    last = _ALPHABET.index(token[-1])
    return [token[:-1] + _ALPHABET[(last & ~((1 << unused) - 1)) | low] for low in range(1 << unused)]


@pytest.mark.parametrize(("path", "aliases"), [("/300/abcdefg.mp3", 16), ("/300/2017-02-17/abcdefghijkl.mp3", 4)])
def test_only_the_canonical_spelling_of_a_token_decodes(path, aliases):
    token = encrypt_path(path, KEY)
    every = spellings(token)
    assert len(every) == aliases and token in every
    assert len({base64.urlsafe_b64decode(t + "=" * (-len(t) % 4)) for t in every}) == 1  # they all decode alike
    for alias in every:
        if alias == token:
            assert decrypt_token(alias, [KEY]) == [(0, path)]
            assert decrypt_token(alias + "=" * (-len(alias) % 4), [KEY]) == [(0, path)]
        else:
            with pytest.raises(TokenError) as refused:
                decrypt_token(alias, [KEY])
            assert refused.value.reason == "decode"


def test_a_padded_token_needs_exactly_its_padding():
    token = encrypt_path("/300/abcdefg.mp3", KEY)  # 16 bytes: "==" when padded
    assert decrypt_token(token + "==", [KEY]) == [(0, "/300/abcdefg.mp3")]
    with pytest.raises(TokenError):
        decrypt_token(token + "=", [KEY])
