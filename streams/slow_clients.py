"""A deadline for request headers, which aiohttp does not have.

A client that opens a connection and sends its headers a byte at a time
(or never finishes them) holds a connection, a file descriptor and a parser
for as long as it likes; enough of them exhaust the server. Each new
connection's protocol is wrapped: unless the end of its first request's
headers (an empty line) arrives within ``header_timeout_s`` of the
connection, it is closed. After that the connection is aiohttp's, with its
keep-alive timeout for idle time between requests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

_END_OF_HEADERS = b"\r\n\r\n"


class HeaderDeadline(asyncio.Protocol):
    """Wraps one connection's protocol until its first request's headers are complete."""

    def __init__(self, inner: asyncio.Protocol, timeout_s: float) -> None:
        self._inner = inner
        self._timeout_s = timeout_s
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self._timeout_s, self._expire)
        self._inner.connection_made(transport)

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None and not self._transport.is_closing():
            peer = self._transport.get_extra_info("peername")
            log.info("closing %s: no complete request headers in %.0f s", peer, self._timeout_s)
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if _END_OF_HEADERS in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def with_header_deadline(factory: Callable[[], Any], timeout_s: float) -> Callable[[], asyncio.Protocol]:
    """A protocol factory whose connections must finish their first request's headers in ``timeout_s``."""

    def make() -> asyncio.Protocol:
        return HeaderDeadline(factory(), timeout_s)

    return make
