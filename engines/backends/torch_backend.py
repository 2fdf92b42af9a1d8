"""The ``torch`` backend: CPU, or CUDA with fp16 and CUDA-graph replay for repeated shapes."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.spec import Arrays, EngineSpec

_GRAPHS_KEPT = 8
_GRAPH_AFTER_CALLS = 2


class _Captured:
    """A CUDA graph with its static input and output buffers."""

    def __init__(self, module: nn.Module, inputs: list[torch.Tensor]) -> None:
        self.inputs = [t.clone() for t in inputs]
        side = torch.cuda.Stream()  # type: ignore[no-untyped-call]
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(3):  # warm up allocator and kernels outside the capture
                module(*self.inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            out = module(*self.inputs)
        self.outputs = list(out) if isinstance(out, tuple | list) else [out]

    def replay(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        for static, value in zip(self.inputs, inputs, strict=True):
            static.copy_(value)
        self.graph.replay()
        return [o.clone() for o in self.outputs]


class TorchBackend:
    name = "torch"

    def __init__(
        self,
        spec: EngineSpec,
        module: nn.Module,
        *,
        device: str = "cpu",
        fp16: bool = False,
        cuda_graphs: bool = False,
        threads: int | None = None,
    ) -> None:
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("torch backend asked for CUDA, but torch.cuda.is_available() is False")
        if threads is not None and device == "cpu":
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = device
        self.half = fp16 and device == "cuda"
        self.precision = "fp16" if self.half else "fp32"
        self.module = module.to(device=device, dtype=torch.float16 if self.half else torch.float32).eval()
        self.cuda_graphs = cuda_graphs and device == "cuda"
        self._graphs: OrderedDict[tuple[tuple[int, ...], ...], _Captured] = OrderedDict()
        self._seen: dict[tuple[tuple[int, ...], ...], int] = {}

    def _tensor(self, array: npt.NDArray[np.generic]) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(array)).to(self.device, non_blocking=True)
        return t.half() if self.half and t.is_floating_point() else t

    def run(self, inputs: Mapping[str, npt.NDArray[np.generic]]) -> Arrays:
        args = [self._tensor(inputs[t.name]) for t in self.spec.inputs]
        with torch.inference_mode():
            outs = self._forward(args)
        return {
            t.name: o.float().cpu().numpy() if o.is_floating_point() else o.cpu().numpy()
            for t, o in zip(self.spec.outputs, outs, strict=True)
        }

    def _forward(self, args: list[torch.Tensor]) -> list[torch.Tensor]:
        if not self.cuda_graphs:
            out = self.module(*args)
            return list(out) if isinstance(out, tuple | list) else [out]
        key = tuple(tuple(a.shape) for a in args)
        captured = self._graphs.get(key)
        if captured is None:
            # Capture only shapes that repeat: a one-off shape is not worth a graph.
            self._seen[key] = self._seen.get(key, 0) + 1
            if self._seen[key] < _GRAPH_AFTER_CALLS:
                out = self.module(*args)
                return list(out) if isinstance(out, tuple | list) else [out]
            captured = _Captured(self.module, args)
            self._graphs[key] = captured
            while len(self._graphs) > _GRAPHS_KEPT:
                self._graphs.popitem(last=False)
        self._graphs.move_to_end(key)
        return captured.replay(args)

    def close(self) -> None:
        self._graphs.clear()
        if self.device == "cuda":
            torch.cuda.empty_cache()
