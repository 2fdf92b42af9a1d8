"""Stopping worker threads from async code without blocking the event loop."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor


async def shutdown_executor(executor: ThreadPoolExecutor, grace_s: float | None = None) -> bool:
    """Shut ``executor`` down and wait for its threads; False if still busy after ``grace_s``."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not done.done():
            done.set_result(None)

    def shutdown() -> None:
        executor.shutdown(wait=True, cancel_futures=True)
        loop.call_soon_threadsafe(resolve)

    closer = threading.Thread(target=shutdown, name="executor-shutdown", daemon=True)
    closer.start()
    try:
        await asyncio.wait_for(done, grace_s)
    except TimeoutError:
        return False
    closer.join()  # its last step was resolving ``done``: returns at once
    return True
