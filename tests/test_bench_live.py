"""The live anchor's benchmarks, run for real (slow: ``--run-slow``)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from anchor.bench.e2e import bench_e2e, write_report
from anchor.bench.soak import bench_soak
from anchor.core.config import AnchorSettings


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="the synthetic viewer speaks with espeak-ng")
async def test_bench_e2e_measures_every_stage_at_the_receiver(tmp_path: Path) -> None:
    result = await bench_e2e(AnchorSettings(), rounds=2)
    paths = write_report(result, tmp_path)
    assert [p.name for p in paths] == ["e2e.json", "e2e.md", "e2e.png"]
    assert paths[2].stat().st_size > 10_000
    for name, stage in result["stages"].items():
        assert stage["n"] == 2, name
        assert math.isfinite(stage["p50"]), name
    assert result["stages"]["voice_to_voice_ms"]["p50"] > 0, "a reply cannot come before the question ends"


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_two_sessions_read_the_news_without_gaps_and_release_everything() -> None:
    result = await bench_soak(AnchorSettings(), minutes=2.0, sessions=2)
    for session in result["sessions"]:
        assert session["gaps_over_40ms"] == 0, session
        assert session["sentences_finished"] > 20, session
    healthy, failed = result["sessions"]
    assert healthy["errors"] == []
    assert any("respond" in e for e in failed["errors"]), failed
    assert result["after_close"]["fds"] <= result["before"]["fds"] + 2
    assert result["after_close"]["tasks"] <= result["before"]["tasks"]
