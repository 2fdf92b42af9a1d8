"""The ``anchor`` command line.

argparse stops at this edge: arguments become typed settings and plain
values before anything else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anchor.config import AnchorSettings, ConfigError, load_settings
from engines.registry import catalog
from engines.spec import EngineSpec
from engines.tools import build_engines, list_engines
from engines.weights import WeightsError


def _settings(args: argparse.Namespace) -> AnchorSettings:
    path: Path | None = args.config
    return load_settings(path)


def _cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(settings.model_dump(mode="json"), indent=2))
    return 0


def _cmd_bench_graph(args: argparse.Namespace) -> int:
    from anchor.bench.graph import bench_graph

    result = asyncio.run(bench_graph(_settings(args), rounds=args.rounds, warmup=args.warmup))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key in ("overhead_first_audio_ms", "interrupt_to_silence_ms"):
            s = result[key]
            print(f"{key:28s} p50 {s['p50']:7.3f}  p95 {s['p95']:7.3f}  p99 {s['p99']:7.3f}  (n={s['n']})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from anchor.demo import run_demo

    texts = args.text or [
        "Good evening, this is the anchor runtime.",
        "Every word you hear is a tone, paced in real time, until the real voice lands.",
    ]
    result = asyncio.run(run_demo(_settings(args), texts, args.out, tail_s=args.tail))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "prometheus"}, indent=2))
        return 0
    print(f"wrote {result['wav']} ({result['recorded_frames']} audio frames)")
    for span in result["spans"]:
        marks = ", ".join(f"{k} {v:.1f}" for k, v in span.items() if k.endswith("_ms") and v is not None)
        print(f"  {span['utterance']}: {span['outcome']}; {marks}")
    if args.metrics:
        print(result["prometheus"])
    return 0


def _engine_specs(settings: AnchorSettings, only: list[str] | None = None) -> dict[str, EngineSpec]:
    specs = catalog(settings.engines)
    unknown = sorted(set(only or []) - set(specs))
    if unknown:
        raise ConfigError(f"unknown engine(s) {unknown}; known: {sorted(specs)}")
    return {k: v for k, v in specs.items() if not only or k in only}


def _print(result: dict[str, Any] | list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for row in result if isinstance(result, list) else [result]:
        print("  ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, dict | list)))
        for k, v in row.items():
            if isinstance(v, dict | list):
                print(f"    {k}: {json.dumps(v)}")


def _cmd_engines_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _print(list_engines(_engine_specs(settings), settings.engines), args.json)
    return 0


def _cmd_engines_build(args: argparse.Namespace) -> int:
    settings = _settings(args)
    report = build_engines(_engine_specs(settings, args.engine), settings.engines)
    _print(report, args.json)
    return 0 if all(r.get("status") == "ok" for r in report) else 1


def _cmd_engines_bench(args: argparse.Namespace) -> int:
    from anchor.bench.engines import bench_engine

    settings = _settings(args)
    spec = _engine_specs(settings, [args.name])[args.name]
    try:
        batches = [int(b) for b in args.batch.split(",")]
        sizes = dict(item.split("=", 1) for item in args.size)
        axis_sizes = {k: int(v) for k, v in sizes.items()}
    except ValueError:
        raise ConfigError(
            f"--batch takes integers like 1,4,16 and --size AXIS=N, got {args.batch!r} {args.size}"
        ) from None
    result = bench_engine(
        spec,
        settings.engines,
        batches=batches,
        backend=args.backend,
        iterations=args.iterations,
        warmup=args.warmup,
        **axis_sizes,
    )
    _print(result, args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchor", description="Streaming real-time virtual anchor.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the effective, validated configuration as JSON")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser("demo", help="run a paced session end to end and record its audio")
    p.add_argument("text", nargs="*", help="sentences to speak (one utterance each)")
    p.add_argument("-o", "--out", type=Path, default=Path("anchor-demo.wav"), help="WAV to write")
    p.add_argument("--tail", type=float, default=0.5, help="seconds of idle to record at the end")
    p.add_argument("--json", action="store_true", help="print spans and summaries as JSON")
    p.add_argument("--metrics", action="store_true", help="print Prometheus metrics at the end")
    p.set_defaults(func=_cmd_demo)

    engines = sub.add_parser("engines", help="neural engines: list, build (ONNX/TensorRT), bench")
    engines_sub = engines.add_subparsers(dest="engines", required=True, metavar="ACTION")
    p = engines_sub.add_parser("list", help="each engine, its backend, precision and weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines_list)
    p = engines_sub.add_parser("build", help="export and check ONNX, prove parity, build TensorRT plans")
    p.add_argument("engine", nargs="*", help="engines to build (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines_build)
    p = engines_sub.add_parser("bench", help="latency p50/p90/p99 and throughput per batch size")
    p.add_argument("name", help="engine name (see 'anchor engines list')")
    p.add_argument("--batch", default="1,4,16", help="comma-separated batch sizes")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default=None)
    p.add_argument("--size", action="append", default=[], metavar="AXIS=N", help="e.g. frames=128")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines_bench)

    bench = sub.add_parser("bench", help="benchmarks (JSON with p50/p90/p95/p99)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    p = bench_sub.add_parser("graph", help="runtime overhead: first audio and interrupt-to-silence")
    p.add_argument("--rounds", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench_graph)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except (ConfigError, WeightsError) as exc:
        print(f"anchor: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
