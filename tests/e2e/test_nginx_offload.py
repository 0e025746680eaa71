"""`nginx.conf.example`, run as is by a real nginx, in front of real gateways.

The example's placeholder values (ports, upstream, recordings directory,
certificate, pid and log paths, `user`) are replaced by text substitution;
nothing else changes, apart from `daemon off;` (the test owns the process)
and the temporary-file paths nginx would otherwise create under
/var/lib/nginx. The same configuration runs twice:

* offload mode: in front of a gateway whose storage has `accel_redirect`,
  so nginx sends the files from its `internal` location;
* proxy mode: in front of a gateway that streams the files itself.

Through either, a client must get what the gateway answers directly: the
same bytes, statuses, ranges, validators (the gateway uses nginx's ETag
format) and headers, and the same plain 404 for bad links.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import os
import secrets
import ssl
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import formatdate
from pathlib import Path
from urllib.parse import quote

import pytest
from support.http import HOST, Reply, parse_byteranges, request
from support.keys import new_key
from support.ops import json_lines, scrape
from support.polling import poll
from support.processes import Gateway, Nginx, free_port, nginx_binary, running_gateway, running_nginx
from support.storage import P8M, P64K, PCYR, PSPECIAL, Storage

EXAMPLE = Path(__file__).resolve().parents[2] / "nginx.conf.example"
CRM = "https://crm.example.com"  # the gateways' CORS origin: nginx passes their decision on in both modes
CORS_HEADERS = ("Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Vary")
MODES = ("offload", "proxy")


@dataclass(frozen=True)
class Ports:
    http: int  # the example's `listen 80`
    https: int  # `listen 443 ssl`
    ops: int  # the internal metrics listener, `listen 9145`


def render(
    example: str, prefix: Path, ports: Ports, gateway_port: int, metrics_port: int, root: Path, tls: Path
) -> str:
    """The example with its placeholder values replaced; each must occur exactly as many times as expected."""
    user = "user root;" if os.geteuid() == 0 else ""
    temp = "".join(
        f"    {kind}_temp_path {prefix}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    substitutions: list[tuple[str, str, int]] = [
        ("user www-data;", user, 1),
        ("pid /run/nginx.pid;", f"pid {prefix}/nginx.pid;", 1),
        ("error_log /var/log/nginx/error.log warn;", f"error_log {prefix}/error.log warn;", 1),
        ("/var/log/nginx/storage-gateway.access.log", f"{prefix}/access.log", 1),
        ("listen 80;", f"listen {HOST}:{ports.http};", 1),
        ("listen 443 ssl http2;", f"listen {HOST}:{ports.https} ssl http2;", 1),
        ("listen 9145;", f"listen {HOST}:{ports.ops};", 1),
        ("server 127.0.0.1:8080;", f"server {HOST}:{gateway_port};", 1),
        ("proxy_pass http://127.0.0.1:9100;", f"proxy_pass http://{HOST}:{metrics_port};", 1),
        ("alias /var/lib/recordings/;", f"alias {root}/;", 1),
        ("/etc/ssl/storage-gateway/fullchain.pem", str(tls / "fullchain.pem"), 1),
        ("/etc/ssl/storage-gateway/privkey.pem", str(tls / "privkey.pem"), 1),
        ("http {\n", "http {\n" + temp, 1),
    ]
    text = example
    for old, new, count in substitutions:
        assert text.count(old) == count, f"nginx.conf.example: expected {old!r} {count} time(s)"
        text = text.replace(old, new)
    # In the foreground, so the test owns the process (a service manager starts it daemonized).
    return "daemon off;\n" + text


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-days", "1",
            "-keyout", str(directory / "privkey.pem"), "-out", str(directory / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return directory


@dataclass
class Site:
    """One nginx running the example in front of one gateway."""

    mode: str
    nginx: Nginx
    ports: Ports
    gateway: Gateway

    @property
    def prefix(self) -> Path:
        return self.nginx.prefix


@functools.cache
def tls_context() -> ssl.SSLContext:
    """Made once: loading the system CAs costs more than a request. The test certificate is self-signed."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def tls_request(
    port: int,
    target: str,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> Reply:
    """One request over TLS to the example's HTTPS server (self-signed: no verification).

    Sent from its own loopback address unless `source` is given: the example
    limits the request rate per client address, and the comparisons here
    must not run into that limit (test_rate_limit_per_client_address does).
    """
    conn = http.client.HTTPSConnection(
        HOST, port, context=tls_context(), timeout=30, source_address=(source or fresh_address(), 0)
    )
    try:
        conn.request(method, target, headers={"Host": "storage.example.com", **(headers or {})})
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def fresh_address() -> str:
    """A random loopback address (all of 127/8 is local on Linux), never 127.0.0.1 (the trusted proxy)."""
    return "127." + ".".join(str(b) for b in secrets.token_bytes(2)) + f".{2 + secrets.randbelow(250)}"


