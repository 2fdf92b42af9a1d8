"""Per-utterance spans and process metrics (Prometheus text + JSON for benchmarks).

One ``Metrics`` object per process, owned by the runtime (no module-level
registry), so tests and several runtimes in one process never share counters.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from anchor.core.stats import summarize

# Marks an utterance span may carry, in the order they normally happen.
MARKS = ("first_text", "first_audio", "first_video", "silence", "end")
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)


@dataclass
class UtteranceSpan:
    session_id: str
    utterance_id: str
    start_ns: int
    marks: dict[str, int] = field(default_factory=dict)
    outcome: str = "live"
    error: str = ""

    def ms(self, mark: str) -> float | None:
        at = self.marks.get(mark)
        return None if at is None else (at - self.start_ns) / 1e6

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "utterance": self.utterance_id,
            "outcome": self.outcome,
            "error": self.error,
            **{f"{m}_ms": self.ms(m) for m in MARKS if m in self.marks},
        }


class Metrics:
    def __init__(self, spans_kept: int = 2000) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.first_text = self._latency("anchor_first_text_seconds", "Command in -> first response text.")
        self.first_audio = self._latency(
            "anchor_first_audio_seconds", "Command in -> first speech audio released at the edge."
        )
        self.first_video = self._latency(
            "anchor_first_video_seconds", "Command in -> first speaking video frame at the edge."
        )
        self.interrupt_to_silence = self._latency(
            "anchor_interrupt_to_silence_seconds", "Interrupt -> first silent frame at the edge."
        )
        self.stage_latency = Histogram(
            "anchor_stage_latency_seconds",
            "Time a stage spends on one input frame.",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=reg,
        )
        self.stage_errors = Counter(
            "anchor_stage_errors", "Utterances ended by a stage error.", ["stage"], registry=reg
        )
        self.utterances = Counter(
            "anchor_utterances", "Finished utterances by outcome.", ["outcome"], registry=reg
        )
        self.frames_dropped = Counter(
            "anchor_frames_dropped",
            "Media frames dropped by overflow or lateness.",
            ["where"],
            registry=reg,
        )
        self.audio_underrun = Counter(
            "anchor_audio_underrun_seconds",
            "Silence inserted mid-utterance because audio was late.",
            registry=reg,
        )
        self.sessions = Gauge("anchor_sessions", "Open sessions.", registry=reg)
        self.engine_batch_rows = Histogram(
            "anchor_engine_batch_rows",
            "Rows per engine run (micro-batches joined from concurrent requests).",
            ["engine"],
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=reg,
        )
        self._live: dict[str, UtteranceSpan] = {}
        self._done: deque[UtteranceSpan] = deque(maxlen=spans_kept)
        self._interrupts: deque[float] = deque(maxlen=spans_kept)
        self._stage_ms: dict[str, deque[float]] = {}
        self._spans_kept = spans_kept

    def _latency(self, name: str, doc: str) -> Histogram:
        return Histogram(name, doc, buckets=_LATENCY_BUCKETS, registry=self.registry)

    def start(self, session_id: str, utterance_id: str, at_ns: int | None = None) -> UtteranceSpan:
        span = UtteranceSpan(session_id, utterance_id, at_ns or time.monotonic_ns())
        self._live[utterance_id] = span
        return span

    def mark(self, utterance_id: str, mark: str, at_ns: int | None = None) -> None:
        """Record the first time ``mark`` happens for a live utterance."""
        span = self._live.get(utterance_id)
        if span is None or mark in span.marks:
            return
        at = at_ns or time.monotonic_ns()
        span.marks[mark] = at
        seconds = (at - span.start_ns) / 1e9
        if mark == "first_text":
            self.first_text.observe(seconds)
        elif mark == "first_audio":
            self.first_audio.observe(seconds)
        elif mark == "first_video":
            self.first_video.observe(seconds)

    def finish(self, utterance_id: str, outcome: str, error: str = "") -> UtteranceSpan | None:
        span = self._live.pop(utterance_id, None)
        if span is None:
            return None
        span.marks.setdefault("end", time.monotonic_ns())
        span.outcome = outcome
        span.error = error
        self.utterances.labels(outcome).inc()
        self._done.append(span)
        return span

    def observe_interrupt(self, interrupt_ns: int, silence_ns: int) -> None:
        seconds = max(0.0, (silence_ns - interrupt_ns) / 1e9)
        self.interrupt_to_silence.observe(seconds)
        self._interrupts.append(seconds * 1000)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stage_latency.labels(stage).observe(seconds)
        kept = self._stage_ms.setdefault(stage, deque(maxlen=self._spans_kept))
        kept.append(seconds * 1000)

    def observe_batch(self, engine: str, rows: int) -> None:
        self.engine_batch_rows.labels(engine).observe(rows)

    def value(self, name: str, **labels: str) -> float:
        """The current value of the sample ``name`` with ``labels`` (0 when it was never set)."""
        found = self.registry.get_sample_value(name, labels)
        return 0.0 if found is None else float(found)

    def spans(self) -> list[UtteranceSpan]:
        return [*self._done, *self._live.values()]

    def prometheus_text(self) -> str:
        return generate_latest(self.registry).decode("utf-8")

    def dump(self) -> dict[str, Any]:
        """Spans and percentile summaries, for benchmarks and ``anchor demo --json``."""
        done = list(self._done)
        summary: dict[str, Any] = {}
        for m in ("first_text", "first_audio", "first_video"):
            summary[f"{m}_ms"] = summarize([v for s in done if (v := s.ms(m)) is not None])
        summary["interrupt_to_silence_ms"] = summarize(list(self._interrupts))
        summary["stage_ms"] = {k: summarize(list(v)) for k, v in sorted(self._stage_ms.items())}
        return {"summary": summary, "spans": [s.to_json() for s in self.spans()]}
