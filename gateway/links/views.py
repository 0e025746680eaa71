"""What a link asks for: the original, a rendition or the listening page; inline or a download; which name.

Pure: the query parameters in, a `View` out, or a `Refusal` (400) whose
message names what is accepted. Only a signed link may rename the
download: the name is part of what was signed; likewise only a signed
link carries a mask (the admission refuses it on any other, before this).

The views of a recording, and how they combine:

- `player=1`: the listening page (`gateway/edge/pages.py` answers it),
  with `channel` and a mask if the link has them; not with `format` or
  `peaks` (the page itself links to those).
- `channel=N` (1 to 8): that channel alone, as a mono rendition: the WAV
  when no `format` is asked (inline or a download alike), with `format=`
  that format, with `peaks=1` its peaks. Its download name is marked:
  `call (channel 2).wav`.
- `peaks=1&split=1`: peaks with one series per channel (not with `channel`).
- `mask`: the same renditions with the masked spans silent; a masked link
  never serves its original, so without `format` it is the WAV too.

`page_links` makes the links the page for a link uses: each one carries
the page link's expiry, name, channel and mask, and is signed when the
page link is, so a page reached through a masked link never points at
anything the mask does not cover.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from ..common.values import flag_word, whole_number
from ..transcode.spec import (
    DEFAULT_PIXELS,
    FORMATS,
    INLINE_FORMAT,
    MAX_PIXELS,
    MAX_SOURCE_CHANNELS,
    PEAKS,
    Mask,
    Wanted,
)
from .decision import Refusal
from .masks import MaskError, parse_mask
from .signing import EXPIRES

PLAYER = "player"
CHANNEL = "channel"
SPLIT = "split"
MASK = "mask"
_PIXEL_DIGITS = 6
# What every link of a page carries over from the page's own link.
_CARRIED = (EXPIRES, "filename", CHANNEL, MASK)


@dataclass(frozen=True, slots=True)
class View:
    inline: bool
    rendition: Wanted | None  # None: the original, the page, or an inline link whose original may play as it is
    filename: str | None  # the download name a signed link carries, without any directory
    player: bool = False  # the listening page
    channel: int | None = None  # 1-based
    mask: Mask = ()

    @property
    def kinds(self) -> tuple[str, ...]:
        """Which views beyond the plain link this is (metrics, access log): player, channel, mask, split."""
        split = self.rendition is not None and self.rendition.split
        chosen = (self.player, self.channel is not None, bool(self.mask), split)
        return tuple(kind for kind, on in zip((PLAYER, CHANNEL, MASK, SPLIT), chosen) if on)


def _refused(reason: str, message: str) -> Refusal:
    return Refusal(400, reason, message, message)


ORIGINAL = View(False, None, None)  # a link without parameters: most requests


def _flag(params: Mapping[str, str], name: str) -> bool | Refusal:
    text = params.get(name, "")
    asked = flag_word(text) if text.strip() else False
    if asked is None:
        return _refused(name, f"{name}={text[:20]!r} is not understood: use {name}=1")
    return asked


def view(params: Mapping[str, str], signed: bool, inline_renditions: bool) -> View | Refusal:
    """The view these query parameters ask for, or why it cannot be served."""
    if not params:
        return ORIGINAL
    inline = flag_word(params.get("inline", "")) is True
    filename = params.get("filename", "").rpartition("/")[2] if signed else ""
    flags = [_flag(params, name) for name in (PEAKS, PLAYER, SPLIT)]
    for flag in flags:
        if isinstance(flag, Refusal):
            return flag
    asked_peaks, player, split = flags
    channel = None
    if CHANNEL in params:
        channel = whole_number(params[CHANNEL].strip(), 1)
        if channel is None or not 1 <= channel <= MAX_SOURCE_CHANNELS:
            return _refused(CHANNEL, f"channel must be a whole number from 1 to {MAX_SOURCE_CHANNELS}")
    mask: Mask = ()
    if MASK in params:
        try:
            mask = parse_mask(params[MASK])
        except MaskError as exc:
            return _refused(MASK, f"mask: {exc}")
    fmt = params.get("format")
    if player and (fmt is not None or asked_peaks):
        return _refused(PLAYER, "player cannot be asked with format or peaks: the page links to both")
    if split and not asked_peaks:
        return _refused(SPLIT, "split is for peaks: use peaks=1&split=1")
    if split and channel is not None:
        return _refused(SPLIT, "split and channel cannot be asked together")

    rendition: Wanted | None = None
    if player:
        pass  # the page; what it plays is asked by its own links
    elif fmt is not None:
        if asked_peaks:
            return _refused("format", "format and peaks cannot be asked together")
        kind = fmt.strip().lower()
        if kind not in FORMATS:
            return _refused("format", f"unsupported format {fmt[:20]!r}; accepted: {', '.join(FORMATS)}")
        rendition = Wanted(kind, explicit=True, channel=channel, mask=mask)
    elif asked_peaks:
        text = params.get("pixels")
        pixels = DEFAULT_PIXELS if text is None else whole_number(text.strip(), _PIXEL_DIGITS)
        if pixels is None or not 1 <= pixels <= MAX_PIXELS:
            return _refused("pixels", f"pixels must be a whole number from 1 to {MAX_PIXELS}")
        rendition = Wanted(PEAKS, explicit=True, pixels=pixels, channel=channel, split=split, mask=mask)
    elif channel is not None or mask:
        rendition = Wanted(INLINE_FORMAT, explicit=True, channel=channel, mask=mask)
    elif inline and inline_renditions:
        rendition = Wanted(INLINE_FORMAT, explicit=False)
    return View(inline, rendition, filename or None, player, channel, mask)


@dataclass(frozen=True, slots=True)
class PageLinks:
    """The links the listening page uses, relative to the page (`<token>?…`)."""

    audio: str  # what the <audio> plays: inline (the original when browsers play it, else the WAV)
    peaks: str
    split_peaks: str | None  # None: not asked (one channel shown)
    download: str  # the original, or for a channel or a mask its WAV
    mp3: str


def page_links(
    token: str,
    params: Mapping[str, str],
    stereo: bool,
    sign: Callable[[str, Mapping[str, str]], str] | None,
) -> PageLinks:
    """Each link of the page for `token?params`: the page's carried parameters plus its own view.

    `sign` (the signer's, for a signed page link) signs each; an unsigned
    page gets unsigned links. The page's own `player` is never carried.
    """
    carried = {name: params[name] for name in _CARRIED if name in params}
    if sign is None:
        carried.pop("filename", None)  # only a signed link renames

    def link(**own: str) -> str:
        wanted = {**carried, **own}
        query = sign(token, wanted) if sign is not None else urlencode(wanted)
        return f"{token}?{query}" if query else token

    return PageLinks(
        audio=link(inline="1"),
        peaks=link(peaks="1"),
        split_peaks=link(peaks="1", split="1") if stereo and CHANNEL not in carried else None,
        download=link(),
        mp3=link(format="mp3"),
    )
