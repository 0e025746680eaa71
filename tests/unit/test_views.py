"""Views of a recording, as units: parsing a link's view, masks, signing coverage, masked tokens, CORS.

What a real `serve` does with them (tones measured per channel, masked
spans decoded silent, every way back to the original refused) is in
test_views_e2e.py; the page in Chromium in test_player_browser.py.
"""

from __future__ import annotations

import io
import json
import math
import secrets
import struct
import wave
from pathlib import Path
from urllib.parse import parse_qsl

import pytest

from gateway.api import models
from gateway.http.cors import EXPOSED, Cors, parse_origin
from gateway.http.query import MAX_QUERY_BYTES
from gateway.links.decision import Refusal
from gateway.links.issuing import Issuer
from gateway.links.masks import MAX_SECONDS, MAX_SPANS, MaskError, canonical, mask_text, parse_mask
from gateway.links.resolver import Resolver
from gateway.links.signing import SIGNATURE, SIGNED_PARAMETERS, LinkSigner
from gateway.links.tokens import TokenError, decrypt_token, encrypt_path, masked_key
from gateway.links.views import View, page_links, view
from gateway.transcode.convert import render
from gateway.transcode.peaks import interleaved
from gateway.transcode.probe import probe
from gateway.transcode.spec import Wanted

KEY = secrets.token_bytes(32)
PATH = "/300/2017-02-17-11-05-04_in_300_uhl4.wav"


def parsed(params: dict[str, str], signed: bool = True) -> View:
    got = view(params, signed, inline_renditions=True)
    assert isinstance(got, View), got
    return got


# -- what a link asks for ---------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"player": "1"}, None),
        ({"player": "1", "inline": "1"}, None),
        ({"channel": "2"}, Wanted("wav", explicit=True, channel=2)),
        ({"channel": "2", "inline": "1"}, Wanted("wav", explicit=True, channel=2)),
        ({"channel": "1", "format": "mp3"}, Wanted("mp3", explicit=True, channel=1)),
        ({"channel": "2", "peaks": "1", "pixels": "50"}, Wanted("peaks", explicit=True, pixels=50, channel=2)),
        ({"peaks": "1", "split": "1"}, Wanted("peaks", explicit=True, pixels=1000, split=True)),
        ({"mask": "1-2"}, Wanted("wav", explicit=True, mask=((1000, 2000),))),
        ({"mask": "1-2", "inline": "1"}, Wanted("wav", explicit=True, mask=((1000, 2000),))),
        ({"mask": "1-2", "format": "opus"}, Wanted("opus", explicit=True, mask=((1000, 2000),))),
        ({"mask": "1-2", "peaks": "1", "split": "1"}, Wanted("peaks", True, 1000, None, True, ((1000, 2000),))),
        ({"split": "0"}, None),
    ],
)
def test_the_view_a_link_asks_for(params: dict[str, str], expected: Wanted | None) -> None:
    got = parsed(params)
    assert got.rendition == expected
    assert got.player is (params.get("player") == "1")


def test_a_masked_link_never_serves_its_original_even_with_inline_renditions_off() -> None:
    got = view({"mask": "1-2", "inline": "1"}, True, inline_renditions=False)
    assert isinstance(got, View) and got.rendition == Wanted("wav", explicit=True, mask=((1000, 2000),))


