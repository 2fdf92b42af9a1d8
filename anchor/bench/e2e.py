"""``anchor bench e2e``: the live anchor on its default models, measured by a synthetic viewer.

The anchor is served here (``anchor run``'s graph: Whisper, the faq
responder, the default voice and face, WebRTC) on a free loopback port,
with a throwaway news queue. The viewer (``anchor.bench.viewer``) runs in a
separate process, so its decoding and timing share nothing with the
anchor's event loop. Results: p50/p90/p99 per stage, with the targets, as
JSON; with ``report``, also ``e2e.json``, ``e2e.md`` and ``e2e.png``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from anchor.app.live import LiveAnchor, while_serving
from anchor.app.settings import AppSettings
from anchor.core.stats import summarize
from anchor.speech.voices import Voice

# stage -> (statistic, limit or None for a reported-only stage, meaning)
TARGETS: dict[str, tuple[str, float | None, str]] = {
    "voice_to_voice_ms": ("p50", 1200.0, "end of viewer speech -> first reply audio packet"),
    "first_mouth_frame_ms": ("p50", None, "end of viewer speech -> first mouth-moving frame"),
    "news_to_audio_ms": ("p50", 300.0, "news command -> first audio packet"),
    "interrupt_to_silence_ms": ("p95", 250.0, "interrupt -> silence at the receiver"),
    "av_offset_ms": (
        "max_abs",
        40.0,
        "mouth opening's lag behind the audio envelope, RTP/sender-report time",
    ),
    "av_arrival_skew_ms": ("max_abs", None, "first mouth frame - first reply audio, by arrival"),
}


async def _run_viewer(url: str, rounds: int, size: tuple[int, int], out: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "anchor.bench.viewer", url, "--rounds", str(rounds), "--out", str(out),
        "--size", str(size[0]), str(size[1]),
    )  # fmt: skip
    try:
        code = await process.wait()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if code != 0:
        raise RuntimeError(f"the synthetic viewer failed with exit code {code}")


async def bench_e2e(settings: AppSettings, *, rounds: int = 6, report: Path | None = None) -> dict[str, Any]:
    """The measures and their targets; ``report``: also write e2e.json, e2e.md and the chart there."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "viewer.json"
        news = settings.news.model_copy(update={"database": Path(tmp) / "news.sqlite3"})
        webrtc = settings.webrtc.model_copy(update={"port": 0, "host": "127.0.0.1"})
        settings = settings.model_copy(update={"news": news, "webrtc": webrtc})

        async def view(live: LiveAnchor) -> None:
            await _run_viewer(live.server.url, rounds, (settings.media.width, settings.media.height), out)

        await while_serving(settings, view)
        measured = json.loads(out.read_text())
    stages: dict[str, Any] = {}
    for name, (statistic, target, meaning) in TARGETS.items():
        values = measured["samples"][name]
        summary = summarize(values)
        value = (
            max((abs(v) for v in values), default=None) if statistic == "max_abs" else summary.get(statistic)
        )
        met = None if target is None else value is not None and value <= target
        stages[name] = {"meaning": meaning, **summary, "target": {statistic: target, "met": met}}
    result: dict[str, Any] = {
        "rounds": rounds,
        "face": settings.face.driver,
        "voice": Voice(settings.voice.name, settings.voice.vocoder).label,
        "questions": measured["questions"],
        "stages": stages,
    }
    if report is not None:
        result["report"] = [str(path) for path in await asyncio.to_thread(write_report, result, report)]
    return result


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"# anchor bench e2e ({result['rounds']} rounds per stage, "
        f"face: {result['face']}, voice: {result['voice']})",
        "",
        "| stage | min ms | p50 ms | p90 ms | p99 ms | max ms | target | met |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, stage in result["stages"].items():
        (statistic, target), met = next(iter(stage["target"].items())), stage["target"]["met"]
        goal = "-" if target is None else f"{statistic} <= {target:g}"
        cells = " | ".join(str(stage.get(k, "-")) for k in ("min", "p50", "p90", "p99", "max"))
        lines.append(f"| {name} | {cells} | {goal} | {'-' if met is None else 'yes' if met else 'no'} |")
    return "\n".join(lines) + "\n"


def chart(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["stages"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.27
    for n, statistic in enumerate(("p50", "p90", "p99")):
        values = [abs(result["stages"][name].get(statistic, 0.0)) for name in names]
        ax.bar([i + (n - 1) * width for i in range(len(names))], values, width, label=statistic)
    for i, name in enumerate(names):
        target = next(iter(result["stages"][name]["target"].values()))
        if target is not None:
            ax.hlines(target, i - 1.5 * width, i + 1.5 * width, colors="black", linestyles="dashed")
    ax.set_xticks(range(len(names)), [n.removesuffix("_ms").replace("_", " ") for n in names], rotation=15)
    ax.set_ylabel("ms (dashed: target)")
    ax.set_title("anchor bench e2e, received at a loopback WebRTC viewer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "e2e.json", directory / "e2e.md", directory / "e2e.png"]
    paths[0].write_text(json.dumps(result, indent=2))
    paths[1].write_text(markdown(result))
    chart(result, paths[2])
    return paths
