"""The CTranslate2 -> openai-whisper converter, checked against the manifest and CTranslate2 itself."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
from faster_whisper.feature_extractor import FeatureExtractor

from anchor.app.offline import join_audio, render_text
from anchor.core.config import AnchorSettings
from anchor.core.resample import resample
from anchor.core.runtime import Runtime
from engines.asr.convert import convert_ct2_whisper, ct2_to_openai
from engines.asr.ct2_reader import CT2Model, read_ct2
from engines.asr.ct2_whisper import packaged_tiny_en
from engines.errors import WeightsError
from engines.models.whisper import load_whisper
from engines.spec import relative_error

MANIFEST = Path(__file__).resolve().parents[2] / "shared" / "reference" / "whisper_tiny_en_state_dict.json"


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("whisper") / "tiny.en.pt"
    convert_ct2_whisper(packaged_tiny_en(), path)
    return path


def test_the_conversion_is_exact_and_matches_the_published_layout(converted: Path) -> None:
    checkpoint = torch.load(converted)
    sd, dims = checkpoint["model_state_dict"], checkpoint["dims"]
    assert dims == {
        "n_mels": 80,
        "n_audio_ctx": 1500,
        "n_audio_state": 384,
        "n_audio_head": 6,
        "n_audio_layer": 4,
        "n_vocab": 51864,
        "n_text_ctx": 448,
        "n_text_state": 384,
        "n_text_head": 6,
        "n_text_layer": 4,
    }
    if MANIFEST.is_file():
        manifest = json.loads(MANIFEST.read_text())
        assert {k: list(v.shape) for k, v in sd.items()} == manifest
    ct2 = read_ct2(packaged_tiny_en() / "model.bin")
    fused = ct2.get("decoder/layer_2/self_attention/linear_0/weight")
    rebuilt = torch.cat([sd[f"decoder.blocks.2.attn.{p}.weight"] for p in ("query", "key", "value")]).numpy()
    assert rebuilt.dtype == np.float16 and np.array_equal(rebuilt, fused), "split, not rounded"
    assert np.array_equal(sd["decoder.token_embedding.weight"].numpy(), ct2.get("decoder/projection/weight"))
    assert "decoder.blocks.0.attn.key.bias" not in sd and "decoder.mask" not in sd


def test_a_non_zero_key_bias_is_refused() -> None:
    ct2 = read_ct2(packaged_tiny_en() / "model.bin")
    variables = dict(ct2.variables)
    bias = variables["encoder/layer_1/self_attention/linear_0/bias"].copy()
    bias[400] = 0.5
    variables["encoder/layer_1/self_attention/linear_0/bias"] = bias
    with pytest.raises(
        WeightsError, match=r"encoder/layer_1/self_attention/linear_0: the key bias is not zero"
    ):
        ct2_to_openai(CT2Model(ct2.spec, ct2.revision, variables, ct2.aliases))


def test_truncated_and_foreign_files_fail_precisely(tmp_path: Path) -> None:
    cut = tmp_path / "model.bin"
    cut.write_bytes((packaged_tiny_en() / "model.bin").read_bytes()[:100_000])
    with pytest.raises(WeightsError, match=r"model\.bin is truncated"):
        read_ct2(cut)
    torch.save({"model_state_dict": {}}, tmp_path / "x.pt")
    with pytest.raises(WeightsError, match="is not an openai-whisper checkpoint"):
        load_whisper(tmp_path / "x.pt")


def speech_features() -> tuple[np.ndarray, np.ndarray]:
    """A news sentence in the default voice: 16 kHz audio and its 30 s log-mel features."""

    async def speak() -> np.ndarray:
        async with Runtime(AnchorSettings()) as rt:
            return join_audio(await render_text(rt, "Officials expect heavy rain across the north."))

    audio = resample(asyncio.run(speak()), 48000, 16000)
    feats = FeatureExtractor(feature_size=80)(audio)
    feats = np.pad(feats, ((0, 0), (0, max(0, 3000 - feats.shape[1]))))[None, :, :3000].astype(np.float32)
    return audio, feats


def test_the_converted_model_hears_what_ctranslate2_hears(converted: Path) -> None:
    _, feats = speech_features()
    reference = ctranslate2.models.Whisper(str(packaged_tiny_en()), device="cpu", compute_type="float32")
    storage = ctranslate2.StorageView.from_array(feats)
    expected = np.array(reference.encode(storage, to_cpu=True))
    model = load_whisper(converted)
    with torch.inference_mode():
        got = model.encode(torch.from_numpy(feats)).numpy()
    assert relative_error(got, expected) < 1e-4
    prompt, eot = [50257, 50362], 50256
    ct2_tokens = reference.generate(storage, [prompt], beam_size=1, suppress_blank=False, suppress_tokens=[])[
        0
    ].sequences_ids[0]
    assert model.greedy(torch.from_numpy(feats), prompt, eot) == ct2_tokens
    assert len(ct2_tokens) > 5
