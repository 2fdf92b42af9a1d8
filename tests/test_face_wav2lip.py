"""Wav2Lip: both public checkpoint formats, its exact mel, streaming windows, ONNX parity, paste-back."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import torch

from anchor.face.portrait import Box, default_image, make_portrait
from anchor.face.wav2lip_driver import Wav2LipDriver, wav2lip_crop
from engines.audio.mel import MelConfig, mel_basis
from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.errors import WeightsError
from engines.export import export_onnx
from engines.face.wav2lip import (
    ConvBlock,
    Wav2Lip,
    load_wav2lip,
    mel_start,
    mel_windows,
    melspectrogram,
    streaming_windows,
    wav2lip_spec,
)
from engines.spec import relative_error
from engines.weights import WeightsSource

MANIFEST = json.loads((Path(__file__).parent / "data" / "wav2lip_state_dict.json").read_text())


def random_model(seed: int = 0) -> Wav2Lip:
    torch.manual_seed(seed)
    model = Wav2Lip()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so a wrong buffer mapping shows
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def original_checkpoint(path: Path, model: Wav2Lip) -> Path:
    """The published ``wav2lip.pth`` layout: DataParallel keys under ``state_dict``, plus training state."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(
        {"state_dict": state, "optimizer": {"state": {}}, "global_step": 250000, "global_epoch": 7}, path
    )
    return path


def whole_module_checkpoint(path: Path, model: Wav2Lip) -> Path:
    """A whole pickled module whose classes live in the original ``models`` package (absent at load)."""
    conv = types.ModuleType("models.conv")
    top = types.ModuleType("models.wav2lip")
    conv.Conv2d = type("Conv2d", (ConvBlock,), {"__module__": "models.conv"})  # type: ignore[attr-defined]
    conv.Conv2dTranspose = type("Conv2dTranspose", (ConvBlock,), {"__module__": "models.conv"})  # type: ignore[attr-defined]
    top.Wav2Lip = type("Wav2Lip", (Wav2Lip,), {"__module__": "models.wav2lip"})  # type: ignore[attr-defined]
    for module in model.modules():
        if isinstance(module, ConvBlock):
            transposed = isinstance(module.conv_block[0], torch.nn.ConvTranspose2d)
            module.__class__ = conv.Conv2dTranspose if transposed else conv.Conv2d  # type: ignore[attr-defined]
    model.__class__ = top.Wav2Lip  # type: ignore[attr-defined]
    sys.modules.update({"models": types.ModuleType("models"), "models.conv": conv, "models.wav2lip": top})
    try:
        torch.save(model, path)
    finally:
        for name in ("models", "models.conv", "models.wav2lip"):
            sys.modules.pop(name, None)
    return path


def test_module_matches_the_public_manifest() -> None:
    state = Wav2Lip().state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == MANIFEST
    assert sum(p.numel() for p in Wav2Lip().parameters()) == 36_298_035


