"""Running the app with uvicorn, with the connection timeouts a public endpoint needs.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for the head of a request, so a
client that opens connections and sends nothing, or trickles its headers a byte at a time, holds them open. Here each
connection must deliver a complete request head within ``head_timeout_s`` of opening or of its previous response;
the body then has ``body_timeout_s`` (``BodyLimit`` in ``app.py``) and idle connections ``keep_alive_s``.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_TIMEOUT_S = 10.0
KEEP_ALIVE_S = 5


class HeadTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request head has not arrived in ``head_timeout_s``."""

    head_timeout_s: float = HEAD_TIMEOUT_S

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: asyncio.TimerHandle | None = None
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timeout, self.cycle)

    def _head_timeout(self, cycle_then) -> None:
        # No new request started since the timer was armed, and none is being answered: the head is late.
        waiting = self.cycle is cycle_then and (self.cycle is None or self.cycle.response_complete)
        if waiting and not self.transport.is_closing():
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)


def server_config(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
                  head_timeout_s: float = HEAD_TIMEOUT_S, keep_alive_s: int = KEEP_ALIVE_S,
                  max_connections: int | None = 1000) -> uvicorn.Config:
    """A uvicorn configuration for ``app`` with the timeouts above; beyond ``max_connections`` open connections and
    tasks, new requests get 503 at once instead of queueing without bound."""
    protocol = type("HeadTimeoutProtocol", (HeadTimeoutProtocol,), {"head_timeout_s": float(head_timeout_s)})
    return uvicorn.Config(app, host=host, port=port, log_level=log_level, http=protocol,
                          timeout_keep_alive=keep_alive_s, limit_concurrency=max_connections)


def run(app, **kwargs) -> None:
    """Serve ``app`` until interrupted (see :func:`server_config` for the options)."""
    uvicorn.Server(server_config(app, **kwargs)).run()
