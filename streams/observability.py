"""What the server shows Prometheus, read from its live state at each scrape.

Gauges that describe the server (viewers per session, lines live per
session, draining, ready, CPU load) are not kept up to date by the code
that changes them: a collector reads them when ``/metrics`` is scraped, so
a count can never drift from the state it describes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric


class ServerState(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    def viewers(self) -> Mapping[str, int]: ...


class ServerCollector:
    """A Prometheus collector over the server's state; ``live_lines(session)``: lines queued or speaking."""

    def __init__(
        self, server: ServerState, load: Callable[[], float], live_lines: Callable[[], Mapping[str, int]]
    ) -> None:
        self._server = server
        self._load = load
        self._live_lines = live_lines

    def collect(self) -> Iterator[Metric]:
        viewers = GaugeMetricFamily("anchor_viewers", "Connected viewers (WebRTC peers).", labels=["session"])
        for session, count in sorted(self._server.viewers().items()):
            viewers.add_metric([session], count)
        yield viewers
        lines = GaugeMetricFamily(
            "anchor_live_utterances", "Lines queued or being spoken.", labels=["session"]
        )
        for session, count in sorted(self._live_lines().items()):
            lines.add_metric([session], count)
        yield lines
        yield GaugeMetricFamily(
            "anchor_ready",
            "1 when the server takes new viewers and commands.",
            value=float(self._server.ready),
        )
        yield GaugeMetricFamily(
            "anchor_draining",
            "1 while shutting down (new viewers refused).",
            value=float(self._server.draining),
        )
        yield GaugeMetricFamily(
            "anchor_cpu_load", "This process's share of its usable CPUs (5 s average).", value=self._load()
        )