@pytest.mark.parametrize(
    ("params", "reason", "words"),
    [
        ({"player": "maybe"}, "player", ["player=1"]),
        ({"player": "1", "format": "mp3"}, "player", ["format"]),
        ({"player": "1", "peaks": "1"}, "player", ["peaks"]),
        ({"split": "1"}, "split", ["peaks=1&split=1"]),
        ({"split": "yes please"}, "split", ["split=1"]),
        ({"peaks": "1", "split": "1", "channel": "1"}, "split", ["channel"]),
        ({"channel": "0"}, "channel", ["1 to 8"]),
        ({"channel": "9"}, "channel", ["1 to 8"]),
        ({"channel": "two"}, "channel", ["1 to 8"]),
        ({"channel": "²"}, "channel", []),
        ({"channel": "9" * 5000}, "channel", []),
        ({"mask": ""}, "mask", ["mask:"]),
        ({"mask": "20-10"}, "mask", ["span 1"]),
        ({"mask": "1-2,x"}, "mask", ["span 2"]),
        ({"mask": "1.0001-2"}, "mask", ["3 decimals"]),
        ({"mask": ",".join(["1-2"] * (MAX_SPANS + 1))}, "mask", [str(MAX_SPANS)]),
    ],
)
def test_views_not_served_are_400_naming_what_is(params: dict[str, str], reason: str, words: list[str]) -> None:
    refused = view(params, True, inline_renditions=True)
    assert isinstance(refused, Refusal) and refused.status == 400 and refused.reason == reason, refused
    for word in words:
        assert refused.message is not None and word in refused.message, refused.message


def test_views_are_named_for_metrics_and_the_log() -> None:
    assert parsed({}).kinds == ()
    assert parsed({"player": "1", "channel": "2", "mask": "1-2"}).kinds == ("player", "channel", "mask")
    assert parsed({"peaks": "1", "split": "1"}).kinds == ("split",)


def test_variants_name_channel_split_and_mask_so_no_view_is_served_for_another() -> None:
    mask = ((1000, 2000),)
    names = {
        Wanted("wav", True).variant,
        Wanted("wav", True, channel=1).variant,
        Wanted("wav", True, channel=2).variant,
        Wanted("wav", True, mask=mask).variant,
        Wanted("wav", True, mask=((1000, 2001),)).variant,
        Wanted("wav", True, channel=2, mask=mask).variant,
        Wanted("peaks", True, 1000).variant,
        Wanted("peaks", True, 1000, split=True).variant,
        Wanted("peaks", True, 1000, split=True, mask=mask).variant,
    }
    assert len(names) == 9
    assert Wanted("wav", True, channel=2).variant == "wav-c2"
    assert Wanted("peaks", True, 1000, split=True).variant == "peaks8-1000-split"
    masked = Wanted("mp3", True, mask=mask).variant
    assert masked.startswith("mp3-m") and len(masked) == len("mp3-m") + 32
    assert Wanted("wav", True, mask=mask) == Wanted("wav", True, mask=parse_mask("1-2"))  # same mask, same name


@pytest.mark.parametrize(
    ("wanted", "name", "renamed"),
    [
        (Wanted("wav", True, channel=2), "call.wav", "call (channel 2).wav"),
        (Wanted("mp3", True, channel=1), "звонок.gsm", "звонок (channel 1).mp3"),
        (Wanted("peaks", True, 10, channel=2), "call", "call (channel 2).json"),
        (Wanted("wav", True, mask=((0, 1),)), "call.mp3", "call.wav"),
    ],
)
def test_a_channel_is_marked_in_the_download_name(wanted: Wanted, name: str, renamed: str) -> None:
    assert wanted.rename(name) == renamed


# -- masks --------------------------------------------------------------------------


def test_masks_are_canonical_sorted_merged_and_widened_to_whole_milliseconds() -> None:
    assert canonical([[50.5, 55], [10, 20]]) == ((10_000, 20_000), (50_500, 55_000))
    assert canonical([[10, 20], [15, 30], [30, 31], [40, 41]]) == ((10_000, 31_000), (40_000, 41_000))
    assert canonical([[0.1, 0.2]]) == ((100, 200),)  # not 101: 0.1 * 1000 is 100.00000000000001
    assert canonical([[1.0004, 1.0006]]) == ((1000, 1001),)  # outward: never less silence than asked
    assert canonical([]) == ()
    assert mask_text(canonical([[50.5, 55], [10, 20], [0, 0.125]])) == "0-0.125,10-20,50.5-55"
    assert parse_mask("50.5-55,10-20,15-21") == ((10_000, 21_000), (50_500, 55_000))


