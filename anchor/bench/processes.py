"""The bench's served fake anchor as a child process, and waiting for an HTTP endpoint to answer."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import sys
from collections.abc import AsyncIterator, Mapping

import aiohttp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until_http_ok(
    http: aiohttp.ClientSession, url: str, timeout_s: float, every_s: float = 0.2
) -> None:
    """Until ``GET url`` answers 200 (connection errors count as not yet), at most ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(every_s)


@contextlib.asynccontextmanager
async def served_fake(
    size: int, *, stamp: bool = False, env: Mapping[str, str] | None = None
) -> AsyncIterator[tuple[str, int]]:
    """``anchor.bench.served_fake`` in a process of its own, ready: its URL and pid. ``env`` adds to the
    environment (``ANCHOR_*`` settings); ``stamp`` draws frame numbers into its pictures."""
    port = free_port()
    argv = ["-m", "anchor.bench.served_fake", "--port", str(port), "--size", str(size)]
    server = await asyncio.create_subprocess_exec(
        sys.executable, *argv, *(["--stamp"] if stamp else []), env={**os.environ, **(env or {})}
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            await until_http_ok(http, f"{url}/readyz", 60)
        yield url, server.pid
    finally:
        server.terminate()
        try:
            async with asyncio.timeout(15):
                await server.wait()
        except TimeoutError:
            server.kill()
            await server.wait()
            raise RuntimeError("the served fake anchor did not stop on SIGTERM within 15 s") from None
