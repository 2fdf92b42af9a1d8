"""What the server shows Prometheus, read from its live state at each scrape.

Gauges that describe the server (viewers per session, lines live per
session, draining, ready, CPU load) are not kept up to date by the code
that changes them: a collector reads them when ``/metrics`` is scraped, so
a count can never drift from the state it describes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Protocol

from prometheus_client.core import GaugeMetricFamily, Metric


class ServerState(Protocol):
    @property
    def ready(self) -> bool: ...

    @property
    def draining(self) -> bool: ...

    def viewers(self) -> Mapping[str, int]: ...

    def fanout_counts(self) -> Mapping[str, int]: ...

    def live_lines(self) -> Mapping[str, int]: ...

    def load(self) -> float: ...

    def drops(self) -> float: ...


class ServerCollector:
    """A Prometheus collector over the server's state."""

    def __init__(self, server: ServerState) -> None:
        self._server = server

    def collect(self) -> Iterator[Metric]:
        viewers = GaugeMetricFamily("anchor_viewers", "Connected viewers (WebRTC peers).", labels=["session"])
        for session, count in sorted(self._server.viewers().items()):
            viewers.add_metric([session], count)
        yield viewers
        fanout = GaugeMetricFamily(
            "anchor_fanout_viewers",
            "Viewers subscribed through the SFU (fanout.mode = janus).",
            labels=["session"],
        )
        for session, count in sorted(self._server.fanout_counts().items()):
            fanout.add_metric([session], count)
        yield fanout
        lines = GaugeMetricFamily(
            "anchor_live_utterances", "Lines queued or being spoken.", labels=["session"]
        )
        for session, count in sorted(self._server.live_lines().items()):
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
            "anchor_cpu_load",
            "This process's share of its usable CPUs (5 s average).",
            value=self._server.load(),
        )
        yield GaugeMetricFamily(
            "anchor_viewer_drops_per_second",
            "Video frames the viewers' encoders dropped per second, together (5 s average).",
            value=self._server.drops(),
        )
