"""What a link asks for: the original or a rendition, inline or as a download, under which name.

Pure: the query parameters in, a `View` out, or a `Refusal` (400) whose
message names what is accepted. Only a signed link may rename the
download: the name is part of what was signed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..common.values import flag_word, whole_number
from ..transcode.spec import DEFAULT_PIXELS, FORMATS, INLINE_FORMAT, MAX_PIXELS, PEAKS, Wanted
from .decision import Refusal

_PIXEL_DIGITS = 6


@dataclass(frozen=True, slots=True)
class View:
    inline: bool
    rendition: Wanted | None  # None: the original (or an inline link whose original may play as it is)
    filename: str | None  # the download name a signed link carries, without any directory


def _refused(reason: str, message: str) -> Refusal:
    return Refusal(400, reason, message, message)


ORIGINAL = View(False, None, None)  # a link without parameters: most requests


def view(params: Mapping[str, str], signed: bool, inline_renditions: bool) -> View | Refusal:
    """The view these query parameters ask for, or why it cannot be served."""
    if not params:
        return ORIGINAL
    inline = flag_word(params.get("inline", "")) is True
    filename = params.get("filename", "").rpartition("/")[2] if signed else ""
    peaks = params.get(PEAKS, "")
    asked_peaks = flag_word(peaks) if peaks.strip() else False
    if asked_peaks is None:
        return _refused("peaks", f"peaks={peaks[:20]!r} is not understood: use peaks=1")
    rendition: Wanted | None = None
    fmt = params.get("format")
    if fmt is not None:
        if asked_peaks:
            return _refused("format", "format and peaks cannot be asked together")
        kind = fmt.strip().lower()
        if kind not in FORMATS:
            return _refused("format", f"unsupported format {fmt[:20]!r}; accepted: {', '.join(FORMATS)}")
        rendition = Wanted(kind, explicit=True)
    elif asked_peaks:
        text = params.get("pixels")
        pixels = DEFAULT_PIXELS if text is None else whole_number(text.strip(), _PIXEL_DIGITS)
        if pixels is None or not 1 <= pixels <= MAX_PIXELS:
            return _refused("pixels", f"pixels must be a whole number from 1 to {MAX_PIXELS}")
        rendition = Wanted(PEAKS, explicit=True, pixels=pixels)
    elif inline and inline_renditions:
        rendition = Wanted(INLINE_FORMAT, explicit=False)
    return View(inline, rendition, filename or None)
