"""Whisper on the engine layer: three ONNX graphs with a kv-cache, against torch and CTranslate2."""

from __future__ import annotations

import json
from pathlib import Path

import ctranslate2
import numpy as np
import pytest

from anchor.app.cli import main
from anchor.app.offline import write_wav
from anchor.testing.quality import word_error_rate
from engines.asr.alignment import dtw
from engines.asr.ct2_whisper import CT2Whisper, packaged_tiny_en
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


def test_word_timings_on_the_engine_layer_match_ctranslate2s(settings: EngineSettings) -> None:
    audio, _ = speech_features()
    audio = np.concatenate([np.zeros(8000, np.float32), audio])  # half a second before the first word
    whisper = WhisperGreedy(settings, "onnxruntime")
    try:
        ours = whisper.recognize(audio)
    finally:
        whisper.close()
    reference = CT2Whisper().recognize(audio)
    assert [w.text for w in ours.words] == [w.text for w in reference.words]
    assert len(ours.words) >= 6
    for mine, theirs in zip(ours.words, reference.words, strict=True):
        assert abs(mine.start_s - theirs.start_s) <= 0.1, (mine, theirs)
        assert abs(mine.end_s - theirs.end_s) <= 0.1, (mine, theirs)
        assert mine.start_s <= mine.end_s
        assert 0 < mine.probability <= 1
    starts = [w.start_s for w in ours.words]
    assert starts == sorted(starts)
    assert ours.words[1].start_s >= 0.5, "the leading silence is not given to the words after the first"
    assert ours.no_speech_prob < 0.5 and ours.avg_logprob > -0.5


def test_dtw_finds_the_cheapest_monotonic_path() -> None:
    cost = np.array([[0, 5, 5, 5], [5, 0, 0, 5], [5, 5, 5, 0]], dtype=np.float64)
    rows, cols = dtw(cost)
    assert rows.tolist() == [0, 1, 1, 2]
    assert cols.tolist() == [0, 1, 2, 3]


def test_transcribe_on_onnxruntime_prints_words_with_timings(
    settings: EngineSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    audio, _ = speech_features()
    wav = tmp_path / "news.wav"
    write_wav(wav, audio, 16000)
    monkeypatch.setenv("ANCHOR_ENGINES__CACHE_DIR", str(settings.cache_dir))
    assert main(["transcribe", str(wav), "--backend", "onnxruntime", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "onnxruntime"
    assert word_error_rate(["Officials expect heavy rain across the north."], [report["text"]]) <= 0.2
    assert [w["word"] for w in report["words"]] == report["text"].split()
    assert all(w["start_ms"] <= w["end_ms"] for w in report["words"])