@pytest.mark.parametrize(
    ("spans", "words"),
    [
        ([[20, 10]], ["span 1", "end after it starts"]),
        ([[1, 2], [5, 5]], ["span 2"]),
        ([[-1, 2]], ["span 1"]),
        ([[1, math.inf]], ["span 1", "numbers"]),
        ([[1, MAX_SECONDS + 1]], ["span 1", str(MAX_SECONDS)]),
        ([[1, 2, 3]], ["span 1"]),
        ([[n, n + 0.5] for n in range(MAX_SPANS + 1)], [f"at most {MAX_SPANS}"]),
    ],
)
def test_a_bad_mask_says_which_span(spans: list[list[float]], words: list[str]) -> None:
    with pytest.raises(MaskError) as refused:
        canonical(spans)
    for word in words:
        assert word in str(refused.value)


@pytest.mark.parametrize(
    "spans",
    [[[0, 1]], [[0.001, 0.002]], [[1.5, 2.25], [3, 604800]], [[n * 10.123, n * 10.123 + 1] for n in range(100)]],
)
def test_mask_text_round_trips(spans: list[list[float]]) -> None:
    mask = canonical(spans)
    assert parse_mask(mask_text(mask)) == mask


def test_a_hundred_spans_and_the_longest_name_fit_the_query_limit() -> None:
    mask = canonical([[MAX_SECONDS - 2 * n - 1.999, MAX_SECONDS - 2 * n - 0.001] for n in range(MAX_SPANS)])
    params = {"exp": "253402300799", "filename": "я" * 255, "player": "1", "channel": "8", "mask": mask_text(mask)}
    query = LinkSigner([KEY]).sign(encrypt_path(PATH, KEY), params)
    assert len(query.encode()) < MAX_QUERY_BYTES, len(query)
    assert dict(parse_qsl(query))["mask"] == mask_text(mask)  # commas stay commas


# -- signing, masked tokens, the page's links ------------------------------------------


@pytest.mark.parametrize("name", ["player", "channel", "split", "mask"])
def test_every_view_parameter_is_signed(name: str) -> None:
    assert name in SIGNED_PARAMETERS
    signer = LinkSigner([KEY])
    token = encrypt_path(PATH, masked_key(KEY))
    signed = {"player": "1", "channel": "2", "split": "1", "mask": "10-20"}
    good = dict(parse_qsl(signer.sign(token, signed)))
    assert signer.check(token, good) is None
    for changed in ({**good, name: "3"}, {k: v for k, v in good.items() if k != name}):
        refused = signer.check(token, changed)
        assert refused is not None and refused.status == 403
    alone = dict(parse_qsl(signer.sign(token, {})))
    refused = signer.check(token, {**alone, name: "1"})  # adding one breaks a signature made without it
    assert refused is not None and refused.status == 403


def test_links_signed_before_the_views_existed_keep_their_signature() -> None:
    """The signed text of a link without the new parameters is what it was (they were appended)."""
    import hashlib

    from itsdangerous import Signer

    token = encrypt_path(PATH, KEY)
    old = Signer([KEY], salt=b"storage-gateway/signed-link/v1", key_derivation="hmac", digest_method=hashlib.sha256)
    signature = old.get_signature(f"{token}?exp=2000000000&inline=1".encode()).decode()
    assert LinkSigner([KEY]).check(token, {"exp": "2000000000", "inline": "1", SIGNATURE: signature}, 0) is None


