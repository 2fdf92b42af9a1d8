"""Whisper on the engine layer: three ONNX graphs with a kv-cache, against torch and CTranslate2."""

from __future__ import annotations

import ctranslate2
import pytest

from engines.asr.ct2_whisper import packaged_tiny_en
from engines.asr.whisper_parts import TINY_EN, WhisperGreedy, whisper_specs
from engines.backends.ort_backend import OrtBackend
from engines.backends.torch_backend import TorchBackend
from engines.engine import ensure_onnx, weights_info
from engines.settings import EngineSettings
from engines.spec import relative_error
from tests.test_whisper_convert import speech_features


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> EngineSettings:
    return EngineSettings(cache_dir=tmp_path_factory.mktemp("whisper-onnx"))


@pytest.mark.parametrize(
    ("part", "past"),
    [("whisper-encoder", 0), ("whisper-cross-kv", 0), ("whisper-decoder", 0), ("whisper-decoder", 7)],
)
def test_each_graph_matches_torch(settings: EngineSettings, part: str, past: int) -> None:
    spec = whisper_specs()[part]
    exported = ensure_onnx(spec, settings, weights_info(spec))
    inputs = (
        spec.sample_inputs("opt", seed=1, past=past)
        if part == "whisper-decoder"
        else spec.sample_inputs("opt", seed=1)
    )
    expected = TorchBackend(spec, spec.module(TINY_EN.resolve())).run(inputs)
    got = OrtBackend(spec, exported.path).run(inputs)
    for name, value in expected.items():
        assert got[name].shape == value.shape
        assert relative_error(got[name], value) <= spec.rtol_fp32, name


def test_onnxruntime_greedy_decoding_hears_what_ctranslate2_hears(settings: EngineSettings) -> None:
    audio, feats = speech_features()
    whisper = WhisperGreedy(settings, "onnxruntime")
    try:
        tokens = whisper.tokens(audio)
    finally:
        whisper.close()
    reference = ctranslate2.models.Whisper(str(packaged_tiny_en()), device="cpu", compute_type="float32")
    expected = reference.generate(
        ctranslate2.StorageView.from_array(feats),
        [[50257, 50362]],
        beam_size=1,
        suppress_blank=False,
        suppress_tokens=[],
    )
    assert tokens == expected[0].sequences_ids[0]
    assert len(tokens) > 5
