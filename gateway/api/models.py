"""The link API's requests and answers, each declared once: validation and JSON schema from the same type.

msgspec checks a body against these types while decoding it, and makes the
OpenAPI components from them, so what the document promises is what the
code accepts. Chosen over pydantic for its cost in a process that also
serves: about 3 ms and 3 MiB to import against about 100 ms and 11 MiB,
and a request decoded in microseconds (README, "The link API").
"""

from __future__ import annotations

import re
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from ..links.masks import MAX_SECONDS, MAX_SPANS
from ..transcode.spec import MAX_SOURCE_CHANNELS

MAX_BATCH = 1000
MAX_CHECK = 100
MAX_EXPIRES_IN = 10 * 366 * 24 * 3600  # ten years: longer is "forever", which is what a plain link is
MAX_FILENAME_CHARS = 255
MAX_LINK_CHARS = 8192
_SCHEMAS = "#/components/schemas/{name}"
# No directory, no control character, not "." or "..": a download name, nothing else.
FILENAME_PATTERN = r"^(?!\.\.?$)[^\x00-\x1f\x7f-\x9f\u2028\u2029/\\]+$"

Path = Annotated[
    str,
    Meta(
        min_length=1,
        description="the recording's path in the storage",
        examples=["/300/2017-02-17-11-05-04_in_300_uhl4.mp3"],
    ),
]
ExpiresIn = Annotated[int, Meta(ge=1, le=MAX_EXPIRES_IN, description="seconds the link is valid (signed link)")]
FileName = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_FILENAME_CHARS,
        pattern=FILENAME_PATTERN,
        description="the name the download gets (signed link); no slashes or control characters",
    ),
]
LinkText = Annotated[str, Meta(min_length=1, max_length=MAX_LINK_CHARS, description="a record_url or a bare token")]
Channel = Annotated[
    int,
    Meta(
        ge=1,
        le=MAX_SOURCE_CHANNELS,
        description="that channel of the recording alone, as mono (1-based: 1 is the caller, 2 the agent); signed link",
    ),
]
Seconds = Annotated[float, Meta(ge=0, le=MAX_SECONDS, description="seconds from the start of the recording")]
Span = Annotated[tuple[Seconds, Seconds], Meta(description="[start, end] in seconds, start before end")]
MaskSpans = Annotated[
    list[Span],
    Meta(
        max_length=MAX_SPANS,
        description="spans to silence, inside the recording: the link (always signed) serves a rendition of the "
        "same duration with them silent, in every form, and never the original",
        examples=[[[10, 20], [50.5, 55]]],
    ),
]


class LinkRequest(Struct, forbid_unknown_fields=True):
    """One link to issue; `null` means absent. Any option makes it a signed link."""

    path: Path
    expires_in: ExpiresIn | None = None
    filename: FileName | None = None
    inline: bool | None = None
    player: Annotated[bool, Meta(description="the listening page for the recording (signed link)")] | None = None
    channel: Channel | None = None
    mask: MaskSpans | None = None


class LinkBatch(Struct, forbid_unknown_fields=True):
    """Up to 1,000 links; each item is answered or refused on its own, so items are checked one by one."""

    links: Annotated[
        list[msgspec.Raw],
        Meta(max_length=MAX_BATCH, extra_json_schema={"items": {"$ref": _SCHEMAS.format(name="LinkRequest")}}),
    ]


class ResolveRequest(Struct, forbid_unknown_fields=True):
    link: LinkText


class CheckRequest(Struct, forbid_unknown_fields=True):
    """Up to 100 links, each checked (or refused) on its own."""

    links: Annotated[list[msgspec.Raw], Meta(max_length=MAX_CHECK, extra_json_schema={"items": {"type": "string"}})]


class Link(Struct):
    record_url: Annotated[str, Meta(extra_json_schema={"format": "uri"})]
    expires_at: Annotated[str, Meta(extra_json_schema={"format": "date-time"})] | None
    path: str
    signed: bool


class Key(Struct):
    index: int
    fingerprint: str


class LinkReport(Struct):
    """What a link names and what the edge answers for it (the edge's own admission decides `status`)."""

    path: str
    key: Key
    signed: bool
    signature_valid: bool | None
    expires_at: Annotated[str, Meta(extra_json_schema={"format": "date-time"})] | None
    expired: bool
    revoked: bool
    exists: bool | None
    size: int | None
    content_type: str
    last_modified: Annotated[str, Meta(extra_json_schema={"format": "date-time"})] | None
    storage: str | None
    served: bool
    status: int
    reason: str | None
    detail: str | None


class CheckedLink(LinkReport):
    link: str = ""
    detected_type: str | None = None
    detected_format: str | None = None
    type_mismatch: bool | None = None


class ErrorDetail(Struct, omit_defaults=True):
    status: int
    message: str
    field: str | None = None


class Error(Struct):
    error: ErrorDetail


def _one_of(*names: str) -> Meta:
    """A list whose items are each one of these answers (an answer or an error: not told apart by a tag)."""
    return Meta(extra_json_schema={"items": {"oneOf": [{"$ref": _SCHEMAS.format(name=name)} for name in names]}})


class Links(Struct):
    """One result per item, in the same order: a link or an error."""

    results: Annotated[list[Any], _one_of("Link", "Error")]


class CheckedLinks(Struct):
    """One result per link, in the same order: a report or an error."""

    results: Annotated[list[Any], _one_of("CheckedLink", "Error")]


class Health(Struct):
    status: str


SCHEMA_TYPES: tuple[Any, ...] = (
    LinkRequest, LinkBatch, ResolveRequest, CheckRequest, Link, Links, LinkReport, CheckedLink, CheckedLinks, Error,
    Health,
)  # fmt: skip


class Invalid(Exception):
    """A body (or batch item) that does not fit its type: the field at fault and what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


_AT = re.compile(r" - at `\$(?:\.([A-Za-z_]\w*))?[^`]*`$")
_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")
_MISSING = re.compile(r"Object missing required field `([^`]*)`")


def decode(data: bytes, kind: type[Any], whole: str = "body") -> Any:
    """`data` decoded as `kind`, or Invalid naming the field (`whole` when it is the document itself)."""
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        raise _invalid(str(exc), whole) from None
    except msgspec.DecodeError as exc:
        raise Invalid(whole, f"not valid JSON ({exc})") from None


def _invalid(message: str, whole: str) -> Invalid:
    at = _AT.search(message)
    problem = message if at is None else message[: at.start()]
    for pattern, text in ((_UNKNOWN, "unknown field"), (_MISSING, "is required")):
        named = pattern.match(problem)
        if named:
            return Invalid(named[1], text)
    field = whole if at is None or at[1] is None else at[1]
    if "matching regex" in problem and field == "filename":
        problem = "must be a file name, without slashes or control characters"
    return Invalid(field, problem)