def test_a_masked_link_has_a_token_of_its_own_that_names_nothing_as_a_legacy_link() -> None:
    issuer = Issuer(KEY, LinkSigner([KEY]), "https://gw.example", require_signed=False)
    plain = issuer.issue(PATH.lstrip("/"), player=True)
    masked = issuer.issue(PATH.lstrip("/"), mask=canonical([[10, 20]]), player=True)
    assert masked.signed and plain.signed
    plain_token = plain.record_url.rpartition("/")[2].partition("?")[0]
    masked_token, _, query = masked.record_url.rpartition("/")[2].partition("?")
    assert masked_token != plain_token and masked_token == encrypt_path(PATH, masked_key(KEY))
    assert "mask=10-20" in query and "player=1" in query and "sig=" in query
    assert masked_key(KEY) != KEY and len(masked_key(KEY)) == 32
    resolver = Resolver([secrets.token_bytes(32), KEY], [])
    assert [c.path for c in resolver.candidates(masked_token, masked=True)] == [PATH]
    try:  # read as a legacy link (the shared keys), it decrypts to noise, never to the path
        legacy = [path for _, path in decrypt_token(masked_token, [KEY])]
    except TokenError:
        legacy = []
    assert PATH not in legacy
    assert [c.path for c in resolver.candidates(plain_token)] == [PATH]  # and each reading is its own


def test_page_links_carry_the_page_links_view_and_are_signed_like_it() -> None:
    signer = LinkSigner([KEY])
    token = encrypt_path(PATH, masked_key(KEY))
    page = {"exp": "2000000000", "filename": "a.wav", "player": "1", "mask": "10-20", "inline": "1", "utm": "x"}
    links = page_links(token, page, stereo=True, sign=signer.sign)
    asked = {
        links.audio: {"inline": "1"},
        links.peaks: {"peaks": "1"},
        links.split_peaks: {"peaks": "1", "split": "1"},
        links.download: {},
        links.mp3: {"format": "mp3"},
    }
    for link, own in asked.items():
        assert link is not None
        link_token, _, query = link.partition("?")
        params = dict(parse_qsl(query))
        assert link_token == token and signer.check(token, params, 0) is None, link
        assert {k: v for k, v in params.items() if k != SIGNATURE} == {
            "exp": "2000000000", "filename": "a.wav", "mask": "10-20", **own
        }  # fmt: skip
    assert page_links(token, {"player": "1", "channel": "2"}, stereo=True, sign=signer.sign).split_peaks is None
    assert page_links(token, {"player": "1"}, stereo=False, sign=signer.sign).split_peaks is None
    unsigned = page_links(token, {"player": "1", "channel": "2", "filename": "x"}, stereo=False, sign=None)
    assert (unsigned.audio, unsigned.download) == (f"{token}?channel=2&inline=1", f"{token}?channel=2")
    assert page_links(token, {"player": "1"}, stereo=False, sign=None).download == token


# -- the API's mask and channel ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "words"),
    [
        ({"mask": [[1, 2, 3]]}, "mask", ["length 2"]),
        ({"mask": [[1, "x"]]}, "mask", ["float"]),
        ({"mask": [[-1, 2]]}, "mask", [">= 0"]),
        ({"mask": [[1, MAX_SECONDS + 1]]}, "mask", [str(MAX_SECONDS)]),
        ({"mask": [[n, n + 1] for n in range(MAX_SPANS + 1)]}, "mask", [f"<= {MAX_SPANS}"]),
        ({"mask": "10-20"}, "mask", ["array"]),
        ({"channel": 0}, "channel", [">= 1"]),
        ({"channel": 9}, "channel", ["<= 8"]),
        ({"channel": 1.5}, "channel", ["int"]),
        ({"player": "yes"}, "player", ["bool"]),
    ],
)
def test_the_api_refuses_bad_views_naming_the_field(body: dict[str, object], field: str, words: list[str]) -> None:
    with pytest.raises(models.Invalid) as refused:
        models.decode(json.dumps({"path": PATH, **body}).encode(), models.LinkRequest)
    assert refused.value.field == field and str(refused.value).startswith(f"{field}: ")
    for word in words:
        assert word in str(refused.value), str(refused.value)


def test_the_api_takes_views() -> None:
    body = {"path": PATH, "player": True, "channel": 2, "mask": [[10, 20], [50.5, 55]]}
    wanted = models.decode(json.dumps(body).encode(), models.LinkRequest)
    assert (wanted.player, wanted.channel, wanted.mask) == (True, 2, [(10.0, 20.0), (50.5, 55.0)])


