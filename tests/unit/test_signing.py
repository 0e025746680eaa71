"""Signed links: round trip, every kind of tampering, other keys, rotation, expiry with a chosen `now`."""

from __future__ import annotations

import secrets
from urllib.parse import parse_qsl, urlencode

import pytest

from gateway.links.decision import Refusal
from gateway.links.signing import SIGNATURE, LinkSigner
from gateway.links.tokens import encrypt_path

OLD, NEW, OTHER = (secrets.token_bytes(32) for _ in range(3))
NOW = 1_800_000_000.0
TOKEN = encrypt_path("/300/2017-02-17-11-05-04_in_300_uhl4.mp3", OLD)
OTHER_TOKEN = encrypt_path("/300/2017-02-17-11-05-04_in_300_other.mp3", OLD)
FULL = {"exp": str(int(NOW) + 3600), "inline": "1", "filename": "call with client.mp3"}


def params(query: str) -> dict[str, str]:
    """As the edge reads a query string: last value wins, blanks kept."""
    return dict(parse_qsl(query, keep_blank_values=True))


def refusal(signer: LinkSigner, token: str, given: dict[str, str], now: float = NOW) -> Refusal:
    refused = signer.check(token, given, now)
    assert refused is not None
    return refused


@pytest.mark.parametrize(
    "signed",
    [{}, {"exp": FULL["exp"]}, {"inline": "1"}, {"filename": "x.mp3"}, FULL, {"filename": "звонок клиента.mp3"}],
)
def test_round_trip(signed):
    signer = LinkSigner([OLD])
    query = signer.sign(TOKEN, signed)
    got = params(query)
    assert SIGNATURE in got and list(got)[-1] == SIGNATURE
    assert {name: value for name, value in got.items() if name != SIGNATURE} == signed
    assert signer.check(TOKEN, got, NOW) is None


def test_signature_is_deterministic_and_url_safe():
    signer = LinkSigner([OLD])
    assert signer.sign(TOKEN, FULL) == signer.sign(TOKEN, FULL)
    signature = params(signer.sign(TOKEN, FULL))[SIGNATURE]
    assert signature.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("exp", str(int(NOW) + 7200)),  # longer life
        ("exp", str(int(NOW) + 3599)),  # even shorter is refused: it is not what was signed
        ("exp", ""),
        ("inline", "0"),
        ("inline", "true"),
        ("filename", "other.mp3"),
        ("filename", "call with client.mp3 "),
    ],
)
def test_changing_a_signed_parameter_is_refused(name, value):
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, FULL))
    got[name] = value
    refused = refusal(signer, TOKEN, got)
    assert (refused.status, refused.reason) == (403, "signature")


@pytest.mark.parametrize("name", ["exp", "inline", "filename"])
def test_removing_a_signed_parameter_is_refused(name):
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, FULL))
    del got[name]
    assert refusal(signer, TOKEN, got).status == 403


@pytest.mark.parametrize(("name", "value"), [("inline", "1"), ("filename", "x.mp3"), ("exp", "9999999999")])
def test_adding_a_signed_parameter_is_refused(name, value):
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, {k: v for k, v in FULL.items() if k != name}))
    got[name] = value
    assert refusal(signer, TOKEN, got).status == 403


@pytest.mark.parametrize("mutate", ["flip", "truncate", "empty", "missing", "other-link"])
def test_a_bad_or_missing_signature_is_refused(mutate):
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, FULL))
    signature = got[SIGNATURE]
    if mutate == "flip":
        got[SIGNATURE] = ("A" if signature[0] != "A" else "B") + signature[1:]
    elif mutate == "truncate":
        got[SIGNATURE] = signature[:-2]
    elif mutate == "empty":
        got[SIGNATURE] = ""
    elif mutate == "missing":
        del got[SIGNATURE]
    else:
        got[SIGNATURE] = params(signer.sign(OTHER_TOKEN, FULL))[SIGNATURE]
    refused = refusal(signer, TOKEN, got)
    assert (refused.status, refused.reason) == (403, "signature")


def test_the_signature_binds_the_token():
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, FULL))
    assert refusal(signer, OTHER_TOKEN, got).status == 403
    assert refusal(signer, TOKEN.rstrip("=") + "A", got).status == 403


def test_extra_unsigned_parameters_are_ignored():
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, FULL) + "&utm_source=crm&sig_extra=1&Inline=0")
    assert signer.check(TOKEN, got, NOW) is None


