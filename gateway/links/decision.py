"""What the edge decides about a link before it touches bytes: a refusal, with its status and why.

`reason` is the label the log and the metrics show; `detail` is for the log
only. The client sees the status and, only where the link itself was good
and what it asked for was not (400, 415, 503 for a rendition), `message`.
"""

from __future__ import annotations

from dataclasses import dataclass

# How a storage failure is answered: a gateway timeout when the store was
# too slow, unavailable when it could not be reached, bad gateway when it
# answered wrongly.
STORAGE_FAILURE_STATUS = {"timeout": 504, "connection": 503, "io": 503}
DEFAULT_STORAGE_FAILURE_STATUS = 502
STORAGE = "storage"


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    reason: str
    detail: str = ""
    message: str | None = None  # the body's text, for refusals of a view (400, 415, 503)
    retry_after: int | None = None

    @property
    def of_link(self) -> bool:
        """A refused link (counted in gateway_rejected_total), as opposed to a view or a storage failure."""
        return self.message is None and self.reason != STORAGE


def storage_failure(kind: str) -> Refusal:
    """504, 503 or 502 for a storage failure of `kind` (the metric's label, and the log's detail)."""
    return Refusal(STORAGE_FAILURE_STATUS.get(kind, DEFAULT_STORAGE_FAILURE_STATUS), STORAGE, kind)
