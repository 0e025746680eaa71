"""Representation metadata: the disposition a name is sent under, HTTP dates.

Pure functions, so they can be memoised per file: at thousands of requests
a second, rebuilding these for each request is a visible share of the time.
"""

from __future__ import annotations

from email.utils import formatdate
from urllib.parse import quote

# RFC 8187 attr-char: what may stand unescaped in filename*=UTF-8''…
_ATTR_SAFE = "!#$&+-.^_`|~"


# A recording link is shown by the browser itself only for what cannot carry script: sound,
# pictures, video. Anything else a storage holds (HTML, SVG, PDF, text) downloads, and every
# answer carries a policy that loads nothing and runs nothing, should a browser show it anyway.
# A media type gets a policy without `sandbox`: sandboxing gives the document an opaque origin,
# and the browser's own media document could then not load the very file it shows (seen in
# Chromium); it runs no script of its own, and `default-src 'none'` forbids any anyway.
SHOWN_INLINE = ("audio/", "video/", "image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp")
SANDBOX = (b"content-security-policy", b"sandbox; default-src 'none'")
MEDIA_ONLY = (b"content-security-policy", b"default-src 'none'; media-src 'self'; img-src 'self'")


def shown_inline(content_type: str) -> bool:
    """Whether `?inline=1` may show a file of this type in the browser (else it downloads)."""
    return content_type.startswith(SHOWN_INLINE)


def policy(content_type: str) -> tuple[bytes, bytes]:
    """The Content-Security-Policy a file of this type is sent with."""
    return MEDIA_ONLY if shown_inline(content_type) else SANDBOX


def content_disposition(name: str, inline: bool) -> str:
    """RFC 6266 disposition with an ASCII fallback and a UTF-8 `filename*`.

    Old clients read `filename`, every current browser prefers `filename*`,
    so Cyrillic names survive while nothing breaks for the rest. Names with
    `%` get `filename*` too: some browsers percent-decode plain `filename`.
    """
    kind = "inline" if inline else "attachment"
    fallback = "".join(c if " " <= c <= "~" and c not in '"\\' else "_" for c in name)
    value = f'{kind}; filename="{fallback}"'
    if fallback != name or "%" in name:
        value += f"; filename*=UTF-8''{quote(name, safe=_ATTR_SAFE)}"
    return value


def http_date(seconds: int) -> str:
    """IMF-fixdate, as Last-Modified requires."""
    return formatdate(seconds, usegmt=True)
