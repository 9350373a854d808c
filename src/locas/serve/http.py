"""The HTTP layer under the app: uvicorn's HTTP/1.1 protocol with a deadline for each request's head.

uvicorn times out a connection only between requests (keep-alive), not before the first one: a client that
opens a socket and sends nothing, or sends its request line and headers one byte at a time, holds a
connection for ever, and a few thousand of them use up the process's file descriptors. ``GuardedH11``
closes a connection whose next request head (request line and headers) has not arrived within
``head_timeout_s`` of the connection opening or of the previous response ending. Bodies have their own
deadline in the app (``Limits.body_timeout_s``: 408).

    >>> config = uvicorn_config(create_app(server), head_timeout_s=10)
    >>> uvicorn.Server(config).run(sockets=[sock])
"""

from __future__ import annotations

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol


class GuardedH11(H11Protocol):
    """H11Protocol that closes a connection whose request head is late (``head_timeout_s``, set by a subclass)."""

    head_timeout_s = 10.0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._head_deadline = None
        self._arm_head_deadline()

    def _arm_head_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        self._head_deadline = self.loop.call_later(self.head_timeout_s, self._head_late, self.cycle)

    def _head_late(self, cycle_then) -> None:
        """No new request head since the deadline was set (the cycle is still the one of then): close."""
        if self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_deadline()  # the next request's head, if one comes on this connection

    def connection_lost(self, exc) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
        super().connection_lost(exc)


def uvicorn_config(app, *, head_timeout_s: float = 10.0, graceful_s: float = 5.0) -> uvicorn.Config:
    """The one uvicorn configuration of `locas serve` and of ``serving()``: no access log (keys and prompts never
    reach a log), ``GuardedH11`` with ``head_timeout_s``."""
    protocol = type("GuardedH11", (GuardedH11,), {"head_timeout_s": float(head_timeout_s)})
    return uvicorn.Config(app, http=protocol, log_level="warning", access_log=False,
                          timeout_graceful_shutdown=graceful_s)
