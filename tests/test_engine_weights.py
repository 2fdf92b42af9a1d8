from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils import weight_norm

from engines.errors import WeightsError
from engines.models.hifigan import HiFiGanConfig, HiFiGanGenerator
from engines.registry import load_hifigan
from engines.weights import (
    WeightsSource,
    check_state_dict,
    fold_weight_norm,
    read_checkpoint,
    strip_prefix,
)

SMALL = HiFiGanConfig(
    upsample_rates=(4, 4),
    upsample_kernel_sizes=(8, 8),
    upsample_initial_channel=16,
    resblock_kernel_sizes=(3, 5),
    resblock_dilation_sizes=((1, 3, 5), (1, 3, 5)),
    hop_size=16,
)


def test_missing_empty_truncated_and_foreign_files_fail_precisely(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match=r"checkpoint not found: .*nope\.pt \(from path source"):
        WeightsSource.path(tmp_path / "nope.pt").resolve()
    with pytest.raises(WeightsError, match=r"weights package 'no_such_anchor_pkg' is not installed"):
        WeightsSource.package("no_such_anchor_pkg", "w.pt").resolve()
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match=r"empty\.pt is empty"):
        read_checkpoint(empty)
    whole = tmp_path / "whole.pt"
    torch.save({"generator": {"w": torch.zeros(1000)}}, whole)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(
        WeightsError, match=r"truncated\.pt \(\d+ bytes\) is truncated or not a torch checkpoint"
    ):
        read_checkpoint(truncated)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(WeightsError, match=r"notes\.pt is not a torch checkpoint .*starts with b'hell'"):
        read_checkpoint(text)


def test_shape_mismatch_names_each_key_with_both_shapes() -> None:
    module = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {
        "0.weight": torch.zeros(3, 5),
        "0.bias": torch.zeros(3),
        "1.weight": torch.zeros(2, 3),
        "x": torch.zeros(1),
    }
    with pytest.raises(WeightsError) as err:
        check_state_dict(module, state, "my.pt")
    text = str(err.value)
    assert "checkpoint my.pt does not match the model" in text
    assert "0.weight: expected shape (3, 4), found (3, 5)" in text
    assert "missing keys (1): 1.bias" in text
    assert "unexpected keys (1): x" in text


def test_weight_norm_folds_exactly_like_torch() -> None:
    torch.manual_seed(0)
    for layer in (nn.Conv1d(6, 5, 3), nn.ConvTranspose1d(6, 5, 4, 2)):
        normed = weight_norm(layer)
        with torch.no_grad():
            normed.weight_g.mul_(torch.rand_like(normed.weight_g) + 0.5)
        reference = torch._weight_norm(normed.weight_v, normed.weight_g, 0)
        folded = fold_weight_norm(normed.state_dict())
        assert set(folded) == {"weight", "bias"}
        torch.testing.assert_close(folded["weight"], reference, rtol=1e-6, atol=1e-7)
    assert strip_prefix({"module.a": torch.zeros(1)}, "module.").keys() == {"a"}
    assert strip_prefix({"module.a": torch.zeros(1), "b": torch.zeros(1)}, "module.").keys() == {
        "module.a",
        "b",
    }


def _public_format_checkpoint(tmp_path: Path) -> tuple[Path, nn.Module]:
    """A checkpoint exactly as HiFi-GAN training writes it: weight-normed convs under 'generator'."""
    torch.manual_seed(1)
    reference = HiFiGanGenerator(SMALL)
    for child in list(reference.modules()):
        if isinstance(child, nn.Conv1d | nn.ConvTranspose1d):
            weight_norm(child)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({**SMALL.__dict__, "num_gpus": 0, "segment_size": 8192}))
    path = folder / "g_02500000"
    torch.save({"generator": reference.state_dict()}, path)
    return path, reference.eval()


def test_hifigan_loader_reads_the_public_format(tmp_path: Path) -> None:
    path, reference = _public_format_checkpoint(tmp_path)
    assert any(k.endswith("weight_g") for k in torch.load(path)["generator"])
    loaded = load_hifigan(path)
    mel = torch.randn(2, 80, 20)
    with torch.inference_mode():
        expected, got = reference(mel), loaded(mel)
    assert got.shape == (2, 1, 20 * 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_hifigan_loader_rejects_a_mismatched_checkpoint(tmp_path: Path) -> None:
    path, _ = _public_format_checkpoint(tmp_path)
    state = torch.load(path)["generator"]
    state["conv_post.bias"] = torch.zeros(2)
    torch.save({"generator": state}, path)
    with pytest.raises(WeightsError, match=r"conv_post\.bias: expected shape \(1,\), found \(2,\)"):
        load_hifigan(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match=r"is a list, expected a dict"):
        load_hifigan(path)
