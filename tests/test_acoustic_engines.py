"""Our acoustic model through the engine layer: ONNX parity, and the streaming stage equal to a whole decode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anchor.app.offline import run_stages
from anchor.core.config import AnchorSettings
from anchor.core.frames import EndOfUtterance, Frame, MelChunk, Phonemes, TextDelta
from anchor.core.runtime import Runtime
from anchor.speech.acoustic_stage import AcousticTTS
from anchor.speech.normalize import normalize
from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.errors import WeightsError
from engines.export import export_onnx
from engines.spec import relative_error
from engines.voices.acoustic_parts import ACOUSTIC_WEIGHTS, acoustic_specs, load_acoustic, mel_of
from engines.voices.piper import JOE_MODEL, PiperVoice


@pytest.mark.parametrize("part", ["acoustic-encoder", "acoustic-decoder"])
def test_each_part_exports_to_onnx_with_parity(tmp_path: Path, part: str) -> None:
    spec = acoustic_specs()[part]
    module = spec.module(ACOUSTIC_WEIGHTS.resolve())
    exported = export_onnx(spec, module, tmp_path / f"{part}.onnx")
    batch = 1 if part == "acoustic-encoder" else 2
    inputs = spec.sample_inputs("opt", seed=3, batch=batch)
    expected = TorchBackend(spec, module).run(inputs)
    got = OrtBackend(spec, exported.path).run(inputs)
    for name in expected:
        assert relative_error(got[name], expected[name]) <= spec.rtol_fp32, name


async def test_the_stage_streams_through_shared_engines_what_the_whole_model_decodes(
    engine_cache: Path,
) -> None:
    text = "The city council approved a new budget for public transport."
    stage = AcousticTTS(chunk_frames=24, first_words=100)  # one phrase: the whole sentence
    frames: list[Frame] = [TextDelta(text=text, utterance_id="u"), EndOfUtterance(utterance_id="u")]
    async with Runtime(AnchorSettings(engines={"cache_dir": engine_cache})) as rt:  # type: ignore[arg-type]
        out = [f async for f in run_stages(rt, [stage], frames)]
        assert {"acoustic-encoder", "acoustic-decoder"} <= set(rt.engines.loaded())
    mels = [f for f in out if isinstance(f, MelChunk)]
    assert any(isinstance(f, Phonemes) for f in out)
    streamed = np.concatenate([m.mel for m in mels], axis=1)
    voice = PiperVoice.for_model(JOE_MODEL.resolve())
    model = load_acoustic(ACOUSTIC_WEIGHTS.resolve())
    whole = np.concatenate([mel_of(model, ids).numpy() for ids in voice.phoneme_ids(normalize(text))], axis=1)
    assert streamed.shape == whole.shape, "the same durations"
    assert relative_error(streamed, whole) < 1e-3


def test_the_engines_refuse_a_model_of_another_width(tmp_path: Path) -> None:
    data = torch.load(ACOUSTIC_WEIGHTS.resolve(), weights_only=True)
    from engines.models.fastspeech import AcousticConfig, FastSpeech

    small = AcousticConfig(dim=32, heads=2, encoder_layers=1, decoder_channels=32, postnet_channels=32)
    path = tmp_path / "small.pt"
    torch.save(
        {"model": FastSpeech(small).state_dict(), "config": small.as_dict(), "step": data["step"]}, path
    )
    with pytest.raises(WeightsError, match="width 192, not 32"):
        acoustic_specs()["acoustic-decoder"].module(path)
