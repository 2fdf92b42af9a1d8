"""The process-wide runtime: shared worker threads, metrics and open sessions.

Sessions are cheap and many; what is expensive (threads, later the engine
hub with one copy of each model) lives here once and is shared.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from anchor.config import AnchorSettings
from anchor.graph import Graph
from anchor.metrics import Metrics
from anchor.pacer import IdleVideo
from anchor.session import Session

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: AnchorSettings | None = None) -> None:
        self.settings = settings or AnchorSettings()
        self.metrics = Metrics(self.settings.metrics.spans_kept)
        self.executor = ThreadPoolExecutor(
            max_workers=self.settings.runtime.worker_threads, thread_name_prefix="anchor-worker"
        )
        self.sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def open_session(
        self,
        graph: Graph,
        *,
        idle: IdleVideo | None = None,
        session_id: str | None = None,
        barge_in: bool = True,
    ) -> Session:
        """Build, start and register a session running ``graph``."""
        if self._closed:
            raise RuntimeError("runtime is closed")
        sid = session_id or f"s{next(self._ids)}"
        if sid in self.sessions:
            raise ValueError(f"session id {sid!r} is already open")
        session = Session(
            sid,
            graph,
            settings=self.settings,
            metrics=self.metrics,
            executor=self.executor,
            idle=idle,
            barge_in=barge_in,
        )
        try:
            await session.start()
        except BaseException:
            await session.aclose()
            raise
        self.sessions[sid] = session
        return session

    async def close_session(self, session_id: str) -> None:
        session = self.sessions.pop(session_id, None)
        if session is not None:
            await session.aclose()

    async def aclose(self) -> None:
        """Close every session, then stop the worker threads (without blocking the loop)."""
        if self._closed:
            return
        self._closed = True
        for sid in list(self.sessions):
            await self.close_session(sid)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def resolve() -> None:
            if not done.done():
                done.set_result(None)

        def shutdown() -> None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            loop.call_soon_threadsafe(resolve)

        closer = threading.Thread(target=shutdown, name="anchor-executor-shutdown", daemon=True)
        closer.start()
        try:
            await asyncio.wait_for(done, self.settings.graph.cancel_timeout_s)
        except TimeoutError:
            log.error("worker threads still busy %.1fs after shutdown", self.settings.graph.cancel_timeout_s)
            return
        # Its last step was resolving ``done``: this join returns at once.
        closer.join()

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
