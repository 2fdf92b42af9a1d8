"""Tacotron 2 from NVIDIA's checkpoint format, against a functional reference that reads the raw keys."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anchor.app.offline import run_stages
from anchor.core.config import AnchorSettings
from anchor.core.frames import EndOfUtterance, Frame, MelChunk, TextDelta
from anchor.core.runtime import Runtime
from anchor.speech.tacotron_stage import Tacotron2TTS
from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.errors import WeightsError
from engines.export import export_onnx
from engines.models.tacotron2 import Tacotron2
from engines.spec import relative_error
from engines.voices.tacotron2_parts import load_tacotron2, tacotron2_specs
from engines.voices.tacotron_text import SYMBOLS, text_to_ids
from engines.weights import WeightsSource

STEPS = 30


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = Tacotron2()
    state = model.state_dict()
    for key, value in state.items():
        if key.endswith("running_mean"):
            value.normal_(0, 0.1)
        elif key.endswith("running_var"):
            value.uniform_(0.5, 1.5)
        elif value.dtype.is_floating_point:
            value.mul_(0.6)
    path = tmp_path_factory.mktemp("t2") / "tacotron2_statedict.pt"
    torch.save(
        {
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "optimizer": {},
            "iteration": 1,
            "learning_rate": 1e-3,
        },
        path,
    )
    return path


def _lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):  # type: ignore[no-untyped-def]
    i, f, g, o = (x @ w_ih.T + b_ih + h @ w_hh.T + b_hh).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def reference(sd: dict[str, torch.Tensor], ids: list[int], steps: int) -> torch.Tensor:
    """Decoder mel and postnet mel for ``steps`` frames, computed from the raw keys."""
    k = lambda name: sd[f"module.{name}"]  # noqa: E731
    x = k("embedding.weight")[torch.tensor(ids)].T[None]
    for i in range(3):
        p = f"encoder.convolutions.{i}"
        x = F.conv1d(x, k(f"{p}.0.conv.weight"), k(f"{p}.0.conv.bias"), padding=2)
        x = F.relu(
            F.batch_norm(
                x, k(f"{p}.1.running_mean"), k(f"{p}.1.running_var"), k(f"{p}.1.weight"), k(f"{p}.1.bias")
            )
        )
    seq = x[0].T
    outs = []
    for suffix, order in (("", range(len(ids))), ("_reverse", reversed(range(len(ids))))):
        h = c = torch.zeros(256)
        col = {}
        for t in order:
            h, c = _lstm_cell(
                seq[t],
                h,
                c,
                *(
                    k(f"encoder.lstm.{n}_l0{suffix}")
                    for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                ),
            )
            col[t] = h
        outs.append(torch.stack([col[t] for t in range(len(ids))]))
    memory = torch.cat(outs, -1)  # [T, 512]
    a = "decoder.attention_layer"
    processed = memory @ k(f"{a}.memory_layer.linear_layer.weight").T
    ah = ac = dh = dc = torch.zeros(1024)
    w = wcum = torch.zeros(len(ids))
    ctx = torch.zeros(512)
    frame = torch.zeros(80)
    frames = []
    for _ in range(steps):
        p = F.relu(frame @ k("decoder.prenet.layers.0.linear_layer.weight").T)
        p = F.relu(p @ k("decoder.prenet.layers.1.linear_layer.weight").T)
        ah, ac = _lstm_cell(
            torch.cat([p, ctx]),
            ah,
            ac,
            *(k(f"decoder.attention_rnn.{n}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
        )
        loc = F.conv1d(
            torch.stack([w, wcum])[None], k(f"{a}.location_layer.location_conv.conv.weight"), padding=15
        )[0].T
        loc = loc @ k(f"{a}.location_layer.location_dense.linear_layer.weight").T
        q = ah @ k(f"{a}.query_layer.linear_layer.weight").T
        e = (torch.tanh(q + loc + processed) @ k(f"{a}.v.linear_layer.weight").T)[:, 0]
        w = torch.softmax(e, 0)
        wcum = wcum + w
        ctx = w @ memory
        dh, dc = _lstm_cell(
            torch.cat([ah, ctx]),
            dh,
            dc,
            *(k(f"decoder.decoder_rnn.{n}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")),
        )
        out = torch.cat([dh, ctx])
        frame = out @ k("decoder.linear_projection.linear_layer.weight").T + k(
            "decoder.linear_projection.linear_layer.bias"
        )
        frames.append(frame)
    mel = torch.stack(frames, -1)[None]
    y = mel
    for i in range(5):
        p = f"postnet.convolutions.{i}"
        y = F.conv1d(y, k(f"{p}.0.conv.weight"), k(f"{p}.0.conv.bias"), padding=2)
        y = F.batch_norm(
            y, k(f"{p}.1.running_mean"), k(f"{p}.1.running_var"), k(f"{p}.1.weight"), k(f"{p}.1.bias")
        )
        y = torch.tanh(y) if i < 4 else y
    return mel + y


def fixed_steps(model: Tacotron2) -> Tacotron2:
    model.config = replace(model.config, max_decoder_steps=STEPS, gate_threshold=2.0)  # the gate never fires
    model.set_prenet_dropout(False)
    return model


def test_loaded_checkpoint_reproduces_the_reference(checkpoint: Path) -> None:
    model = fixed_steps(load_tacotron2(checkpoint))
    ids = text_to_ids("Hello world, {HH AH0 L OW1}.")
    with torch.inference_mode():
        expected = reference(torch.load(checkpoint)["state_dict"], ids, STEPS)
        whole = model.infer(torch.tensor([ids]))
        streamed = torch.cat(list(model.stream(torch.tensor([ids]), chunk=7)), -1)
    assert whole.shape == expected.shape == (1, 80, STEPS)
    assert relative_error(whole.numpy(), expected.numpy()) < 1e-4
    assert relative_error(streamed.numpy(), whole.numpy()) < 1e-5, "chunked postnet == whole postnet"


def test_text_symbols_follow_the_published_table() -> None:
    assert len(SYMBOLS) == 148 and SYMBOLS[:3] == ["_", "-", "!"] and SYMBOLS[-1] == "@ZH"
    assert text_to_ids("Hi!") == [SYMBOLS.index("h"), SYMBOLS.index("i"), SYMBOLS.index("!")]
    assert text_to_ids("{HH AY1}") == [SYMBOLS.index("@HH"), SYMBOLS.index("@AY1")]


def test_bad_checkpoints_are_refused(tmp_path: Path, checkpoint: Path) -> None:
    data = torch.load(checkpoint)
    data["state_dict"]["module.decoder.gate_layer.linear_layer.weight"] = torch.zeros(2, 1536)
    bad = tmp_path / "bad.pt"
    torch.save(data, bad)
    with pytest.raises(
        WeightsError, match=r"gate_layer\.linear_layer\.weight: expected shape \(1, 1536\), found \(2, 1536\)"
    ):
        load_tacotron2(bad)
    torch.save({"state_dict": {"x": torch.zeros(1)}}, bad)
    with pytest.raises(WeightsError, match="is not a Tacotron 2 checkpoint"):
        load_tacotron2(bad)


@pytest.mark.parametrize("part", ["tacotron2-encoder", "tacotron2-decoder-step", "tacotron2-postnet"])
def test_each_part_exports_to_onnx_with_parity(tmp_path: Path, checkpoint: Path, part: str) -> None:
    spec = tacotron2_specs(WeightsSource.path(checkpoint))[part]
    module = spec.module(checkpoint)
    exported = export_onnx(spec, module, tmp_path / f"{part}.onnx")
    inputs = spec.sample_inputs("opt", seed=3, batch=2)
    expected = TorchBackend(spec, module).run(inputs)
    got = OrtBackend(spec, exported.path).run(inputs)
    for name in expected:
        assert relative_error(got[name], expected[name]) <= spec.rtol_fp32, name


async def test_the_acoustic_stage_streams_through_shared_engines_what_the_model_decodes(
    tmp_path: Path, checkpoint: Path
) -> None:
    stage = Tacotron2TTS(chunk_frames=8, gate_threshold=2.0, max_decoder_steps=STEPS)
    frames: list[Frame] = [
        TextDelta(text="Good evening.", utterance_id="u"),
        EndOfUtterance(utterance_id="u"),
    ]
    engines = {"cache_dir": tmp_path, "weights": {"tacotron2": str(checkpoint)}}
    async with Runtime(AnchorSettings(engines=engines)) as rt:  # type: ignore[arg-type]
        out = [f async for f in run_stages(rt, [stage], frames)]
        assert {"tacotron2-encoder", "tacotron2-decoder-step", "tacotron2-postnet"} <= set(
            rt.engines.loaded()
        )
    mels = [f for f in out if isinstance(f, MelChunk)]
    assert len(mels) >= 2 and isinstance(out[-1], EndOfUtterance)
    assert sum(m.num_frames for m in mels) == STEPS, "the max-steps cap ends a phrase whose gate never fires"
    assert all(m.mel.shape[0] == 80 and m.sample_rate == 22050 for m in mels)
    assert [m.pts for m in mels] == list(np.cumsum([0] + [m.num_frames * 256 for m in mels[:-1]]))
    model = fixed_steps(load_tacotron2(checkpoint))
    whole = model.infer(torch.tensor([text_to_ids("Good evening.")]))[0].numpy()
    assert relative_error(np.concatenate([m.mel for m in mels], axis=1), whole) < 1e-3
