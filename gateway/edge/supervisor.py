"""uvicorn's worker supervisor, letting go of the listening socket on stop."""

from __future__ import annotations

from uvicorn.supervisors import Multiprocess


class Supervisor(Multiprocess):
    """The supervisor holds its own descriptor of the socket the workers accept on.

    Kept open while the workers drain, the kernel would go on queueing new
    connections that nobody will ever accept; closed on SIGTERM/SIGINT, new
    connections are refused at once (once the workers close theirs) and
    clients retry elsewhere.
    """

    def _stop_listening(self) -> None:
        for sock in self.sockets:
            sock.close()

    def handle_term(self) -> None:
        self._stop_listening()
        super().handle_term()

    def handle_int(self) -> None:
        self._stop_listening()
        super().handle_int()
