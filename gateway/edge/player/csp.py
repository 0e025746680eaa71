"""The Content-Security-Policy the listening page is served with.

Everything the page loads is the gateway's own: its script, style sheet and
wavesurfer.js from `/_player/`, the recording (`media-src`), and the peaks
JSON (`connect-src`, by fetch). No script or style is inline in the page;
data reaches the script through data-* attributes.

One exception, and why it is allowed by hash: wavesurfer.js v7 draws into
a Shadow DOM whose `<style>` element it writes itself (`innerHTML`), and
`style-src 'self'` refuses an inline `<style>` (shadow roots included), which
leaves the waveform unstyled and logs a violation. The alternatives:

- `'unsafe-inline'` for styles: works, but admits any injected style;
- a nonce (wavesurfer's `cspNonce` option): a new random value in every
  response, so the page and its policy could no longer be constants;
- our own copy of those rules: not reachable from outside a shadow root
  (only its `::part()`s are), and the refused `<style>` still logs errors.

The hash admits exactly that one style text and nothing else, and keeps the
policy constant. The text depends on the wavesurfer release and on the
`height` option (`WAVE_HEIGHT`, the same for mono and stereo so one hash
does); `test_wavesurfer_style_hash` recomputes it from the vendored file.
Style *properties* that wavesurfer sets from script (`element.style.width =
…`) are not inline styles for CSP and need nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# The waveform's height per channel in CSS pixels, given to wavesurfer's `height` option.
WAVE_HEIGHT = 80

# sha256 of the <style> text wavesurfer.js 7.12.12 writes into its shadow root for height 80.
WAVESURFER_STYLE_HASH = "'sha256-jyz+/aSLcvl4pJ7PjuSvFYlSCgBZG3DNB5lmp1dZ7ms='"

# A frame-ancestors source: a keyword in quotes, a scheme, or a host source (no separators, no spaces).
_SOURCE = re.compile(r"'(?:none|self)'|[A-Za-z][A-Za-z0-9+.-]*:(?://[^\s;,']+)?|[^\s;,':]+(?::[0-9*]+)?(?:/[^\s;,']*)?")


def content_security_policy(frame_ancestors: Iterable[str] = ("'none'",)) -> str:
    """The page's policy; `frame_ancestors` lists who may frame it (the CRM's origins, say).

    Each source is checked, so a setting can never add a directive (`;`) or
    break the header.
    """
    sources = list(frame_ancestors)
    if not sources:
        raise ValueError("frame_ancestors needs at least one source ('none' to forbid framing)")
    for source in sources:
        if not _SOURCE.fullmatch(source):
            raise ValueError(f"not a frame-ancestors source: {source!r}")
    if "'none'" in sources and len(sources) > 1:
        raise ValueError("'none' cannot be combined with other frame-ancestors sources")
    return "; ".join(
        (
            "default-src 'none'",
            "script-src 'self'",
            f"style-src 'self' {WAVESURFER_STYLE_HASH}",
            "img-src 'self' data:",
            "media-src 'self'",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors " + " ".join(sources),
        )
    )


# The policy for a page that may not be framed at all.
CONTENT_SECURITY_POLICY = content_security_policy()