@pytest.fixture(scope="module")
def example() -> str:
    nginx_binary()  # a clear error when nginx is missing
    return EXAMPLE.read_text()


@pytest.fixture(scope="module")
def gateways(storage: Storage, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Gateway]]:
    """The same key and files: one gateway hands files to nginx, the other streams them."""
    key = new_key()
    root = storage.root.resolve()
    common = {"GATEWAY_TRUSTED_PROXIES": HOST, "GATEWAY_CORS_ORIGINS": CRM}
    with (
        running_gateway(
            root,
            [key],
            tmp_path_factory.mktemp("gateway-offload"),
            storage_url=f"file://{quote(str(root))}?accel_redirect=/_recordings/",
            extra_env=common,
            extra_args=["--metrics-port", str(free_port())],
            split_stderr=True,
        ) as offload,
        running_gateway(
            root,
            [key],
            tmp_path_factory.mktemp("gateway-proxy"),
            extra_env=common,
            extra_args=["--metrics-port", str(free_port())],
            split_stderr=True,
        ) as proxy,
    ):
        yield {"offload": offload, "proxy": proxy}


def metrics_port(gateway: Gateway) -> int:
    args = gateway.process.args
    assert isinstance(args, list)
    return int(args[args.index("--metrics-port") + 1])


@contextlib.contextmanager
def running_site(
    example: str, mode: str, gateway: Gateway, storage: Storage, prefix: Path, tls: Path
) -> Iterator[Site]:
    """nginx with the example in front of `gateway`; start_nginx picks the port of the internal listener."""
    http_port, https_port = free_port(), free_port()
    chosen: list[Ports] = []

    def config(nginx_prefix: Path, ops_port: int) -> str:
        chosen.append(Ports(http_port, https_port, ops_port))
        gateway_port = int(gateway.base_url.rpartition(":")[2])
        return render(
            example, nginx_prefix, chosen[-1], gateway_port, metrics_port(gateway), storage.root.resolve(), tls
        )

    # Ready when the internal listener passes /metrics on to the gateway.
    with running_nginx(storage.root, prefix, config=config, probe="/metrics") as nginx:
        yield Site(mode, nginx, chosen[-1], gateway)


@pytest.fixture(scope="module")
def sites(
    example: str, gateways: dict[str, Gateway], storage: Storage, tls: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Site]]:
    with (
        running_site(
            example, "offload", gateways["offload"], storage, tmp_path_factory.mktemp("nginx-offload"), tls
        ) as offload,
        running_site(
            example, "proxy", gateways["proxy"], storage, tmp_path_factory.mktemp("nginx-proxy"), tls
        ) as proxy,
    ):
        yield {"offload": offload, "proxy": proxy}


def streaming(sites: dict[str, Site]) -> Gateway:
    """The reference: the gateway that streams files itself (both gateways share the key)."""
    return sites["proxy"].gateway


