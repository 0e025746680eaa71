"""Views of a recording through a real `storage-gateway serve` (and, for masked links, a real `api`).

Recordings are made here: a stereo call with a 440 Hz tone on the left
(the caller) and a 1000 Hz tone on the right (the agent), in PCM and in IMA
ADPCM; a mono PCM call whose loudness changes every second. Answers are
decoded back with PyAV and measured in pure Python: a channel's frequency
from its zero crossings and the Goertzel power of the other tone; a masked
span's RMS; samples outside the spans compared one by one with the source.

Nothing here asserts how fast anything is.
"""

from __future__ import annotations

import html
import json
import re
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from support.http import Reply, request
from support.keys import new_key
from support.ops import json_lines, metric, scrape
from support.polling import poll
from support.processes import ApiServer, Gateway, api_client_entry, running_api, running_gateway
from support.recordings import decode_channels, rms, tone_power, tone_wav, zero_crossing_hz

RATE = 8000
STEREO = "/calls/stereo.wav"
STEREO_ADPCM = "/calls/stereo-ima.wav"
MONO = "/calls/mono.wav"
CALL = "/calls/call.wav"  # the masked one
CALLER_HZ, AGENT_HZ = 440, 1000
SECONDS = 8
CALL_SECONDS = 20
MASK = [[2, 4.5], [10, 12.25]]
CRM = "http://crm.test:8123"
OTHER = "http://elsewhere.test"
BEARER = "views-e2e-" + "b" * 30


