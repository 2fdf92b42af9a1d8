"""The process-wide runtime: shared worker threads, metrics and open sessions.

Sessions are cheap and many; what is expensive (threads, later the engine
hub with one copy of each model) lives here once and is shared.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import ThreadPoolExecutor

from anchor.core.config import AnchorSettings
from anchor.core.graph import Graph
from anchor.core.metrics import Metrics
from anchor.core.pacer import VideoLook
from anchor.core.session import Session
from engines.engine import open_engine
from engines.hub import EngineHub
from engines.registry import catalog
from engines.threads import shutdown_executor

log = logging.getLogger(__name__)


class Runtime:
    def __init__(self, settings: AnchorSettings | None = None, *, engines: EngineHub | None = None) -> None:
        self.settings = settings or AnchorSettings()
        self.metrics = Metrics(self.settings.metrics.spans_kept)
        self.executor = ThreadPoolExecutor(
            max_workers=self.settings.runtime.worker_threads, thread_name_prefix="anchor-worker"
        )
        self.engines = engines or EngineHub(
            self.settings.engines,
            catalog(self.settings.engines),
            lambda spec: open_engine(spec, self.settings.engines),
            on_batch=self.metrics.observe_batch,
        )
        self.sessions: dict[str, Session] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def open_session(
        self,
        graph: Graph,
        *,
        look: VideoLook | None = None,
        session_id: str | None = None,
        barge_in: bool = True,
        answer_transcripts: bool = False,
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
            engines=self.engines,
            look=look,
            barge_in=barge_in,
            answer_transcripts=answer_transcripts,
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
        await self.engines.aclose()
        grace = self.settings.graph.cancel_timeout_s
        if not await shutdown_executor(self.executor, grace):
            log.error("worker threads still busy %.1fs after shutdown", grace)

    async def __aenter__(self) -> Runtime:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
