"""nginx.conf.example read as data, so that a bench runs the example's own settings rather than a copy of them.

An operator deploys `nginx.conf.example` nearly as it is. A bench that
wrote its own `proxy_*` lines would measure what its author remembered of
the example, and drift from it as the example changes. Here the example is
parsed (a small tokenizer for nginx's syntax: words, quoted strings,
comments, `;` and blocks) and the parts a bench needs are taken from it:

* the `events` block and the http-level directives (sendfile, its chunk,
  tcp_nopush/tcp_nodelay, timeouts, the JSON `log_format` and its `map`),
  minus `access_log` (the bench says where each server logs, or that it
  does not) and the rate-limit zones;
* the `upstream` block (keep-alive connections to the gateway), renamed
  per gateway and pointed at its port;
* the HTTPS server's locations (`location /` with every proxy setting, the
  `internal` offload location, `/metrics`), served on plain HTTP: the TLS
  lines and `listen`/`server_name` are left out, and so are the per-client
  rate limits (`limit_req`, `limit_conn`: a bench on loopback is one
  client asking for thousands of requests a second).

Everything left out is listed (`Example.dropped`), so a report can say
exactly what differs from the file. A directive the bench relies on that
is missing from the example is an error, not a silent default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "nginx.conf.example"
EXAMPLE_ROOT = "/var/lib/recordings/"  # the example's recordings directory (its `alias`)
_TOKEN = re.compile(r"""\s+|\#[^\n]*|"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|[{};]|[^\s{};"'#]+""")


class ExampleError(ValueError):
    """nginx.conf.example lacks something the bench takes from it."""


@dataclass
class Directive:
    """One directive; `args` are kept as written (quotes included), so rendering gives nginx the same text."""

    name: str
    args: list[str] = field(default_factory=list)
    block: list[Directive] | None = None

    def render(self, indent: str = "") -> str:
        head = " ".join([self.name, *self.args])
        if self.block is None:
            return f"{indent}{head};\n"
        inner = "".join(child.render(indent + "    ") for child in self.block)
        return f"{indent}{head} {{\n{inner}{indent}}}\n"


def parse(text: str) -> list[Directive]:
    """The directives of an nginx configuration, nested as written."""
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match[0]
        if token.isspace() or token.startswith("#"):
            continue
        if token == ";":
            if not words:
                raise ExampleError("an empty directive (a stray ';')")
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            if not words:
                raise ExampleError("a block without a name")
            block: list[Directive] = []
            stack[-1].append(Directive(words[0], words[1:], block))
            stack.append(block)
            words = []
        elif token == "}":
            if words or len(stack) == 1:
                raise ExampleError("unbalanced '}' or a directive without ';'")
            stack.pop()
        else:
            words.append(token)
    if words or len(stack) != 1:
        raise ExampleError("the file ends inside a directive or a block")
    return stack[0]


def _one(directives: list[Directive], what: str, name: str, *args: str) -> Directive:
    found = [d for d in directives if d.name == name and d.args[: len(args)] == list(args)]
    if len(found) != 1:
        raise ExampleError(
            f"nginx.conf.example: expected one `{' '.join([name, *args])}` in {what}, found {len(found)}"
        )
    return found[0]


def _rate_limit(directive: Directive) -> bool:
    return directive.name.startswith(("limit_req", "limit_conn"))


@dataclass
class Example:
    """The parts of nginx.conf.example a bench serves from, with what it leaves out."""

    events: list[Directive]
    http: list[Directive]  # http-level directives and blocks kept (no access_log, no upstream, no server)
    log_format: str  # the name the example's access_log uses
    upstream: Directive
    site: list[Directive]  # the HTTPS server's locations
    dropped: list[str]  # every directive of the example left out, rendered

    def upstream_to(self, name: str, host: str, port: int) -> str:
        """The example's upstream block, called `name`, with its one server at host:port."""
        body = [
            Directive("server", [f"{host}:{port}"]) if child.name == "server" else child
            for child in self.upstream.block or []
        ]
        return Directive("upstream", [name], body).render("    ")

    def site_locations(self, upstream: str, root: Path) -> str:
        """The HTTPS server's locations, proxying to `upstream`, the offload location aliasing `root`."""

        def adapt(directive: Directive) -> Directive:
            if directive.name == "proxy_pass" and directive.args[0].startswith("http://storage_gateway"):
                return Directive("proxy_pass", [f"http://{upstream}"])
            if directive.name == "alias" and directive.args == [EXAMPLE_ROOT]:
                return Directive("alias", [f"{root}/"])
            if directive.block is None:
                return directive
            return Directive(directive.name, directive.args, [adapt(child) for child in directive.block])

        return "".join(adapt(location).render("        ") for location in self.site)


def load(path: Path = EXAMPLE) -> Example:
    """Read the example and take apart what a bench needs (see the module's docstring)."""
    top = parse(path.read_text())
    # user, worker_processes, pid, error_log: the bench's own (bench.nginx_main).
    dropped = [d.render().strip() for d in top if d.name not in ("events", "http")]
    events = _one(top, "the main context", "events").block or []
    http = _one(top, "the main context", "http").block or []
    access_log = _one(http, "http", "access_log")
    if len(access_log.args) < 2:
        raise ExampleError("nginx.conf.example: the http-level access_log names no log_format")
    log_format = access_log.args[1]
    _one(http, "http", "log_format", log_format)  # the format it names must be there
    upstream = _one(http, "http", "upstream", "storage_gateway")
    if not any(child.name == "server" for child in upstream.block or []):
        raise ExampleError("nginx.conf.example: the upstream has no server")
    kept: list[Directive] = []
    for directive in http:
        if directive is upstream or directive.name == "server":
            continue
        if directive is access_log or _rate_limit(directive):
            dropped.append(directive.render().strip())
            continue
        kept.append(directive)
    https = [
        s for s in http if s.name == "server" and any(d.name == "listen" and "ssl" in d.args for d in s.block or [])
    ]
    if len(https) != 1:
        raise ExampleError(f"nginx.conf.example: expected one HTTPS server, found {len(https)}")
    site: list[Directive] = []
    for directive in https[0].block or []:
        if directive.name == "location":
            site.append(_without_rate_limits(directive, dropped))
        else:
            dropped.append(directive.render().strip())  # listen, server_name, ssl_*
    root = _one(site, "the HTTPS server", "location", "/").block or []
    for required in ("proxy_pass", "proxy_http_version", "proxy_buffering"):
        _one(root, "location /", required)
    offload = _one(site, "the HTTPS server", "location", "/_recordings/").block or []
    _one(offload, "location /_recordings/", "internal")
    _one(offload, "location /_recordings/", "alias", EXAMPLE_ROOT)
    for server in http:
        if server.name == "server" and server is not https[0]:
            listens = ", ".join(" ".join(d.args) for d in server.block or [] if d.name == "listen")
            dropped.append(f"server {{...}} listening on {listens}")
    return Example(events, kept, log_format, upstream, site, dropped)


def _without_rate_limits(location: Directive, dropped: list[str]) -> Directive:
    body = []
    for child in location.block or []:
        if _rate_limit(child):
            dropped.append(f"{child.render().strip()} (in location {' '.join(location.args)})")
        else:
            body.append(child)
    return Directive(location.name, location.args, body)
