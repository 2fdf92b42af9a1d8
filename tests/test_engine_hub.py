"""The engine hub with a fake engine that has fault knobs (latency, error)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Mapping
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from torch import nn

from anchor.core.frames import Frame, TextDelta
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.metrics import Metrics
from anchor.core.runtime import Runtime
from anchor.core.stage import Stage
from engines.hub import EngineHub
from engines.settings import EngineSettings
from engines.spec import Arrays, Dim, EngineSpec, TensorSpec
from engines.weights import WeightsSource
from tests.helpers import FAST


def doubling_spec(name: str = "double") -> EngineSpec:
    return EngineSpec(
        name=name,
        description="y = 2x, with fault knobs",
        inputs=(TensorSpec("x", "float32", ("batch", "n")),),
        outputs=(TensorSpec("y", "float32", ("batch", "n")),),
        axes={"batch": Dim(1, 1, 32), "n": Dim(1, 4, 64)},
        weights=WeightsSource.path(Path("/unused")),
        load=lambda _p: nn.Identity(),
    )


class FakeEngine:
    """Doubles its input; knobs: latency per call, and NaN in a row makes the whole call fail."""

    def __init__(self, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
        self.calls: list[int] = []
        self.closed = False

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        x = np.asarray(inputs["x"], dtype=np.float32)
        self.calls.append(x.shape[0])
        time.sleep(self.latency_s)
        if np.isnan(x).any():
            raise FloatingPointError("NaN in the batch")
        return {"y": x * 2}

    def close(self) -> None:
        self.closed = True


def hub_with(
    engine: FakeEngine, metrics: Metrics | None = None, **settings: float
) -> tuple[EngineHub, list[str]]:
    opened: list[str] = []

    def opener(spec: EngineSpec) -> FakeEngine:
        opened.append(spec.name)
        return engine

    specs = {"double": doubling_spec()}
    on_batch = metrics.observe_batch if metrics else None
    return EngineHub(EngineSettings(**settings), specs, opener, on_batch=on_batch), opened  # type: ignore[arg-type]


def row(value: float, n: int = 4, rows: int = 1) -> dict[str, npt.NDArray[np.generic]]:
    return {"x": np.full((rows, n), value, dtype=np.float32)}


async def test_concurrent_callers_are_batched_and_each_gets_its_own_rows() -> None:
    engine, metrics = FakeEngine(latency_s=0.02), Metrics()
    hub, opened = hub_with(engine, metrics, max_batch=16, max_wait_ms=20)
    async with hub:
        requests = [row(float(i), rows=1 + i % 3) for i in range(12)]
        results = await asyncio.gather(*(hub.infer("double", r) for r in requests))
        batcher = await hub.batcher("double")
    assert opened == ["double"], "one loaded copy, shared"
    for request, result in zip(requests, results, strict=True):
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert max(batcher.batches) > 1, f"no batching happened: {batcher.batches}"
    assert all(size <= 16 for size in batcher.batches)
    assert sum(batcher.batches) == sum(r["x"].shape[0] for r in requests)
    assert metrics.value("anchor_engine_batch_rows_count", engine="double") == len(batcher.batches)
    assert metrics.value("anchor_engine_batch_rows_sum", engine="double") == sum(batcher.batches)
    assert engine.closed


async def test_sequential_results_arrive_in_order_per_caller() -> None:
    hub, _ = hub_with(FakeEngine(), max_wait_ms=1)
    async with hub:

        async def caller(k: int) -> list[float]:
            return [float((await hub.infer("double", row(k * 100 + i)))["y"][0, 0]) for i in range(5)]

        outs = await asyncio.gather(*(caller(k) for k in range(4)))
    assert outs == [[2.0 * (k * 100 + i) for i in range(5)] for k in range(4)]


async def test_a_failing_request_fails_only_its_caller() -> None:
    engine = FakeEngine(latency_s=0.01)
    hub, _ = hub_with(engine, max_batch=16, max_wait_ms=30)
    async with hub:
        good = [row(float(i)) for i in range(6)]
        bad = row(float("nan"))
        outcomes = await asyncio.gather(
            *(hub.infer("double", r) for r in [*good[:3], bad, *good[3:]]), return_exceptions=True
        )
    assert isinstance(outcomes[3], FloatingPointError)
    ok = [o for i, o in enumerate(outcomes) if i != 3]
    for request, result in zip(good, ok, strict=True):
        assert isinstance(result, dict)
        np.testing.assert_array_equal(result["y"], request["x"] * 2)
    assert engine.calls[0] == 7, "the first attempt was one batch of all seven"


async def test_different_shapes_are_never_mixed_and_bad_input_is_refused_alone() -> None:
    engine = FakeEngine(latency_s=0.01)
    hub, _ = hub_with(engine, max_wait_ms=20)
    async with hub:
        mixed = [row(1.0, n=4), row(2.0, n=8), row(3.0, n=4), row(4.0, n=8)]
        results = await asyncio.gather(*(hub.infer("double", r) for r in mixed))
        with pytest.raises(ValueError, match=r"x axis 'n' must be in \[1, 64\], got 65"):
            await hub.infer("double", row(1.0, n=65))
        with pytest.raises(KeyError, match="unknown engine 'nope'; known: \\['double'\\]"):
            await hub.infer("nope", row(1.0))
    assert [r["y"].shape[1] for r in results] == [4, 8, 4, 8]
    assert sorted(engine.calls) == [2, 2]


async def test_closing_the_hub_stops_its_threads() -> None:
    before = {t.ident for t in threading.enumerate()}
    hub, _ = hub_with(FakeEngine())
    await hub.infer("double", row(1.0))
    await hub.aclose()
    assert {t.ident for t in threading.enumerate()} <= before


async def test_stages_of_different_sessions_share_one_engine_and_batch_together() -> None:
    class Vocode(Stage):
        """Sends each text's value through the shared engine and checks the answer."""

        accepts = (TextDelta,)

        def __init__(self) -> None:
            super().__init__("vocode")
            self.answers: list[float] = []

        async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
            assert isinstance(frame, TextDelta)
            value = float(frame.text)
            out = await self.ctx.infer("double", {"x": np.full((1, 4), value, np.float32)})
            self.answers.append(float(out["y"][0, 0]) / 2)
            yield frame

    engine = FakeEngine(latency_s=0.02)
    # A generous wait: the six requests coalesce even when a loaded CPU delays some of them.
    hub, opened = hub_with(engine, max_wait_ms=250)
    stages = [Vocode() for _ in range(6)]
    async with Runtime(FAST, engines=hub) as rt:
        sessions = [await rt.open_session(Graph().add(s).link(s, AUDIO_OUT)) for s in stages]
        await asyncio.gather(
            *(s.push(TextDelta(text=str(i), utterance_id=f"{s.id}/u")) for i, s in enumerate(sessions))
        )
        async with asyncio.timeout(10):
            for stage in stages:
                while not stage.answers:  # noqa: ASYNC110 - waiting on stage state in a test
                    await asyncio.sleep(0.005)
        batcher = await hub.batcher("double")
        batches = list(batcher.batches)
    assert [s.answers for s in stages] == [[float(i)] for i in range(6)]
    assert opened == ["double"] and max(batches) > 1, f"sessions did not batch: {batches}"
