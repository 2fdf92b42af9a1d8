"""WaveGlow from both public checkpoint formats, against an independent reference computation."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import weight_norm

from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.errors import WeightsError
from engines.export import export_onnx
from engines.spec import relative_error
from engines.vocoders.waveglow_checkpoints import (
    PUBLISHED_SIGMA,
    Denoiser,
    declared_sigma,
    load_waveglow,
    waveglow_spec,
)
from engines.weights import WeightsSource

SMALL = {"n_mel_channels": 80, "n_flows": 6, "n_group": 8, "n_early_every": 2, "n_early_size": 2}
SMALL_WN = {"n_layers": 3, "n_channels": 16, "kernel_size": 3}


# --- the reference: written the way the original computes (weight-norm modules, unfold, lazy inverse)
class RefWN(nn.Module):
    def __init__(self, n_in: int, n_cond: int, n_layers: int, n_channels: int, kernel_size: int) -> None:
        super().__init__()
        self.n_layers, self.n_channels = n_layers, n_channels
        self.in_layers, self.res_skip_layers = nn.ModuleList(), nn.ModuleList()
        self.start = weight_norm(nn.Conv1d(n_in, n_channels, 1), name="weight")
        self.end = nn.Conv1d(n_channels, 2 * n_in, 1)
        self.cond_layer = weight_norm(nn.Conv1d(n_cond, 2 * n_channels * n_layers, 1), name="weight")
        for i in range(n_layers):
            d = 2**i
            self.in_layers.append(
                weight_norm(
                    nn.Conv1d(
                        n_channels,
                        2 * n_channels,
                        kernel_size,
                        dilation=d,
                        padding=(kernel_size * d - d) // 2,
                    )
                )
            )
            out = 2 * n_channels if i < n_layers - 1 else n_channels
            self.res_skip_layers.append(weight_norm(nn.Conv1d(n_channels, out, 1)))

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        audio, spect = pair
        audio, output, spect = self.start(audio), 0, self.cond_layer(spect)
        for i in range(self.n_layers):
            a = self.in_layers[i](audio) + spect[:, i * 2 * self.n_channels : (i + 1) * 2 * self.n_channels]
            acts = self.res_skip_layers[i](
                torch.tanh(a[:, : self.n_channels]) * torch.sigmoid(a[:, self.n_channels :])
            )
            if i < self.n_layers - 1:
                audio = audio + acts[:, : self.n_channels]
                output = output + acts[:, self.n_channels :]
            else:
                output = output + acts
        return self.end(output)


class RefInvertible1x1Conv(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c, c, 1, bias=False)
        w = torch.linalg.qr(torch.randn(c, c))[0]
        if torch.det(w) < 0:
            w[:, 0] = -w[:, 0]
        self.conv.weight.data = w[..., None]

    def reverse(self, z: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "W_inverse"):
            self.W_inverse = self.conv.weight.squeeze().float().inverse()[..., None]
        return F.conv1d(z, self.W_inverse)


class RefWaveGlow(nn.Module):
    def __init__(
        self,
        n_mel_channels: int,
        n_flows: int,
        n_group: int,
        n_early_every: int,
        n_early_size: int,
        WN_config: dict[str, int],
    ) -> None:
        super().__init__()
        self.upsample = nn.ConvTranspose1d(n_mel_channels, n_mel_channels, 1024, stride=256)
        self.n_flows, self.n_group, self.n_early_every, self.n_early_size = (
            n_flows,
            n_group,
            n_early_every,
            n_early_size,
        )
        self.WN, self.convinv = nn.ModuleList(), nn.ModuleList()
        half, remaining = n_group // 2, n_group
        for k in range(n_flows):
            if k % n_early_every == 0 and k > 0:
                half -= n_early_size // 2
                remaining -= n_early_size
            self.convinv.append(RefInvertible1x1Conv(remaining))
            self.WN.append(RefWN(half, n_mel_channels * n_group, **WN_config))
        self.n_remaining_channels = remaining

    def infer(self, spect: torch.Tensor) -> torch.Tensor:  # sigma = 0
        spect = self.upsample(spect)[:, :, : -(1024 - 256)]
        spect = spect.unfold(2, self.n_group, self.n_group).permute(0, 2, 1, 3)
        spect = spect.contiguous().view(spect.size(0), spect.size(1), -1).permute(0, 2, 1)
        audio = torch.zeros(spect.size(0), self.n_remaining_channels, spect.size(2))
        for k in reversed(range(self.n_flows)):
            n_half = audio.size(1) // 2
            out = self.WN[k]((audio[:, :n_half], spect))
            audio = torch.cat(
                [audio[:, :n_half], (audio[:, n_half:] - out[:, :n_half]) / torch.exp(out[:, n_half:])], 1
            )
            audio = self.convinv[k].reverse(audio)
            if k % self.n_early_every == 0 and k > 0:
                audio = torch.cat((torch.zeros(spect.size(0), self.n_early_size, spect.size(2)), audio), 1)
        return audio.permute(0, 2, 1).contiguous().view(audio.size(0), -1)


def _reference(seed: int = 0) -> RefWaveGlow:
    torch.manual_seed(seed)
    model = RefWaveGlow(**SMALL, WN_config=SMALL_WN)
    with torch.no_grad():  # the reference zero-initialises ``end``; give it weights so every path counts
        for p in model.parameters():
            p.mul_(0.5)
        for wn in model.WN:
            wn.end.weight.normal_(0, 0.02)
            wn.end.bias.zero_()
    return model.eval()


def nvidia_checkpoint(tmp: Path, model: RefWaveGlow) -> Path:
    """``torch.save`` of the whole module, pickled from a module named ``glow``."""
    glow = types.ModuleType("glow")
    renamed = {RefWaveGlow: "WaveGlow", RefWN: "WN", RefInvertible1x1Conv: "Invertible1x1Conv"}
    for cls, name in renamed.items():
        cls.__module__, cls.__qualname__ = "glow", name
        setattr(glow, name, cls)
    sys.modules["glow"] = glow
    path = tmp / "waveglow_256channels_universal_v5.pt"
    try:
        torch.save({"model": model, "iteration": 580000, "optimizer": None, "learning_rate": 1e-4}, path)
    finally:
        del sys.modules["glow"]
        for cls, name in renamed.items():
            cls.__module__, cls.__qualname__ = __name__, f"Ref{name}"
    return path


def dle_checkpoint(tmp: Path, model: RefWaveGlow) -> Path:
    """DeepLearningExamples/NGC: ``module.`` prefixes, ``config``, ``cond_layers.i`` per WN layer."""
    state = {}
    for key, value in model.state_dict().items():
        parts = key.split(".")
        if len(parts) == 4 and parts[2] == "cond_layer":
            for i, piece in enumerate(value.chunk(SMALL_WN["n_layers"], 0)):
                state[f"module.{parts[0]}.{parts[1]}.cond_layers.{i}.{parts[3]}"] = piece.clone()
        else:
            state[f"module.{key}"] = value
    path = tmp / "nvidia_waveglowpyt_fp32_20190427"
    torch.save({"state_dict": state, "config": {**SMALL, "WN_config": SMALL_WN}, "epoch": 1000}, path)
    return path


@pytest.fixture(scope="module")
def reference() -> RefWaveGlow:
    return _reference()


@pytest.fixture
def mel() -> torch.Tensor:
    return torch.randn(2, 80, 12, generator=torch.Generator().manual_seed(1)) - 5


@pytest.mark.parametrize("fmt", ["nvidia", "dle"])
def test_both_public_formats_reproduce_the_reference(
    tmp_path: Path, reference: RefWaveGlow, mel: torch.Tensor, fmt: str
) -> None:
    path = (nvidia_checkpoint if fmt == "nvidia" else dle_checkpoint)(tmp_path, reference)
    assert "glow" not in sys.modules
    model = load_waveglow(path)
    assert model.config.n_flows == 6 and model.config.n_channels == 16 and model.config.n_early_every == 2
    with torch.inference_mode():
        expected = reference.infer(mel)
    got = model.infer(mel, sigma=0.0)
    assert got.shape == (2, 12 * 256)
    assert relative_error(got.numpy(), expected.numpy()) < 1e-4
    noisy = model.infer(mel, sigma=0.6, generator=torch.Generator().manual_seed(0))
    assert noisy.shape == got.shape and not torch.allclose(noisy, got)


def test_bad_checkpoints_fail_precisely(tmp_path: Path, reference: RefWaveGlow) -> None:
    path = dle_checkpoint(tmp_path, reference)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(WeightsError, match=r"cut\.pt is truncated or not a torch file"):
        load_waveglow(truncated)
    data = torch.load(path)
    data["config"]["WN_config"]["n_channels"] = 256
    torch.save(data, path)
    with pytest.raises(
        WeightsError, match=r"config and weights disagree: n_channels: config says 256, weights have 16"
    ):
        load_waveglow(path)
    del data["state_dict"]["module.WN.1.in_layers.0.bias"]
    data["config"]["WN_config"]["n_channels"] = 16
    torch.save(data, path)
    with pytest.raises(WeightsError, match=r"missing keys \(1\): WN\.1\.in_layers\.0\.bias"):
        load_waveglow(path)
    with pytest.raises(WeightsError, match="WaveGlow checkpoint not found"):
        load_waveglow(tmp_path / "nope.pt")


def test_streamed_chunks_match_the_whole_utterance(tmp_path: Path, reference: RefWaveGlow) -> None:
    model = load_waveglow(dle_checkpoint(tmp_path, reference))
    mel = torch.randn(1, 80, 150, generator=torch.Generator().manual_seed(2)) - 5
    whole = model.infer(mel, sigma=0.0)[0].numpy()
    hop, chunk, context, parts = 256, 40, 16, []
    for start in range(0, 150, chunk):
        lo, hi = max(0, start - context), min(150, start + chunk + context)
        audio = model.infer(mel[:, :, lo:hi], sigma=0.0)[0].numpy()
        parts.append(audio[(start - lo) * hop : (min(start + chunk, 150) - lo) * hop])
    chunked = np.concatenate(parts)
    assert chunked.shape == whole.shape
    assert relative_error(chunked, whole) < 1e-3


def test_onnx_export_matches_torch_and_denoiser_keeps_length(tmp_path: Path, reference: RefWaveGlow) -> None:
    path = dle_checkpoint(tmp_path, reference)
    spec = waveglow_spec(WeightsSource.path(path))
    module = spec.module(path)
    exported = export_onnx(spec, module, tmp_path / "waveglow.onnx")
    inputs = spec.sample_inputs("opt", batch=2, frames=24)
    inputs["z"] = (np.random.default_rng(0).standard_normal((2, 8, 24 * 32)) * 0.5).astype(np.float32)
    expected = TorchBackend(spec, module).run(inputs)["audio"]
    got = OrtBackend(spec, exported.path).run(inputs)["audio"]
    assert relative_error(got, expected) <= spec.rtol_fp32
    audio = module.infer(torch.from_numpy(inputs["mel"]), sigma=0.0)
    cleaned = Denoiser(module)(audio, strength=0.1)
    assert cleaned.shape == audio.shape


def test_the_sampling_sigma_comes_from_the_checkpoint_or_the_published_default(
    tmp_path: Path, reference: RefWaveGlow
) -> None:
    assert declared_sigma(nvidia_checkpoint(tmp_path, reference)) == PUBLISHED_SIGMA == 0.6
    dle = dle_checkpoint(tmp_path, reference)
    assert declared_sigma(dle) == PUBLISHED_SIGMA
    data = torch.load(dle, weights_only=True)
    data["config"]["sigma"] = 0.1  # as our trainer writes it
    torch.save(data, dle)
    assert declared_sigma(dle) == 0.1
    load_waveglow(dle)  # an extra config key is no reason to refuse the weights
    data["config"]["sigma"] = "loud"
    torch.save(data, dle)
    with pytest.raises(WeightsError, match=r"config sigma must be a number 0\.\.4, got 'loud'"):
        declared_sigma(dle)


async def test_our_waveglow_streams_through_its_stage_exactly_as_it_vocodes_whole() -> None:
    from anchor.speech.vocoder import ChunkedVocoder, waveglow_stage
    from engines.weights import WeightsSource as Source

    path = Source.project("waveglow.pt").resolve()
    model = load_waveglow(path)
    sigma = declared_sigma(path)
    stage = waveglow_stage(sigma)
    mel = torch.randn(1, 80, 150, generator=torch.Generator().manual_seed(3)) - 5
    whole = model.infer(mel, sigma=sigma)[0].numpy()

    async def vocode(window: np.ndarray, keep: range) -> np.ndarray:
        return model.infer(torch.from_numpy(window)[None], sigma=sigma)[0].numpy()

    chunked = ChunkedVocoder(
        vocode,
        hop=256,
        chunk_frames=stage.chunk_frames,
        first_frames=stage.first_frames,
        context=stage.context,
    )
    parts = [a for j in range(0, 150, 10) for a in await chunked.push(mel[0, :, j : j + 10].numpy())]
    parts += await chunked.flush()
    assert len(parts[0]) == stage.first_frames * 256, "the first block is the short one"
    assert relative_error(np.concatenate(parts), whole) < 1e-4