def etag_of(storage: Storage, path: str) -> str:
    info = storage.file(path).stat()
    return f'"{int(info.st_mtime):x}-{info.st_size:x}"'


def date_of(storage: Storage, path: str) -> str:
    return formatdate(int(storage.file(path).stat().st_mtime), usegmt=True)


# (id, storage path, method, headers from the storage, query)
Case = tuple[str, str, str, Callable[[Storage], dict[str, str]], str]
CASES: list[Case] = [
    ("whole", P64K, "GET", lambda s: {}, ""),
    ("whole-8m", P8M, "GET", lambda s: {}, ""),
    ("cyrillic-name", PCYR, "GET", lambda s: {}, ""),
    ("odd-name", PSPECIAL, "GET", lambda s: {}, ""),
    ("inline", PCYR, "GET", lambda s: {}, "?inline=1"),
    ("head", P64K, "HEAD", lambda s: {}, ""),
    ("head-8m", P8M, "HEAD", lambda s: {}, ""),
    ("range", P8M, "GET", lambda s: {"Range": "bytes=100-199"}, ""),
    ("open-range", P64K, "GET", lambda s: {"Range": "bytes=1000-"}, ""),
    ("suffix-range", P64K, "GET", lambda s: {"Range": "bytes=-100"}, ""),
    ("multi-range", P8M, "GET", lambda s: {"Range": "bytes=0-1,5-9,4000000-4000099"}, ""),
    ("not-satisfiable", P64K, "GET", lambda s: {"Range": "bytes=99999999-"}, ""),
    ("if-none-match", P64K, "GET", lambda s: {"If-None-Match": etag_of(s, P64K)}, ""),
    ("if-none-match-head", PCYR, "HEAD", lambda s: {"If-None-Match": etag_of(s, PCYR)}, ""),
    ("if-none-match-other", P64K, "GET", lambda s: {"If-None-Match": '"0-0"'}, ""),
    ("if-modified-since", P64K, "GET", lambda s: {"If-Modified-Since": date_of(s, P64K)}, ""),
    ("if-range", P64K, "GET", lambda s: {"If-Range": etag_of(s, P64K), "Range": "bytes=0-9"}, ""),
    ("cors-range", P8M, "GET", lambda s: {"Origin": CRM, "Range": "bytes=100-199"}, ""),
    ("cors-other-origin", P64K, "GET", lambda s: {"Origin": "https://elsewhere.example.com"}, ""),
    ("cors-if-none-match", P64K, "GET", lambda s: {"Origin": CRM, "If-None-Match": etag_of(s, P64K)}, ""),
]


def compare(direct: Reply, through: Reply) -> None:
    """What a client of nginx gets must be what the gateway answers on its own."""
    assert through.status == direct.status
    if direct.status == 416:
        # nginx's own error page (carrying the file's Cache-Control in offload mode, where the
        # gateway's own 416 says no-store): the protocol field must agree.
        assert through.header("Content-Range") == direct.header("Content-Range")
        return
    for name in ("ETag", "Last-Modified", "Cache-Control", "Content-Range", *CORS_HEADERS):
        assert (name, through.header(name)) == (name, direct.header(name))
    if direct.status == 304:
        assert through.body == direct.body == b""
        return
    assert through.headers.get_all("X-Content-Type-Options") == ["nosniff"]
    assert through.header("Content-Disposition") == direct.header("Content-Disposition")
    content_type = direct.header("Content-Type") or ""
    if content_type.startswith("multipart/byteranges"):
        # Boundaries differ; the parts (range, type, bytes) must not.
        assert (through.header("Content-Type") or "").startswith("multipart/byteranges; boundary=")
        assert parse_byteranges(through.header("Content-Type") or "", through.body) == parse_byteranges(
            content_type, direct.body
        )
        assert int(through.header("Content-Length") or -1) == len(through.body)
        return
    assert through.header("Content-Type") == content_type
    assert through.header("Content-Length") == direct.header("Content-Length")
    assert through.body == direct.body


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("name", "path", "method", "headers", "query"), CASES, ids=[case[0] for case in CASES])
def test_through_nginx_as_the_gateway_answers(
    sites: dict[str, Site],
    storage: Storage,
    mode: str,
    name: str,
    path: str,
    method: str,
    headers: Callable[[Storage], dict[str, str]],
    query: str,
) -> None:
    site, reference = sites[mode], streaming(sites)
    target = site.gateway.target(path) + query
    sent = headers(storage)
    direct = request(reference.base_url, target, method, sent)
    through = tls_request(site.ports.https, target, method, sent)
    compare(direct, through)
    if direct.status == 200 and method == "GET":
        assert through.body == storage.data(path)
    if path == PCYR and direct.status == 200:
        # RFC 6266 with the UTF-8 name (the test of the name itself is the gateway's own).
        assert "filename*=UTF-8''%D0%B7%D0%B2%D0%BE%D0%BD%D0%BE%D0%BA" in (through.header("Content-Disposition") or "")


