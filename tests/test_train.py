"""Our own training: the data set, each trainer, the exported checkpoints, and the shipped weights' gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from anchor.train.acoustic_trainer import train_acoustic
from anchor.train.corpus import HELD_OUT, build_corpus, read_corpus
from anchor.train.loop import Budget, TrainJob
from anchor.train.mouth_gan_trainer import train_mouth
from anchor.train.pitch_trainer import load_pitch_head, train_pitch
from anchor.train.ship_weights import export_weights
from anchor.train.speech_data import HOP, SpeechShard, speech_shards, synthesize
from anchor.train.vocoded import vocode, vocoded_audio
from anchor.train.waveglow_trainer import SAMPLE_SIGMA, SMALL, spectral_loss, train_waveglow, trainable
from engines.audio.mel import mel_spectrogram
from engines.errors import WeightsError
from engines.face.mouth_gan import load_mouth_gan
from engines.models.fastspeech import AcousticConfig, FastSpeech
from engines.vocoders.waveglow_checkpoints import declared_sigma, declares_source, load_waveglow
from engines.voices.acoustic_parts import ACOUSTIC_WEIGHTS, load_acoustic
from engines.voices.piper import JOE_MODEL, PiperVoice

TINY = AcousticConfig(dim=32, heads=2, encoder_layers=1, decoder_channels=32, postnet_channels=32)


def test_chunked_decoding_is_exactly_the_whole_decode() -> None:
    torch.manual_seed(0)
    model = FastSpeech(TINY).eval()
    expanded = torch.randn(1, 137, TINY.dim)
    with torch.inference_mode():
        _, whole = model.decode(expanded)
        chunks = list(model.decode_chunks(expanded, chunk=10))
    assert [c.shape[2] for c in chunks] == [10] * 13 + [7]
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=1e-5, rtol=1e-5)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("train-data")
    voice = PiperVoice.for_model(JOE_MODEL.resolve())
    build_corpus(root, hours=0.004, seed=3, voice=voice)
    synthesize(root, JOE_MODEL.resolve(), workers=1)
    vocode(root)
    return root


def test_the_corpus_keeps_held_out_sentences_out_and_says_where_it_came_from(data: Path) -> None:
    meta = json.loads((data / "corpus.json").read_text())
    assert meta["licence"] == "PSF-2.0" and "standard library" in meta["source"]
    texts = {s.text.lower() for s in read_corpus(data)}
    assert texts and not texts & {h.lower() for h in HELD_OUT}


def test_speech_shards_hold_the_teachers_durations_audio_and_mels_and_resume(data: Path) -> None:
    shard_path = data / "speech" / "shard-00000.npz"
    shard = SpeechShard(shard_path)
    sentences = list(read_corpus(data))
    assert len(shard) == len(sentences)
    for i in range(len(shard)):
        assert list(shard.ids_of(i)) == sentences[i].ids
        frames = int(shard.durations_of(i).sum())
        assert len(shard.audio_of(i)) == frames * HOP
        assert shard.mel_of(i).shape == (80, frames)
    before = shard_path.stat().st_mtime_ns
    synthesize(data, JOE_MODEL.resolve(), workers=1)  # resumes: nothing left to do
    assert shard_path.stat().st_mtime_ns == before
    again = data / "again"
    again.mkdir()
    (again / "corpus.jsonl").write_text((data / "corpus.jsonl").read_text())
    synthesize(again, JOE_MODEL.resolve(), workers=1)
    np.testing.assert_array_equal(SpeechShard(again / "speech" / "shard-00000.npz").audio, shard.audio)


def test_vocoded_targets_line_up_with_the_teachers_mels_and_resume(data: Path) -> None:
    path = speech_shards(data)[0]
    shard = SpeechShard(path)
    audio = vocoded_audio(path, shard)
    assert audio.dtype == np.int16 and audio.shape == shard.audio.shape
    for i in range(len(shard)):
        own = audio[shard.audio_offsets[i] : shard.audio_offsets[i + 1]].astype(np.float32) / 32767
        mel = mel_spectrogram(own, framing="hifigan")
        teacher = shard.mel_of(i).astype(np.float32)
        assert mel.shape == teacher.shape
        assert np.abs(mel - teacher).mean() < 0.6, "HiFi-GAN's audio says the teacher's mel, frame by frame"
        shifted = np.abs(mel[:, 5:] - teacher[:, :-5]).mean()
        assert shifted > np.abs(mel - teacher).mean() + 0.2, "and not just on average"
    written = vocode(data)[0]
    stamp = written.stat().st_mtime_ns
    assert vocode(data)[0].stat().st_mtime_ns == stamp  # resumes: nothing left to do
    np.save(written, audio[:-1])
    try:
        with pytest.raises(ValueError, match="int16"):
            vocoded_audio(path, shard)
    finally:
        np.save(written, audio)


def test_each_trainer_runs_resumes_and_exports_a_checkpoint_its_loader_reads(
    data: Path, tmp_path: Path
) -> None:
    budget = Budget(steps=2, minutes=5, save_every=1, log_every=1)
    runs = tmp_path / "runs"
    job = TrainJob(data, runs, budget, device="cpu", batch=2)
    train_acoustic(job, config=TINY)
    train_waveglow(job, frames=16, nll_weight=0.1)
    train_mouth(job, width=16)
    for name in ("acoustic", "waveglow", "mouth"):
        rows = [json.loads(line) for line in (runs / f"{name}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in rows] == [1, 2]
        assert all(np.isfinite(v) for r in rows for k, v in r.items())
        assert (runs / f"{name}.png").stat().st_size > 1000
    longer = Budget(steps=3, minutes=5, save_every=1, log_every=1)
    train_acoustic(TrainJob(data, runs, longer, device="cpu", batch=2), config=TINY)  # resumes at step 2
    assert [json.loads(line)["step"] for line in (runs / "acoustic.jsonl").read_text().splitlines()] == [
        1,
        2,
        3,
    ]

    shipped = export_weights(runs, tmp_path / "weights")
    assert set(shipped) == {"acoustic", "waveglow", "mouth"}
    acoustic = load_acoustic(shipped["acoustic"])
    assert acoustic.config == TINY
    waveglow = load_waveglow(shipped["waveglow"])  # NVIDIA's DLE layout, weight norm folded at load
    assert waveglow.config.n_channels == 64 and waveglow.config.n_flows == 8
    raw = torch.load(shipped["waveglow"], weights_only=True)
    assert any(k.startswith("module.WN.0.in_layers.0.weight_g") for k in raw["state_dict"])
    assert declared_sigma(shipped["waveglow"]) == SAMPLE_SIGMA, "samples are drawn at the trained sigma"
    again = tmp_path / "again"
    train_waveglow(
        TrainJob(data, again, Budget(steps=1, minutes=5), device="cpu", batch=2, seed=1),
        frames=16,
        target="teacher",
        init=shipped["waveglow"],
    )
    before = torch.load(shipped["waveglow"], weights_only=True)["state_dict"]["module.convinv.0.conv.weight"]
    after = torch.load(again / "waveglow-final.pt", weights_only=True)["state_dict"][
        "module.convinv.0.conv.weight"
    ]
    assert (after - before.float()).abs().max() < 0.01, "a run started from shipped weights goes on from them"
    mouth = load_mouth_gan(shipped["mouth"])
    assert mouth.width == 16
    with torch.inference_mode():
        out = mouth(torch.zeros(1, 1, 80, 16))
    assert out.shape == (1, 3) and 0 <= float(out[0, 0]) <= 1


def test_a_source_filter_waveglow_trains_on_a_pitch_head_and_ships_it(data: Path, tmp_path: Path) -> None:
    budget = Budget(steps=2, minutes=5, save_every=1, log_every=1)
    head = train_pitch(TrainJob(data, tmp_path / "pitch", budget, device="cpu", batch=2))
    assert [
        json.loads(line)["step"] for line in (tmp_path / "pitch" / "pitch.jsonl").read_text().splitlines()
    ] == [
        1,
        2,
    ]
    out = train_waveglow(
        TrainJob(data, tmp_path / "wg", budget, device="cpu", batch=2),
        frames=16,
        target="teacher",
        wave_weight=0.0,
        pitch=head,
    )
    assert declares_source(out)
    model = load_waveglow(out)
    assert model.pitch is not None
    expected = load_pitch_head(head).state_dict()
    assert all(torch.equal(model.pitch.state_dict()[k], v) for k, v in expected.items()), (
        "the head stays frozen"
    )
    # The upsampler interpolates between frames (frozen): a constant mel gives a constant conditioning.
    spect = model._condition(torch.full((1, 80, 6), -4.0))[:, :, 32:]
    assert torch.allclose(spect, torch.full_like(spect, -4.0), atol=1e-5)
    with torch.inference_mode():
        audio = model.infer(torch.full((1, 80, 12), -5.0), generator=torch.Generator().manual_seed(0))
    assert audio.shape == (1, 12 * 256) and bool(torch.isfinite(audio).all())


def test_the_spectral_loss_is_zero_only_for_the_same_audio() -> None:
    torch.manual_seed(0)
    speech = torch.randn(2, 8192) * 0.1
    same = spectral_loss(speech, speech)
    assert all(float(v) < 1e-5 for v in same.values())
    other = spectral_loss(speech * 0.5, speech)
    assert all(float(v) > 0.05 for v in other.values())


def test_waveglow_trains_through_its_inverse_exactly_as_it_infers() -> None:
    torch.manual_seed(0)
    model = trainable(SMALL)
    for wn in model.WN:  # flows that do something: end layers are zero in a fresh model
        torch.nn.init.normal_(wn.end.weight, std=0.01)
    mel, z = torch.randn(1, 80, 8) - 5, torch.randn(1, 8, 256) * 0.1
    model.train()
    audio = model(mel, z)
    audio.square().sum().backward()
    assert all(conv.conv.weight.grad is not None for conv in model.convinv), "the 1x1 inverses learn"
    model.eval()
    model.refresh_inverses()
    with torch.inference_mode():
        torch.testing.assert_close(model(mel, z), audio.detach(), atol=1e-5, rtol=1e-4)


def test_wn_convolutions_in_bfloat16_return_float32_close_to_full_precision() -> None:
    torch.manual_seed(0)
    wn = trainable(SMALL).WN[0]
    torch.nn.init.normal_(wn.end.weight, std=0.1)
    audio, spect = torch.randn(2, 4, 256), torch.randn(2, 640, 256)
    full = wn(audio, spect)
    wn.autocast_dtype = torch.bfloat16
    mixed = wn(audio, spect)
    assert mixed.dtype == torch.float32
    assert (mixed - full).abs().mean() < 0.02 * full.abs().mean()
    assert not torch.equal(mixed, full), "the convolutions did run in bfloat16"


def test_a_checkpoint_that_is_not_ours_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(WeightsError, match="not an acoustic-model checkpoint"):
        load_acoustic(path)
    torch.save({"model": {"embedding.weight": torch.zeros(3, 3)}, "config": {}}, path)
    with pytest.raises(WeightsError, match=r"embedding\.weight"):
        load_acoustic(path)


def test_shipped_acoustic_model_fits_in_the_package() -> None:
    assert ACOUSTIC_WEIGHTS.resolve().stat().st_size <= 20 * 2**20
    load_acoustic(ACOUSTIC_WEIGHTS.resolve())


def test_shipped_waveglow_loads_through_the_public_loader_and_declares_its_sigma() -> None:
    from engines.weights import WeightsSource

    path = WeightsSource.project("waveglow.pt").resolve()
    assert path.stat().st_size <= 20 * 2**20
    model = load_waveglow(path)  # the DeepLearningExamples layout, weight norm folded
    assert (model.config.n_flows, model.config.n_channels, model.config.n_layers) == (8, 64, 4)
    assert declared_sigma(path) == SAMPLE_SIGMA
    mel = torch.full((1, 80, 40), -11.5)  # silence
    audio = model.infer(mel, sigma=SAMPLE_SIGMA, generator=torch.Generator().manual_seed(0))
    assert audio.shape == (1, 40 * 256) and float(audio.abs().max()) < 0.1