@pytest.mark.parametrize("layout", ["state_dict", "whole_module"])
def test_both_public_formats_load_and_run_deterministically(tmp_path: Path, layout: str) -> None:
    reference = random_model()
    audio = torch.from_numpy(np.random.default_rng(1).uniform(-4, 4, (3, 1, 80, 16)).astype(np.float32))
    faces = torch.rand(3, 6, 96, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = reference(audio, faces)
    writer = original_checkpoint if layout == "state_dict" else whole_module_checkpoint
    path = writer(tmp_path / "wav2lip_gan.pth", random_model())
    model = load_wav2lip(path)
    with torch.no_grad():
        first, second = model(audio, faces), model(audio, faces)
    assert first.shape == (3, 3, 96, 96)
    assert torch.equal(first, second), "eval mode: the same input gives the same face"
    assert torch.allclose(first, expected, atol=1e-6)
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_a_mismatched_checkpoint_names_the_key_and_shapes(tmp_path: Path) -> None:
    state = {f"module.{k}": v for k, v in Wav2Lip().state_dict().items()}
    state["module.output_block.1.weight"] = torch.zeros(3, 16, 1, 1)
    torch.save({"state_dict": state}, tmp_path / "bad.pth")
    with pytest.raises(
        WeightsError, match=r"output_block\.1\.weight: expected shape \(3, 32, 1, 1\), found \(3, 16, 1, 1\)"
    ):
        load_wav2lip(tmp_path / "bad.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "bad.pth").read_bytes()[:5000])
    with pytest.raises(WeightsError, match="truncated"):
        load_wav2lip(tmp_path / "cut.pth")


def reference_mel(wav: np.ndarray) -> np.ndarray:
    """Wav2Lip's audio.py, step by step: lfilter pre-emphasis, centred reflect-padded STFT, dB, normalise."""
    y = scipy.signal.lfilter([1, -0.97], [1], wav.astype(np.float64))
    spec = torch.stft(
        torch.from_numpy(y), 800, 200, 800, torch.hann_window(800, dtype=torch.float64),
        center=True, pad_mode="reflect", return_complex=True,
    ).abs().numpy()  # fmt: skip
    basis = mel_basis(
        MelConfig(sample_rate=16000, n_fft=800, hop_length=200, win_length=800, fmin=55, fmax=7600)
    )
    db = 20 * np.log10(np.maximum(1e-5, basis.astype(np.float64) @ spec)) - 20
    return np.clip(8 * (db + 100) / 100 - 4, -4, 4)


def test_mel_is_wav2lips_on_test_signals() -> None:
    t = np.arange(32000) / 16000
    rng = np.random.default_rng(0)
    for wav in (0.5 * np.sin(2 * np.pi * 1000 * t), rng.standard_normal(32000) * 0.1, np.zeros(16000)):
        ours = melspectrogram(wav.astype(np.float32))
        assert ours.shape == (80, 1 + len(wav) // 200)
        assert np.abs(ours - reference_mel(wav)).max() < 1e-4
    assert np.all(melspectrogram(np.zeros(8000, dtype=np.float32)) == -4.0), "silence sits at the floor"
    tone = 0.99 * np.sin(2 * np.pi * 1000 * t)
    assert 2.5 < melspectrogram(tone.astype(np.float32)).max() < 4.0, "a full-scale tone sits below the clip"
    assert melspectrogram((8 * tone).astype(np.float32)).max() == 4.0, "normalisation clips at +4"


def test_streaming_windows_equal_the_whole_file_windows() -> None:
    wav = (np.random.default_rng(3).standard_normal(16000 * 3) * 0.1).astype(np.float32)
    whole = mel_windows(melspectrogram(wav), 0, 60, 25.0)
    assert mel_start(7, 25.0) == 22, "int(i * 80 / fps)"
    for first, count in ((0, 4), (1, 8), (20, 8), (52, 8)):
        keep_from = max(0, mel_start(first, 25.0) * 200 - 401)
        got = streaming_windows(wav[keep_from:], keep_from, first, count, 25.0)
        assert np.array_equal(got, whole[first : first + count])


def test_onnx_export_matches_torch(tmp_path: Path) -> None:
    path = original_checkpoint(tmp_path / "wav2lip.pth", random_model())
    spec = wav2lip_spec(WeightsSource.path(path))
    module = spec.module(path)
    exported = export_onnx(spec, module, tmp_path / "wav2lip.onnx")
    for batch in (1, 5):
        inputs = spec.sample_inputs("opt", batch=batch)
        expected = TorchBackend(spec, module).run(inputs)["face"]
        got = OrtBackend(spec, exported.path).run(inputs)["face"]
        assert got.shape == (batch, 3, 96, 96)
        assert relative_error(got, expected) <= spec.rtol_fp32


def test_paste_back_shows_no_box() -> None:
    portrait = make_portrait(default_image())
    driver = Wav2LipDriver(portrait)
    b: Box = wav2lip_crop(portrait)
    generated = np.random.default_rng(0).uniform(0, 1, (1, 3, 96, 96)).astype(np.float32)
    frame = driver.compose(generated)[0].astype(np.int32)
    still = portrait.image.astype(np.int32)
    assert not np.array_equal(frame, still), "the lower face was redrawn"
    for (y0, y1), (x0, x1) in (
        ((b.y, b.y + b.h), (b.x - 1, b.x)),  # across the left edge
        ((b.y, b.y + b.h), (b.x + b.w - 1, b.x + b.w)),  # the right edge
        ((b.y + b.h - 1, b.y + b.h), (b.x, b.x + b.w)),  # the bottom edge
    ):
        if y1 - y0 == 1:
            across = np.abs(frame[y0, x0:x1] - frame[y0 + 1, x0:x1]).mean()
            before = np.abs(still[y0, x0:x1] - still[y0 + 1, x0:x1]).mean()
        else:
            across = np.abs(frame[y0:y1, x0] - frame[y0:y1, x1]).mean()
            before = np.abs(still[y0:y1, x0] - still[y0:y1, x1]).mean()
        assert across <= before + 0.5