def test_values_are_encoded_unambiguously():
    signer = LinkSigner([OLD])
    # A filename carrying `&inline=1` must not verify as a separate inline parameter.
    got = params(signer.sign(TOKEN, {"filename": "a&inline=1"}))
    assert got["filename"] == "a&inline=1"
    assert signer.check(TOKEN, got, NOW) is None
    forged = {"filename": "a", "inline": "1", SIGNATURE: got[SIGNATURE]}
    assert refusal(signer, TOKEN, forged).status == 403


def test_a_signature_made_with_another_key_is_refused():
    query = LinkSigner([OTHER]).sign(TOKEN, FULL)
    refused = refusal(LinkSigner([OLD]), TOKEN, params(query))
    assert (refused.status, refused.reason) == (403, "signature")
    refused = refusal(LinkSigner([NEW, OLD]), TOKEN, params(query))
    assert refused.status == 403


def test_the_signing_key_is_derived_not_the_aes_key_itself():
    import hashlib
    import hmac

    message = f"{TOKEN}?exp={FULL['exp']}".encode()
    naive = hmac.new(OLD, message, hashlib.sha256).digest()
    import base64

    naive_text = base64.urlsafe_b64encode(naive).rstrip(b"=").decode()
    assert params(LinkSigner([OLD]).sign(TOKEN, {"exp": FULL["exp"]}))[SIGNATURE] != naive_text


def test_rotation_old_links_verify_with_new_then_old():
    old_link = params(LinkSigner([OLD]).sign(TOKEN, FULL))
    rotated = LinkSigner([NEW, OLD])
    assert rotated.check(TOKEN, old_link, NOW) is None
    # The rotated signer issues with the first (new) key...
    new_link = params(rotated.sign(TOKEN, FULL))
    assert new_link[SIGNATURE] != old_link[SIGNATURE]
    assert LinkSigner([NEW]).check(TOKEN, new_link, NOW) is None
    # ...so a process that only knows the old key refuses the new links,
    assert refusal(LinkSigner([OLD]), TOKEN, new_link).status == 403
    # and once the old key is dropped, old links stop working.
    assert refusal(LinkSigner([NEW]), TOKEN, old_link).status == 403


def test_key_order_does_not_matter_for_verification():
    old_link = params(LinkSigner([OLD]).sign(TOKEN, FULL))
    assert LinkSigner([OLD, NEW]).check(TOKEN, old_link, NOW) is None
    assert LinkSigner([NEW, OTHER, OLD]).check(TOKEN, old_link, NOW) is None


def test_expiry_with_a_controllable_now():
    signer = LinkSigner([OLD])
    exp = int(NOW) + 60
    got = params(signer.sign(TOKEN, {"exp": str(exp)}))
    assert signer.check(TOKEN, got, exp - 60) is None
    assert signer.check(TOKEN, got, exp - 0.001) is None
    for now in (exp, exp + 0.5, exp + 86400):
        refused = refusal(signer, TOKEN, got, now)
        assert (refused.status, refused.reason) == (410, "expired")


def test_without_exp_a_signed_link_never_expires():
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, {"inline": "1"}))
    assert signer.check(TOKEN, got, 4_000_000_000) is None


def test_the_signature_is_checked_before_expiry():
    # Editing exp of an expired link yields 403 (tampered), never 200, and says nothing about expiry.
    signer = LinkSigner([OLD])
    exp = int(NOW) - 10
    got = params(signer.sign(TOKEN, {"exp": str(exp)}))
    assert refusal(signer, TOKEN, got).status == 410
    got["exp"] = str(int(NOW) + 3600)
    assert refusal(signer, TOKEN, got).status == 403


def test_an_unreadable_signed_expiry_is_refused():
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, {"exp": "soon"}))
    refused = refusal(signer, TOKEN, got)
    assert (refused.status, refused.reason) == (403, "signature")


def test_unknown_parameters_cannot_be_signed():
    with pytest.raises(ValueError, match="unknown"):
        LinkSigner([OLD]).sign(TOKEN, {"download": "1"})


def test_sign_output_is_a_query_string():
    query = LinkSigner([OLD]).sign(TOKEN, FULL)
    assert "?" not in query and not query.startswith("&")
    assert urlencode(params(query)) == query


@pytest.mark.parametrize("exp", ["²", "9" * 5000, "-1", "1e9"])
def test_an_odd_signed_expiry_is_refused_not_a_crash(exp):
    signer = LinkSigner([OLD])
    got = params(signer.sign(TOKEN, {"exp": exp}))
    refused = refusal(signer, TOKEN, got)
    assert (refused.status, refused.reason) == (403, "signature")