# -- CORS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "origin"),
    [
        ("https://CRM.Example.com", "https://crm.example.com"),
        ("https://crm.example.com:443/", "https://crm.example.com"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:80", "http://[::1]"),
        (" * ", "*"),
    ],
)
def test_origins_are_read_as_browsers_send_them(text: str, origin: str) -> None:
    assert parse_origin(text) == origin


@pytest.mark.parametrize(
    "text", ["null", "crm.example.com", "ftp://crm.example.com", "https://crm.example.com/app", "https://u:p@crm.x",
             "https://crm.example.com?x", "https://crm.example.com:99999", "https://"]
)  # fmt: skip
def test_what_is_not_an_origin_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_origin(text)


def test_cors_for_listed_origins_echoes_an_allowed_one_and_always_varies() -> None:
    cors = Cors(["https://crm.example.com", "http://127.0.0.1:8080"])
    allowed = dict(cors.headers(b"https://crm.example.com"))
    assert allowed == {
        b"access-control-allow-origin": b"https://crm.example.com",
        b"access-control-expose-headers": EXPOSED,
        b"vary": b"Origin",
    }
    for name in (b"Content-Range", b"Content-Length", b"Accept-Ranges", b"ETag", b"Content-Disposition"):
        assert name in EXPOSED
    assert b"access-control-allow-credentials" not in allowed  # links are bearer capabilities
    for other in (b"https://evil.example.com", b"https://crm.example.com.evil.com", b"null", None):
        assert cors.headers(other) == [(b"vary", b"Origin")], other  # nothing but the cache's rule
    preflight = cors.preflight({b"origin": b"http://127.0.0.1:8080", b"access-control-request-method": b"GET"})
    assert preflight is not None and preflight[0]["status"] == 204
    answered = dict(preflight[0]["headers"])
    assert answered[b"access-control-allow-methods"] == b"GET, HEAD"
    assert b"Range" in answered[b"access-control-allow-headers"] and int(answered[b"access-control-max-age"]) > 0
    assert cors.preflight({b"origin": b"https://evil.example.com", b"access-control-request-method": b"GET"}) is None
    assert cors.preflight({b"origin": b"https://crm.example.com", b"access-control-request-method": b"PUT"}) is None
    assert cors.preflight({b"origin": b"https://crm.example.com"}) is None  # an OPTIONS, not a preflight


def test_cors_star_is_one_answer_for_every_origin_and_none_is_nothing() -> None:
    star = Cors(["*"])
    for origin in (b"https://anywhere.example", None):
        assert dict(star.headers(origin)) == {
            b"access-control-allow-origin": b"*",
            b"access-control-expose-headers": EXPOSED,
        }
    assert star.preflight({b"origin": b"https://x.example", b"access-control-request-method": b"HEAD"}) is not None
    off = Cors([])
    assert not off.enabled and off.headers(b"https://crm.example.com") == [] and off.headers(None) == []
    assert off.preflight({b"origin": b"https://crm.example.com", b"access-control-request-method": b"GET"}) is None
    with pytest.raises(ValueError):
        Cors(["*", "https://crm.example.com"])


# -- the converter's channels, masks and split peaks ---------------------------------------


def _stereo_wav(path: Path, seconds: float = 2.0, rate: int = 8000) -> list[list[int]]:
    """Left: a loud 440 Hz tone; right: a quiet 1000 Hz one. Returns the samples per channel."""
    left = [int(24000 * math.sin(2 * math.pi * 440 * n / rate)) for n in range(int(seconds * rate))]
    right = [int(6000 * math.sin(2 * math.pi * 1000 * n / rate)) for n in range(int(seconds * rate))]
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(b"".join(struct.pack("<hh", a, b) for a, b in zip(left, right)))
    return [left, right]


