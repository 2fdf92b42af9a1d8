"""``anchor bench ...``: one table of benchmarks, one way to run them.

Each benchmark is an async function ``(settings, **options) -> dict`` in its
own module, imported only when it runs (its extras, such as matplotlib for
``e2e --report``, are not needed to start the anchor).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchor.app.settings import AppSettings


@dataclass(frozen=True)
class Option:
    flag: str
    dest: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    help: str | None = None
    switch: bool = False
    """A flag that turns ``dest`` off (``--no-listen`` -> ``listen=False``)."""


@dataclass(frozen=True)
class Bench:
    name: str
    help: str
    target: str
    """``module:function``."""
    options: tuple[Option, ...] = field(default_factory=tuple)


def _rounds(default: int, help: str | None = None) -> Option:
    return Option("--rounds", "rounds", default, int, help)


BENCHES = (
    Bench(
        "graph",
        "runtime overhead: first audio and interrupt-to-silence",
        "anchor.bench.graph:bench_graph",
        (_rounds(200), Option("--warmup", "warmup", 20, int)),
    ),
    Bench(
        "tts",
        "each voice: time to first audio, real-time factor, and how it sounds (listening gate)",
        "anchor.bench.tts:bench_tts",
        (
            _rounds(10),
            Option("--warmup", "warmup", 2, int),
            Option("--no-listen", "listen", switch=True, help="timing only: skip DistillMOS, WER and pitch"),
        ),
    ),
    Bench(
        "face",
        "face fps per driver/backend, first frame latency, lip-sync lag",
        "anchor.bench.face:bench_face",
        (_rounds(5),),
    ),
    Bench(
        "streams",
        "viewers per session at 25 fps, WebRTC latency, MQTT round trip",
        "anchor.bench.streams:bench_streams",
        (
            Option("--duration", "duration_s", 120.0, float, "seconds per viewer-count step"),
            Option("--max-viewers", "max_viewers", 16, int),
            Option("--latency-seconds", "latency_s", 20.0, float),
            Option("--mqtt-rounds", "mqtt_rounds", 200, int),
            Option("--no-admission", "admission", switch=True, help="skip the served admission step"),
            Option("--admission-seconds", "admission_s", 30.0, float, "window each admission reading takes"),
            Option("--max-admitted", "max_admitted", 64, int, "stop offering viewers after this many"),
        ),
    ),
    Bench(
        "fanout",
        "viewers through Janus: anchor CPU with 1 vs many, SFU hop latency, republish after a restart",
        "anchor.bench.fanout:bench_fanout",
        (
            Option("--viewers", "viewers", 50, int, "receivers subscribed through the SFU"),
            Option("--seconds", "seconds", 20.0, float, "each measuring window"),
        ),
    ),
    Bench(
        "cluster",
        "sessions over three workers in network namespaces: start, failover (SIGKILL, cut link), news, relay",
        "anchor.bench.cluster:bench_cluster",
        (
            Option("--sessions", "sessions", 4, int, "sessions reading news at once"),
            Option("--logs", "logs", None, Path, "keep every process's log in this folder"),
        ),
    ),
    Bench(
        "e2e",
        "the live anchor measured by a synthetic WebRTC viewer process",
        "anchor.bench.e2e:bench_e2e",
        (
            _rounds(6, "questions, news items and interrupts, each"),
            Option("--report", "report", None, Path, "also write e2e.json, e2e.md and e2e.png here"),
        ),
    ),
    Bench(
        "soak",
        "sessions reading the news for minutes: gaps, memory, release",
        "anchor.bench.soak:bench_soak",
        (Option("--minutes", "minutes", 10.0, float), Option("--sessions", "sessions", 2, int)),
    ),
    Bench(
        "asr",
        "WER per voice/noise condition, RTF per backend, streaming latency",
        "anchor.bench.asr:bench_asr",
        (
            Option(
                "--no-streaming", "streaming", switch=True, help="skip the real-time streaming latency part"
            ),
        ),
    ),
)


def add_bench_parser(
    sub: Any,
    settings_of: Callable[[argparse.Namespace], AppSettings],
    show: Callable[[dict[str, Any], bool], None],
) -> None:
    """``anchor bench NAME ...`` for every entry of ``BENCHES``."""
    parser = sub.add_parser("bench", help="benchmarks (JSON with p50/p90/p95/p99)")
    bench_sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for bench in BENCHES:
        p = bench_sub.add_parser(bench.name, help=bench.help)
        for option in bench.options:
            if option.switch:
                p.add_argument(option.flag, dest=option.dest, action="store_false", help=option.help)
            else:
                p.add_argument(
                    option.flag, dest=option.dest, default=option.default, type=option.type, help=option.help
                )
        p.add_argument("--json", action="store_true")

        def run(args: argparse.Namespace, bench: Bench = bench) -> int:
            module, function = bench.target.split(":")
            measure = getattr(importlib.import_module(module), function)
            options = {option.dest: getattr(args, option.dest) for option in bench.options}
            show(asyncio.run(measure(settings_of(args), **options)), args.json)
            return 0

        p.set_defaults(func=run)
