"""The edge's listening page: the page of a link (`/<token>?player=1`) and its files (`/_player/<name>`).

The page is rendered by `player` (pure) from what the admission found: the
file's name, its channels and duration (the probe), and the links the page
uses, made by `links.views.page_links`: each carries the page link's
expiry, name, channel and mask, and is signed here when the page link was
signed (the admission has verified it), so the page of a masked link
points only at masked renditions. An unsigned page gets unsigned links.

The page is sent with its own policy (`player.content_security_policy`:
scripts, styles, media and fetches from this origin only, framed only by
the CORS origins) instead of the sandbox every file answer carries, and
never cached: it holds signed, expiring links. Its files are a fixed
table (`player.asset`), served from memory with a long cache life (their
URLs carry a content hash); their path can never be a token (a token is
one path segment of base64).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..http.asgi import Message, Send
from ..http.replies import NOSNIFF, fixed, send_reply
from ..http.representation import SANDBOX
from ..links.admission import Admitted
from ..links.signing import LinkSigner
from ..links.views import page_links
from ..transcode.spec import channel_name
from .player import CACHE_CONTROL, PlayerView, asset, asset_names, content_security_policy, render_page

ASSETS = "/_player/"
_HTML = b"text/html; charset=utf-8"


def _start(status: int, content_type: bytes, length: int, *extra: tuple[bytes, bytes]) -> Message:
    headers = [(b"content-type", content_type), (b"content-length", str(length).encode()), *extra, NOSNIFF]
    return {"type": "http.response.start", "status": status, "headers": headers}


class Pages:
    def __init__(self, signer: LinkSigner, frame_ancestors: Sequence[str]) -> None:
        self.signer = signer
        policy = content_security_policy(frame_ancestors or ("'none'",))
        self._page_headers = (
            (b"cache-control", b"no-store"),
            (b"content-security-policy", policy.encode()),
            (b"referrer-policy", b"no-referrer"),
        )
        self._assets: dict[str, tuple[Message, Message]] = {}
        for name in asset_names():
            found = asset(name)
            assert found is not None
            body, content_type = found
            start = _start(200, content_type.encode(), len(body), (b"cache-control", CACHE_CONTROL.encode()), SANDBOX)
            self._assets[name] = (start, {"type": "http.response.body", "body": body})

    async def send_asset(self, path: str, send: Send) -> None:
        """`/_player/<name>` (GET or HEAD: uvicorn drops a HEAD's body); the plain 404 for any other name."""
        await send_reply(send, self._assets.get(path[len(ASSETS) :]) or fixed(404))

    def render(self, decision: Admitted, params: Mapping[str, str]) -> bytes:
        """The page for the admitted link `decision` (`/<token>?params`)."""
        recording, view = decision.recording, decision.view
        assert recording is not None
        channels = 1 if view.channel is not None else recording.channels
        shown = channels if channels in (1, 2) else None  # more channels play mixed, shown as one
        links = page_links(decision.token, params, shown == 2, self.signer.sign if decision.signed else None)
        return render_page(
            PlayerView(
                name=channel_name(decision.name, view.channel),
                audio_url=links.audio,
                peaks_url=links.peaks,
                split_peaks_url=links.split_peaks,
                download_url=links.download,
                download_mp3_url=links.mp3,
                channels=shown,
                duration_seconds=recording.duration,
                download_label="Download original" if view.channel is None and not view.mask else "Download WAV",
            )
        )

    async def send_page(self, decision: Admitted, params: Mapping[str, str], send: Send) -> None:
        body = self.render(decision, params)
        await send(_start(200, _HTML, len(body), *self._page_headers))
        await send({"type": "http.response.body", "body": body})