def test_cases_cover_every_kind_of_answer(sites: dict[str, Site], storage: Storage) -> None:
    site = sites["offload"]
    seen = set()
    for _, path, method, headers, query in CASES:
        reply = tls_request(site.ports.https, site.gateway.target(path) + query, method, headers(storage))
        seen.add((reply.status, (reply.header("Content-Type") or "").startswith("multipart/")))
    assert {(200, False), (206, False), (206, True), (304, False), (416, False)} <= seen


@pytest.mark.parametrize("mode", MODES)
def test_offload_mode_is_really_offloaded(sites: dict[str, Site], mode: str) -> None:
    """In offload mode nginx sends the bytes (the gateway's body counter does not move); in proxy mode the gateway does."""
    site = sites[mode]
    metrics = f"http://{HOST}:{metrics_port(site.gateway)}"

    def body_bytes() -> float:
        return sum(v for (name, _), v in scrape(metrics).items() if name == "gateway_response_bytes_total")

    def requests() -> float:
        return sum(v for (name, _), v in scrape(metrics).items() if name == "gateway_requests_total")

    bytes_before, requests_before = body_bytes(), requests()
    reply = tls_request(site.ports.https, site.gateway.target(P8M))
    assert reply.status == 200 and len(reply.body) == 8 * 1024 * 1024
    poll(requests, lambda total: total == requests_before + 1)
    sent_by_gateway = body_bytes() - bytes_before
    assert sent_by_gateway == (0 if mode == "offload" else len(reply.body))


