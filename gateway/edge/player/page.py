"""The listening page for one recording, rendered from a `PlayerView` into HTML bytes.

Pure: no HTTP framework, no I/O beyond the package's own files. The caller
(the gateway's request path) has already made and signed every URL; this
module only escapes them. Nothing in the page is inline script: the script
reads its data from the data-* attributes of `<main id="player">`, so the
page works under `CONTENT_SECURITY_POLICY`.

Without script the page still plays: the `<audio>` element carries native
controls, which the script removes when it takes over with its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape

from .assets import WAVESURFER_VERSION, asset_url
from .csp import WAVE_HEIGHT

# Channel 1 (left) is the caller, channel 2 (right) the agent, as the telephony platform records them.
CHANNEL_NAMES = ("Caller", "Agent")
RATES = (0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
SKIP_SECONDS = 10  # the -10 s / +10 s buttons
KEY_STEP_SECONDS = 5  # the left and right arrow keys


@dataclass(frozen=True)
class PlayerView:
    """What the page shows for one recording; every URL already made (and signed) by the caller."""

    name: str  # file name shown
    audio_url: str  # what the <audio> plays: the original or, when its codec needs one, a rendition
    peaks_url: str | None  # mono peaks (audiowaveform JSON), None when there are none
    split_peaks_url: str | None  # per-channel peaks, None when there are none
    download_url: str  # the original (or, for one channel or a masked recording, its WAV)
    download_mp3_url: str
    channels: int | None = None  # 1 or 2; None when unknown (shown as mono)
    duration_seconds: float | None = None
    download_label: str = "Download original"  # what the first download button says

    def __post_init__(self) -> None:
        if self.channels not in (None, 1, 2):
            raise ValueError(f"channels must be 1, 2 or None, not {self.channels!r}")
        if self.duration_seconds is not None and not (
            math.isfinite(self.duration_seconds) and self.duration_seconds >= 0
        ):
            raise ValueError(f"duration_seconds must be a finite number >= 0, not {self.duration_seconds!r}")


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def clock(seconds: float | None) -> str:
    """m:ss, or h:mm:ss from an hour on; a dash when unknown (the script writes the same form)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "–:––"
    whole = int(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _rate_label(rate: float) -> str:
    return f"{rate:g}×"


_PLAY_ICON = (
    '<svg class="icon icon-play" viewBox="0 0 24 24" width="24" height="24" aria-hidden="true" focusable="false">'
    '<path fill="currentColor" d="M8 5v14l11-7z"/></svg>'
)
_PAUSE_ICON = (
    '<svg class="icon icon-pause" viewBox="0 0 24 24" width="24" height="24" aria-hidden="true" focusable="false">'
    '<path fill="currentColor" d="M6 5h4v14H6zm8 0h4v14h-4z"/></svg>'
)


def _lanes() -> str:
    """Labels laid over each channel's waveform (and a veil when the channel is silenced)."""
    rows = "".join(
        f'<div class="lane" data-channel="{index}" data-audible="true">'
        f'<span class="lane-label">{escape(label)}</span></div>'
        for index, label in enumerate(CHANNEL_NAMES)
    )
    return f'<div class="lanes" aria-hidden="true">{rows}</div>'


def _channel_rows() -> str:
    rows = []
    for index, label in enumerate(CHANNEL_NAMES):
        rows.append(
            f'<div class="channel" data-channel="{index}" data-muted="false" data-soloed="false" data-audible="true">'
            f'<span class="channel-name">{escape(label)}</span>'
            f'<button type="button" class="btn btn-toggle" data-action="mute" aria-pressed="false"'
            f' aria-label="Mute {escape(label)}">Mute</button>'
            f'<button type="button" class="btn btn-toggle" data-action="solo" aria-pressed="false"'
            f' aria-label="Solo {escape(label)}">Solo</button>'
            "</div>"
        )
    return '<div class="channels" role="group" aria-label="Channels">' + "".join(rows) + "</div>"


def render_page(view: PlayerView) -> bytes:
    """The whole HTML document (UTF-8) for `view`; send it with `CONTENT_SECURITY_POLICY`."""
    stereo = view.channels == 2
    data = {
        "data-channels": str(view.channels or ""),
        "data-duration": "" if view.duration_seconds is None else repr(float(view.duration_seconds)),
        "data-peaks-url": view.peaks_url or "",
        "data-split-peaks-url": (view.split_peaks_url or "") if stereo else "",
        "data-wave-height": str(WAVE_HEIGHT),
        "data-skip": str(SKIP_SECONDS),
        "data-step": str(KEY_STEP_SECONDS),
    }
    data_attrs = " ".join(f'{key}="{_attr(value)}"' for key, value in data.items())
    has_peaks = bool(view.peaks_url or (stereo and view.split_peaks_url))
    wave_state = "loading" if has_peaks else "none"
    wave_status = "Loading waveform…" if has_peaks else "No waveform for this recording."
    duration = clock(view.duration_seconds)
    kind = "Stereo: Caller (channel 1), Agent (channel 2)" if stereo else ("Mono" if view.channels == 1 else "")
    facts = f'Duration <span data-role="total">{duration}</span>' + (f" · {kind}" if kind else "")
    speed_options = "".join(
        f'<option value="{rate:g}"{" selected" if rate == 1.0 else ""}>{_rate_label(rate)}</option>' for rate in RATES
    )
    name = escape(view.name, quote=True)
    html = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{name}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{_attr(asset_url("player.css"))}">
<!-- The waveform is drawn by wavesurfer.js {WAVESURFER_VERSION} (BSD-3-Clause: _player/wavesurfer-LICENSE.txt). -->
<script defer src="{_attr(asset_url("wavesurfer.min.js"))}"></script>
<script defer src="{_attr(asset_url("player.js"))}"></script>
</head>
<body>
<main id="player" class="player no-js" {data_attrs} data-playing="false">
<header class="head">
<h1 class="name">{name}</h1>
<p class="facts">{facts}</p>
</header>
<section class="wave" data-state="{wave_state}" data-lanes="{2 if stereo else 1}" aria-label="Waveform">
<div class="wave-box">
<div class="wave-canvas" aria-hidden="true"></div>
{_lanes() if stereo else ""}
</div>
<p class="wave-status" role="status">{wave_status}</p>
</section>
<input class="seek" type="range" min="0" max="{_attr(view.duration_seconds or 0)}" step="any" value="0"
 aria-label="Position" aria-valuetext="0:00 of {duration}">
<div class="controls" role="group" aria-label="Playback">
<button type="button" class="btn" data-action="back" aria-label="Back {SKIP_SECONDS} seconds">−{SKIP_SECONDS} s</button>
<button type="button" class="btn btn-play" data-action="play" aria-label="Play">{_PLAY_ICON}{_PAUSE_ICON}</button>
<button type="button" class="btn" data-action="forward" aria-label="Forward {SKIP_SECONDS} seconds">+{SKIP_SECONDS} s</button>
<p class="time"><span data-role="current">0:00</span> / <span data-role="duration">{duration}</span></p>
<label class="speed">Speed <select data-role="speed">{speed_options}</select></label>
</div>
{_channel_rows() if stereo else ""}
<div class="downloads">
<a class="btn" href="{_attr(view.download_url)}" download>{escape(view.download_label)}</a>
<a class="btn" href="{_attr(view.download_mp3_url)}" download>Download MP3</a>
</div>
<p class="keys">Keys: <kbd>Space</kbd> play/pause · <kbd>←</kbd> <kbd>→</kbd> {KEY_STEP_SECONDS} s back/forward ·
 <kbd>↑</kbd> <kbd>↓</kbd> speed</p>
<p class="error" role="alert" hidden></p>
<audio class="audio" src="{_attr(view.audio_url)}" preload="metadata" controls></audio>
</main>
</body>
</html>
"""
    return html.encode("utf-8")
