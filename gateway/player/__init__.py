"""The listening page (`?player=1`): one recording's waveform, playback controls and downloads.

Self-contained, importing nothing else from `gateway`, so it can move with
the edge package as it is:

- `render_page(PlayerView(...))`: the page's HTML bytes;
- `CONTENT_SECURITY_POLICY` / `content_security_policy(frame_ancestors)`:
  the policy to send with it (the page needs no more than that);
- `asset(name)`: a static file for `/_player/<name>`, or None.
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