BAD_LINKS: dict[str, Callable[[Gateway], str]] = {
    "decode": lambda g: "/" + "C" * 30 + "!",
    "not-found": lambda g: g.target("/ops-nginx/missing.mp3"),
    "climb": lambda g: g.target("/../outside/secret"),
    "directory": lambda g: g.target("/types"),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("kind", sorted(BAD_LINKS))
def test_bad_links_get_the_gateways_plain_404(sites: dict[str, Site], mode: str, kind: str) -> None:
    site = sites[mode]
    target = BAD_LINKS[kind](site.gateway)
    direct = request(streaming(sites).base_url, target)
    through = tls_request(site.ports.https, target)
    assert direct.status == through.status == 404
    assert through.body == direct.body == b"Not Found\n"
    assert through.header("Content-Type") == direct.header("Content-Type")


@pytest.mark.parametrize("mode", MODES)
def test_internal_location_is_not_reachable_from_outside(sites: dict[str, Site], storage: Storage, mode: str) -> None:
    reply = tls_request(sites[mode].ports.https, "/_recordings/" + quote(P64K.lstrip("/")))
    assert reply.status == 404
    assert storage.data(P64K)[:64] not in reply.body


def test_plain_http_redirects_to_https(sites: dict[str, Site]) -> None:
    site = sites["offload"]
    target = site.gateway.target(P64K)
    reply = request(f"http://{HOST}:{site.ports.http}", target, headers={"Host": "storage.example.com"})
    assert reply.status == 301
    assert reply.header("Location") == "https://storage.example.com" + target


def test_metrics_only_on_the_internal_listener(sites: dict[str, Site]) -> None:
    site = sites["offload"]
    public = tls_request(site.ports.https, "/metrics")
    assert public.status == 404 and b"gateway_" not in public.body
    assert "gateway_active_streams" in {name for name, _ in scrape(f"http://{HOST}:{site.ports.ops}")}
    ops = f"http://{HOST}:{site.ports.ops}"
    assert request(ops, "/readyz").status == 200  # probes too, for monitoring
    assert request(ops, "/" + site.gateway.token(P64K)).status == 404  # but no links


@pytest.mark.parametrize(
    ("forwarded_for", "client"),
    [(None, "127.0.0.2"), ("203.0.113.7", "127.0.0.2")],  # a client's own X-Forwarded-For proves nothing
)
def test_gateway_logs_the_client_nginx_saw(sites: dict[str, Site], forwarded_for: str | None, client: str) -> None:
    """nginx appends the peer to X-Forwarded-For; the gateway trusts nginx (127.0.0.1) and takes that address."""
    site = sites["offload"]
    agent = "ops-nginx/" + secrets.token_hex(8)
    headers = {"User-Agent": agent, **({"X-Forwarded-For": forwarded_for} if forwarded_for else {})}
    assert tls_request(site.ports.https, site.gateway.target(P64K), "HEAD", headers, source="127.0.0.2").status == 200
    lines = poll(
        lambda: [line for line in json_lines(site.gateway.log.read_text()) if line.get("user_agent") == agent],
        lambda found: len(found) == 1,
    )
    assert [line["client"] for line in lines] == [client]


def test_nginx_logs_hold_no_full_token_and_no_path(sites: dict[str, Site], storage: Storage) -> None:
    site = sites["offload"]
    missing = site.gateway.token(f"/ops-nginx/{secrets.token_hex(8)}.mp3")
    served = site.gateway.token(PCYR)
    assert tls_request(site.ports.https, "/" + missing).status == 404
    assert tls_request(site.ports.https, "/" + served, headers={"Range": "bytes=0-9"}).status == 206
    access = site.prefix / "access.log"
    lines = poll(
        lambda: json_lines(access.read_text()) if access.exists() else [],
        lambda found: {missing[:8], served[:8]} <= {line["token"] for line in found},
    )
    assert {missing[:8], served[:8]} <= {line["token"] for line in lines}
    everything = access.read_text() + (site.prefix / "error.log").read_text()
    assert missing not in everything and served not in everything
    assert "_recordings" not in everything and quote(PCYR.lstrip("/")) not in everything
    assert "звонок" not in everything


def test_rate_limit_per_client_address(
    example: str, gateways: dict[str, Gateway], storage: Storage, tls: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """`limit_req` (10 r/s, burst 20, nodelay): a quick run of requests from one address meets 429."""
    with running_site(
        example, "proxy", gateways["proxy"], storage, tmp_path_factory.mktemp("nginx-limited"), tls
    ) as site:
        address = fresh_address()
        conn = http.client.HTTPSConnection(
            HOST, site.ports.https, context=tls_context(), timeout=30, source_address=(address, 0)
        )
        statuses = []
        try:
            for _ in range(60):
                conn.request("GET", "/" + "D" * 30 + "!")
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
        finally:
            conn.close()
        assert statuses[:21] == [404] * 21  # the first request and the burst of 20 pass at once
        assert 429 in statuses
        # Another address has its own allowance.
        assert tls_request(site.ports.https, "/" + "D" * 30 + "!").status == 404
