"""The listening page (`?player=1`): one recording's waveform, playback controls and downloads.

Part of the edge layer (`gateway/edge/`): a page is an answer of the public
app, and HTML is no concern of the links and renditions below it. It
imports nothing else from `gateway`:

- `render_page(PlayerView(...))`: the page's HTML bytes;
- `CONTENT_SECURITY_POLICY` / `content_security_policy(frame_ancestors)`:
  the policy to send with it (the page needs no more than that);
- `asset(name)`: a static file for `/_player/<name>`, or None.

Wired into the request path by `gateway/edge/pages.py` (what the page assumes):

- `GET /<token>?player=1`: `render_page(...)` as `text/html; charset=utf-8`
  with `Content-Security-Policy: content_security_policy(<CORS origins>)`
  (they may frame it); the page holds signed, expiring URLs, so
  `Cache-Control: no-store`.
- `GET /_player/<name>`: `asset(name)` with its content type and
  `CACHE_CONTROL` (the page's URLs carry a content hash), 404 for None.
  The page refers to `_player/...` relative to itself, so the assets must be
  served next to the token's path segment, prefix included.
- Every URL in `PlayerView` must be same-origin with the page: the policy
  allows media and fetch from 'self' only, and Web Audio (mute/solo) hears
  silence from a cross-origin `<audio>` without CORS.
"""

from __future__ import annotations

from .assets import CACHE_CONTROL, WAVESURFER_VERSION, asset, asset_names, asset_url
from .csp import CONTENT_SECURITY_POLICY, WAVE_HEIGHT, content_security_policy
from .page import PlayerView, clock, render_page

__all__ = [
    "CACHE_CONTROL",
    "CONTENT_SECURITY_POLICY",
    "WAVESURFER_VERSION",
    "WAVE_HEIGHT",
    "PlayerView",
    "asset",
    "asset_names",
    "asset_url",
    "clock",
    "content_security_policy",
    "render_page",
]