def _samples(path: Path) -> tuple[int, list[list[int]]]:
    with wave.open(str(path)) as got:
        channels, frames = got.getnchannels(), got.readframes(got.getnframes())
        values = struct.unpack(f"<{len(frames) // 2}h", frames)
        return got.getframerate(), [list(values[c::channels]) for c in range(channels)]


def test_render_takes_one_channel_and_silences_the_mask_exactly(tmp_path: Path) -> None:
    left, right = _stereo_wav(tmp_path / "call.wav")
    render(str(tmp_path / "call.wav"), str(tmp_path / "right.wav"), "wav", channel=2, mask=((500, 1250),))
    rate, [got] = _samples(tmp_path / "right.wav")
    assert rate == 8000 and len(got) == len(right)
    inside = range(4000, 10000)  # 0.5 s to 1.25 s, in samples
    assert all(got[n] == 0 for n in inside)
    assert all(got[n] == right[n] for n in range(len(right)) if n not in inside)
    render(str(tmp_path / "call.wav"), str(tmp_path / "both.wav"), "wav", mask=((0, 1),))  # 1 ms: 8 samples
    _, both = _samples(tmp_path / "both.wav")
    assert both[0][:8] == [0] * 8 and both[0][8:] == left[8:] and both[1][8:] == right[8:]


def test_split_peaks_have_a_series_per_channel_interleaved(tmp_path: Path) -> None:
    _stereo_wav(tmp_path / "call.wav")
    render(str(tmp_path / "call.wav"), str(tmp_path / "split.json"), "peaks", 20, split=True, mask=((1000, 2000),))
    document = json.loads((tmp_path / "split.json").read_text())
    assert (document["channels"], document["length"], len(document["data"])) == (2, 20, 80)
    pixels = [document["data"][4 * p : 4 * p + 4] for p in range(20)]
    assert pixels[0] == [-94, 93, -24, 23]  # left loud (24000 >> 8), right quiet (6000 >> 8), in that order
    assert all(pixel == [0, 0, 0, 0] for pixel in pixels[10:])  # the masked second half
    mono = {"version": 2, "channels": 1, "sample_rate": 8000, "samples_per_pixel": 4, "bits": 8, "length": 2}
    together = interleaved([{**mono, "data": [1, 2, 3, 4]}, {**mono, "data": [5, 6, 7, 8]}])
    assert together["data"] == [1, 2, 5, 6, 3, 4, 7, 8] and together["channels"] == 2


def test_the_probe_tells_channels_and_the_declared_duration_from_the_head(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(4 * 8000 * 60))  # a minute of stereo: 1.9 MB
    data = buffer.getvalue()
    found = probe(data[: 256 * 1024], False, len(data))
    assert (found.channels, found.duration) == (2, 60.0)


def test_cors_origins_are_a_setting_of_the_environment_and_of_toml(tmp_path: Path) -> None:
    from gateway.config import ConfigError, load_settings

    base = {"GATEWAY_KEY": "00" * 32, "GATEWAY_STORAGE": tmp_path.as_uri()}
    assert load_settings(None, base).edge.cors_origins == ()
    listed = {**base, "GATEWAY_CORS_ORIGINS": "https://CRM.example.com, http://10.0.0.5:8080"}
    assert load_settings(None, listed).edge.cors_origins == ("https://crm.example.com", "http://10.0.0.5:8080")
    config = tmp_path / "gateway.toml"
    config.write_text('[edge]\ncors_origins = ["https://crm.example.com", "https://crm2.example.com:8443"]\n')
    assert load_settings(config, base).edge.cors_origins == ("https://crm.example.com", "https://crm2.example.com:8443")
    for bad in ("*, https://crm.example.com", "https://crm.example.com/app", "null"):
        with pytest.raises(ConfigError) as refused:
            load_settings(None, {**base, "GATEWAY_CORS_ORIGINS": bad})
        assert "GATEWAY_CORS_ORIGINS" in str(refused.value)