@dataclass
class Library:
    root: Path
    call: list[int]  # the masked call's samples


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Library:
    root = tmp_path_factory.mktemp("views-e2e") / "storage"
    tone_wav(root / STEREO.lstrip("/"), [(CALLER_HZ, 0.7), (AGENT_HZ, 0.3)], SECONDS)
    tone_wav(root / MONO.lstrip("/"), [(CALLER_HZ, 0.5)], SECONDS)
    # ffmpeg re-encodes the stereo PCM call as IMA ADPCM: a codec browsers refuse, converted to play.
    make_adpcm = ["-i", str(root / STEREO.lstrip("/")), "-c:a", "adpcm_ima_wav"]
    _ffmpeg(make_adpcm, root / STEREO_ADPCM.lstrip("/"))
    # The masked call: a tone whose loudness steps every second, so "unchanged outside" is checked sample by sample.
    call = tone_wav(root / CALL.lstrip("/"), [(300, 0.5)], CALL_SECONDS)[0]
    stepped = [int(sample * (0.3 + 0.07 * ((n // RATE) % 10))) for n, sample in enumerate(call)]
    _write_mono(root / CALL.lstrip("/"), stepped)
    return Library(root, stepped)


def _ffmpeg(arguments: list[str], target: Path) -> None:
    import subprocess

    from support.recordings import ffmpeg

    subprocess.run([ffmpeg(), "-nostdin", "-loglevel", "error", "-y", *arguments, str(target)], check=True)


def _write_mono(path: Path, samples: list[int]) -> None:
    import struct

    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(struct.pack(f"<{len(samples)}h", *samples))


@pytest.fixture(scope="module")
def edge(library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    work = tmp_path_factory.mktemp("views-gateway")
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(work / "cache"), "GATEWAY_CORS_ORIGINS": CRM}
    with running_gateway(library.root, [new_key()], work, extra_env=env) as gateway:
        yield gateway


@pytest.fixture(scope="module")
def api(edge: Gateway, library: Library, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    env = {
        "GATEWAY_PUBLIC_URL": edge.base_url,
        "GATEWAY_API_CLIENTS": api_client_entry("crm", BEARER, "/calls/"),
        "GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path_factory.mktemp("views-api-cache")),
    }
    with running_api(library.root, list(edge.keys), tmp_path_factory.mktemp("views-api"), extra_env=env) as server:
        yield server


def get(edge: Gateway, target: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    return request(edge.base_url, target, method=method, headers=headers, timeout=120)


def issue(api: ApiServer, **body: object) -> str:
    """A link from the API; the request target (/<token>?…) it names at the edge."""
    reply = api.post("/v1/links", {"path": CALL, **body}, BEARER)
    assert reply.status == 200, reply.body
    return _target(json.loads(reply.body)["record_url"])


def _target(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


def with_query(target: str, params: dict[str, str]) -> str:
    return target.partition("?")[0] + "?" + urlencode(params, safe=",")


def query_of(target: str) -> dict[str, str]:
    return dict(parse_qsl(target.partition("?")[2], keep_blank_values=True))


# -- channels ------------------------------------------------------------------------


def assert_one_tone(samples: list[int], own: float, other: float) -> None:
    window = samples[RATE : 3 * RATE]  # two seconds from the first: away from any encoder's start
    heard = zero_crossing_hz(window, RATE)
    assert abs(heard - own) < own * 0.01, (heard, own)
    assert tone_power(window, RATE, other) < 1e-4 * tone_power(window, RATE, own), "the other channel's tone leaked"


@pytest.mark.parametrize("path", [STEREO, STEREO_ADPCM])
@pytest.mark.parametrize(("channel", "own", "other"), [(1, CALLER_HZ, AGENT_HZ), (2, AGENT_HZ, CALLER_HZ)])
@pytest.mark.parametrize("query", ["", "&inline=1", "&format=mp3", "&format=opus"])
def test_a_channel_alone_is_exactly_its_own_tone(
    edge: Gateway, path: str, channel: int, own: int, other: int, query: str
) -> None:
    reply = get(edge, edge.target(path) + f"?channel={channel}{query}")
    assert reply.status == 200, reply.body
    rate, channels = decode_channels(reply.body)
    assert len(channels) == 1, "a channel is a mono rendition"
    assert abs(len(channels[0]) / rate - SECONDS) < 0.1
    resampled = channels[0] if rate == RATE else channels[0][:: rate // RATE]  # Opus is 48 kHz
    assert_one_tone(resampled, own, other)


def test_a_channels_answer_names_and_marks_it(edge: Gateway) -> None:
    download = get(edge, edge.target(STEREO) + "?channel=2")
    assert download.header("content-type") == "audio/wav"
    assert download.header("content-disposition") == 'attachment; filename="stereo (channel 2).wav"'
    assert (download.header("etag") or "").endswith('-wav-c2"')
    inline = get(edge, edge.target(STEREO) + "?channel=2&inline=1")
    assert inline.header("content-disposition") == 'inline; filename="stereo (channel 2).wav"'
    assert inline.body == download.body
    mp3 = get(edge, edge.target(STEREO) + "?channel=1&format=mp3")
    assert mp3.header("content-disposition") == 'attachment; filename="stereo (channel 1).mp3"'
    ranged = get(edge, edge.target(STEREO) + "?channel=2", {"Range": "bytes=44-1043"})
    assert ranged.status == 206 and ranged.body == download.body[44:1044]


@pytest.mark.parametrize(
    ("path", "query"),
    [(STEREO, "?channel=3"), (MONO, "?channel=2"), (MONO, "?channel=2&player=1"), (STEREO, "?channel=3&peaks=1")],
)
def test_a_channel_the_recording_lacks_is_400(edge: Gateway, path: str, query: str) -> None:
    reply = get(edge, edge.target(path) + query)
    assert reply.status == 400
    assert b"channel" in reply.body and b"the recording has" in reply.body


def test_split_peaks_are_one_series_per_channel_interleaved(edge: Gateway) -> None:
    split = get(edge, edge.target(STEREO) + "?peaks=1&split=1&pixels=100")
    assert split.status == 200 and split.header("content-type") == "application/json"
    document = json.loads(split.body)
    assert (document["version"], document["channels"], document["bits"], document["length"]) == (2, 2, 8, 100)
    data = document["data"]
    assert len(data) == 100 * 2 * 2
    caller = [max(data[4 * p + 1] for p in range(100)), min(data[4 * p] for p in range(100))]
    agent = [max(data[4 * p + 3] for p in range(100)), min(data[4 * p + 2] for p in range(100))]
    assert caller == [int(32767 * 0.7) >> 8, -(int(32767 * 0.7) >> 8) - 1]  # left first: the loud caller
    assert agent == [int(32767 * 0.3) >> 8, -(int(32767 * 0.3) >> 8) - 1]
    mono = json.loads(get(edge, edge.target(MONO) + "?peaks=1&split=1&pixels=100").body)
    assert mono["channels"] == 1 and len(mono["data"]) == 200
    assert (split.header("etag") or "").endswith('-peaks8-100-split"')


# -- masks ----------------------------------------------------------------------------


def spans_in_samples(mask: list[list[float]]) -> list[range]:
    return [range(int(start * RATE), int(end * RATE)) for start, end in mask]


def assert_masked(samples: list[int], source: list[int], mask: list[list[float]], exact: bool = True) -> None:
    """The same duration, silent inside every span, and outside identical to the source (`exact`, PCM) or,
    for a lossy encoding, as loud; away from the spans' edges, where an encoder's frames straddle them."""
    spans = spans_in_samples(mask)
    if exact:
        assert len(samples) == len(source)
        masked = {n for span in spans for n in span}
        assert all(samples[n] == 0 for n in masked)
        assert [n for n in range(len(source)) if n not in masked and samples[n] != source[n]] == []
        return
    assert abs(len(samples) - len(source)) < RATE // 10
    edge = RATE // 10
    for span in spans:
        inside = slice(span.start + edge, span.stop - edge)
        assert rms(samples[inside]) < 0.01 * rms(source[inside]), (span, rms(samples[inside]))
    for start, stop in ((0, spans[0].start - edge), (spans[0].stop + edge, spans[1].start - edge)):
        ratio = rms(samples[start:stop]) / rms(source[start:stop])
        assert 0.8 < ratio < 1.2, (start, stop, ratio)


def test_a_masked_link_is_silent_inside_its_spans_and_unchanged_outside(
    edge: Gateway, api: ApiServer, library: Library
) -> None:
    target = issue(api, mask=MASK)
    assert "mask=2-4.5,10-12.25" in target and "sig=" in target
    reply = get(edge, target)
    assert reply.status == 200 and reply.header("content-type") == "audio/wav"
    assert reply.header("content-disposition") == 'attachment; filename="call.wav"'
    rate, [samples] = decode_channels(reply.body)
    assert rate == RATE
    assert_masked(samples, library.call, MASK)
    inline = get(edge, issue(api, mask=MASK, inline=True))
    assert inline.header("content-disposition") == 'inline; filename="call.wav"'
    assert inline.body == reply.body and inline.header("etag") == reply.header("etag")
    # A range inside a span is silence, not the original's bytes there.
    start = 44 + 2 * int(2.5 * RATE)
    ranged = get(edge, target, {"Range": f"bytes={start}-{start + 999}"})
    assert ranged.status == 206 and ranged.body == bytes(1000)


def test_every_view_of_the_masked_page_is_masked(edge: Gateway, api: ApiServer, library: Library) -> None:
    page = get(edge, issue(api, mask=MASK, player=True))
    assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
    links = page_links(page.body.decode())
    assert set(links) == {"audio", "peaks", "download", "mp3"}  # mono: no split peaks
    for name, link in links.items():
        assert query_of(link)["mask"] == "2-4.5,10-12.25" and "sig" in query_of(link), name
    for name in ("audio", "download"):
        _, [samples] = decode_channels(get(edge, links[name]).body)
        assert_masked(samples, library.call, MASK)
    mp3 = get(edge, links["mp3"])
    assert mp3.header("content-type") == "audio/mpeg"
    _, [samples] = decode_channels(mp3.body)
    assert_masked(samples, library.call, MASK, exact=False)
    peaks = json.loads(get(edge, links["peaks"]).body)
    per_pixel = peaks["samples_per_pixel"]
    for span in spans_in_samples(MASK):
        inside = range(-(-span.start // per_pixel), span.stop // per_pixel)
        assert inside and all(peaks["data"][2 * p : 2 * p + 2] == [0, 0] for p in inside), span
    loud = [peaks["data"][2 * p + 1] for p in range(2 * RATE // per_pixel)]
    assert min(loud) > 10  # outside, the call is there


def page_links(page: str) -> dict[str, str]:
    """The targets (/<token>?…) of the page's audio, peaks, split peaks and downloads."""
    found = {
        "audio": re.search(r'<audio class="audio" src="([^"]+)"', page),
        "peaks": re.search(r'data-peaks-url="([^"]+)"', page),
        "split": re.search(r'data-split-peaks-url="([^"]+)"', page),
    }
    links = {name: "/" + html.unescape(match[1]) for name, match in found.items() if match}
    downloads = re.findall(r'<a class="btn" href="([^"]+)" download>', page)
    links["download"], links["mp3"] = ("/" + html.unescape(link) for link in downloads)
    return links


def test_every_way_from_a_masked_link_to_the_original_is_refused(edge: Gateway, api: ApiServer) -> None:
    target = issue(api, mask=MASK, expires_in=3600, player=True)
    token = target.partition("?")[0]
    given = query_of(target)
    assert get(edge, target).status == 200
    without = {name: {k: v for k, v in given.items() if k != name} for name in ("mask", "sig", "exp", "player")}
    refused = {
        "mask dropped": (with_query(target, without["mask"]), 403),
        "mask altered": (with_query(target, {**given, "mask": "2-4.4,10-12.25"}), 403),
        "a span dropped": (with_query(target, {**given, "mask": "10-12.25"}), 403),
        "sig dropped": (with_query(target, without["sig"]), 403),
        "exp dropped": (with_query(target, without["exp"]), 403),
        "exp extended": (with_query(target, {**given, "exp": str(int(given["exp"]) + 1)}), 403),
        "player dropped": (with_query(target, without["player"]), 403),
        "sig and mask dropped": (with_query(target, {k: v for k, v in without["sig"].items() if k != "mask"}), 404),
        "the bare token": (token, 404),
        "another signature": (with_query(target, {**given, "sig": "A" * 43}), 403),
    }
    for name, value in (("format", "mp3"), ("format", "wav"), ("inline", "1"), ("channel", "1"), ("peaks", "1"),
                        ("split", "1"), ("filename", "x.wav"), ("pixels", "10")):  # fmt: skip
        refused[f"{name}={value} added"] = (with_query(target, {**given, name: value}), 403)
    answers = {name: get(edge, wanted).status for name, (wanted, _) in refused.items()}
    assert answers == {name: status for name, (_, status) in refused.items()}
    # An unsigned link cannot ask for a mask, on the legacy token or the masked one.
    assert get(edge, edge.target(CALL) + "?mask=2-4.5").status == 403
    assert get(edge, token + "?mask=2-4.5,10-12.25").status == 403


def test_masked_renditions_are_cached_per_mask_and_never_served_for_another(
    edge: Gateway, api: ApiServer, library: Library
) -> None:
    first = get(edge, issue(api, mask=MASK))
    other_mask = [[5, 6]]
    other = get(edge, issue(api, mask=other_mask))
    again = get(edge, issue(api, mask=[[10, 12.25], [2, 4.5]]))  # the same mask, in another order
    assert first.header("etag") != other.header("etag") and first.body != other.body
    assert again.header("etag") == first.header("etag") and again.body == first.body
    _, [samples] = decode_channels(other.body)
    assert_masked(samples, library.call, other_mask)
    plain = get(edge, edge.target(CALL) + "?format=wav")
    assert plain.header("etag") not in (first.header("etag"), other.header("etag"))


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mask": [[2, 1]]}, "mask"),
        ({"mask": [[1, 2]] * 101}, "mask"),
        ({"mask": [[10, CALL_SECONDS + 1]]}, "mask"),  # past the end of the recording
        ({"channel": 2}, "channel"),  # the call is mono
    ],
)
def test_the_api_refuses_a_mask_or_channel_that_does_not_fit_naming_the_field(
    api: ApiServer, body: dict[str, object], field: str
) -> None:
    reply = api.post("/v1/links", {"path": CALL, **body}, BEARER)
    assert reply.status == 400, reply.body
    error = json.loads(reply.body)["error"]
    assert error["field"] == field and error["message"].startswith(f"{field}: ")
    batch = api.post("/v1/links/batch", {"links": [{"path": CALL, **body}, {"path": CALL, "mask": MASK}]}, BEARER)
    results = json.loads(batch.body)["results"]
    assert results[0]["error"]["field"] == field and "record_url" in results[1]


def test_the_inspector_reports_masked_links_as_the_edge_answers_them(edge: Gateway, api: ApiServer) -> None:
    target = issue(api, mask=MASK, player=True)
    links = [edge.base_url + target, edge.base_url + with_query(target, {**query_of(target), "mask": "1-2"})]
    reply = api.post("/v1/links/check", {"links": links}, BEARER)
    reports = json.loads(reply.body)["results"]
    assert [(r["path"], r["status"]) for r in reports] == [(CALL, 200), (CALL, 403)]
    assert [get(edge, _target(link)).status for link in links] == [200, 403]
    # Without its mask the token names nothing: the inspector says so as for garbage, the edge answers 404.
    bare = edge.base_url + target.partition("?")[0]
    report = json.loads(api.post("/v1/links/resolve", {"link": bare}, BEARER).body)
    assert report["error"]["message"] == "link: not a link this gateway opens"
    assert get(edge, _target(bare)).status == 404


# -- the page ----------------------------------------------------------------------------


def test_the_page_of_a_stereo_call(edge: Gateway) -> None:
    target = edge.target(STEREO) + "?player=1"
    page = get(edge, target)
    assert page.status == 200 and page.header("content-type") == "text/html; charset=utf-8"
    assert page.header("cache-control") == "no-store"
    policy = page.header("content-security-policy") or ""
    assert "script-src 'self'" in policy and f"frame-ancestors {CRM}" in policy and "sandbox" not in policy
    text = page.body.decode()
    assert '<h1 class="name">stereo.wav</h1>' in text and 'Duration <span data-role="total">0:08</span>' in text
    assert 'data-channels="2"' in text and "Mute Caller" in text
    links = page_links(text)
    token = edge.token(STEREO)
    assert links == {
        "audio": f"/{token}?inline=1", "peaks": f"/{token}?peaks=1", "split": f"/{token}?peaks=1&split=1",
        "download": f"/{token}", "mp3": f"/{token}?format=mp3",
    }  # fmt: skip
    for link in links.values():
        assert get(edge, link).status == 200, link
    head = get(edge, target, method="HEAD")
    assert head.status == 200 and head.body == b"" and head.header("content-length") == str(len(page.body))


def test_the_page_of_one_channel_plays_that_channel(edge: Gateway) -> None:
    page = get(edge, edge.target(STEREO_ADPCM) + "?player=1&channel=2").body.decode()
    assert "stereo-ima (channel 2).wav" in page and "Download WAV" in page and 'data-channels="1"' in page
    links = page_links(page)
    assert "split" not in links and all("channel=2" in link for link in links.values())
    _, channels = decode_channels(get(edge, links["audio"]).body)
    assert len(channels) == 1
    assert_one_tone(channels[0], AGENT_HZ, CALLER_HZ)


def test_the_pages_files_are_a_fixed_table(edge: Gateway) -> None:
    page = get(edge, edge.target(MONO) + "?player=1").body.decode()
    for name in re.findall(r'"_player/([a-z.]+)\?v=[0-9a-f]+"', page):
        served = get(edge, f"/_player/{name}")
        assert served.status == 200 and served.header("cache-control") == "public, max-age=31536000, immutable"
        assert served.header("x-content-type-options") == "nosniff"
    for wrong in ("/_player/", "/_player/nope.js", "/_player/../player.js", "/_player/static/player.js",
                  "/_player/player.js/", "/_player/__init__.py"):  # fmt: skip
        assert get(edge, wrong).status == 404, wrong
    assert get(edge, "/_player/player.js", method="POST").status == 405


def test_views_are_counted_and_logged(edge: Gateway) -> None:
    before = scrape(edge.base_url)
    offset = edge.log_mark()
    for query in ("?player=1&channel=1", "?peaks=1&split=1"):
        assert get(edge, edge.target(STEREO) + query).status == 200
    after = scrape(edge.base_url)
    for view, count in (("player", 1), ("channel", 1), ("split", 1)):
        grown = metric(after, "gateway_views_total", view=view) - metric(before, "gateway_views_total", view=view)
        assert grown == count, view
    logged = poll(
        lambda: [line["view"] for line in access_lines(edge.log_since(offset)) if "view" in line],
        lambda views: len(views) >= 2,
    )
    assert logged == ["player,channel", "split"]


# -- CORS ---------------------------------------------------------------------------------


def cors_headers(reply: Reply) -> dict[str, str]:
    return {name.lower(): value for name, value in reply.headers.items() if name.lower().startswith("access-control")}


def test_cors_for_an_allowed_origin_on_every_answer(edge: Gateway) -> None:
    origin = {"Origin": CRM}
    target = edge.target(STEREO)
    answers = {
        "range": get(edge, target, {**origin, "Range": "bytes=0-99"}),
        "peaks": get(edge, target + "?peaks=1", origin),
        "page": get(edge, target + "?player=1", origin),
        "channel": get(edge, target + "?channel=1", origin),
        "refused": get(edge, "/" + "A" * 22, origin),
        "bad view": get(edge, target + "?channel=9", origin),
    }
    etag = answers["range"].header("etag") or ""
    answers["not modified"] = get(edge, target, {**origin, "If-None-Match": etag})
    assert answers["range"].status == 206 and answers["not modified"].status == 304
    for name, reply in answers.items():
        headers = cors_headers(reply)
        assert headers["access-control-allow-origin"] == CRM, name
        exposed = {item.strip() for item in headers["access-control-expose-headers"].split(",")}
        assert {"Content-Range", "Content-Length", "Accept-Ranges", "ETag", "Content-Disposition"} <= exposed
        assert "access-control-allow-credentials" not in headers
        assert reply.header("vary") == "Origin", name


def test_no_cors_for_other_origins_and_preflights_only_for_allowed_ones(edge: Gateway) -> None:
    target = edge.target(STEREO)
    for headers in ({"Origin": OTHER}, {"Origin": "null"}, {"Origin": CRM + ".evil"}, {}):
        reply = get(edge, target, headers)
        assert reply.status == 200 and cors_headers(reply) == {}, headers
        assert reply.header("vary") == "Origin"  # caches keep origins apart
    asked = {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "range"}
    preflight = get(edge, target + "?peaks=1", {"Origin": CRM, **asked}, method="OPTIONS")
    assert preflight.status == 204 and preflight.body == b""
    headers = cors_headers(preflight)
    assert headers["access-control-allow-origin"] == CRM
    assert headers["access-control-allow-methods"] == "GET, HEAD"
    assert "range" in headers["access-control-allow-headers"].lower()
    assert int(headers["access-control-max-age"]) > 0
    refused = get(edge, target, {"Origin": OTHER, **asked}, method="OPTIONS")
    assert refused.status == 405 and cors_headers(refused) == {}
    assert get(edge, target, {"Origin": CRM, "Access-Control-Request-Method": "DELETE"}, method="OPTIONS").status == 405


@pytest.mark.parametrize("origins", ["", "*"])
def test_cors_off_by_default_and_star_for_any_origin(library: Library, tmp_path: Path, origins: str) -> None:
    env = {"GATEWAY_TRANSCODE_CACHE_DIR": str(tmp_path / "cache")}
    if origins:
        env["GATEWAY_CORS_ORIGINS"] = origins
    with running_gateway(library.root, [new_key()], tmp_path, extra_env=env) as gateway:
        target = gateway.target(STEREO)
        with_origin = get(gateway, target + "?peaks=1", {"Origin": OTHER})
        without = get(gateway, target)
        preflight = get(gateway, target, {"Origin": OTHER, "Access-Control-Request-Method": "GET"}, method="OPTIONS")
        page = get(gateway, target + "?player=1").header("content-security-policy") or ""
    if not origins:
        assert cors_headers(with_origin) == {} and with_origin.header("vary") is None
        assert cors_headers(without) == {} and preflight.status == 405
        assert "frame-ancestors 'none'" in page
    else:
        for reply in (with_origin, without):
            assert cors_headers(reply)["access-control-allow-origin"] == "*" and reply.header("vary") is None
        assert preflight.status == 204 and "frame-ancestors *" in page


def access_lines(text: str) -> list[dict[str, object]]:
    """The JSON access lines of a log that holds the process's other output too."""
    return json_lines("\n".join(line for line in text.splitlines() if line.startswith("{")))
