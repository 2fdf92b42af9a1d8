"""WaveGlow's folded conditioning and its source (a pulse train at the F0 a pitch head reads off the mel)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import cast

import numpy as np
import pytest
import torch

from anchor.app.offline import run_stages
from anchor.bench.listeners import pitch_track
from anchor.core.config import AnchorSettings, VoiceSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, MelChunk
from anchor.core.resample import resample
from anchor.core.runtime import Runtime
from anchor.speech.vocoder import waveglow_stage
from anchor.speech.voices import resolve_voice
from anchor.train.waveglow_trainer import export_waveglow, trainable
from engines.models.source import F0_REF, PitchHead, excitation, frame_starts
from engines.models.waveglow import WN, WaveGlow, WaveGlowConfig
from engines.vocoders.waveglow_checkpoints import declares_source, load_waveglow

HOP, RATE = 256, 22050


@pytest.mark.parametrize(
    "config",
    [
        WaveGlowConfig(n_flows=4, n_layers=2, n_channels=32),  # the public kernel (1024: four frame delays)
        WaveGlowConfig(n_flows=8, n_layers=4, n_channels=64, upsample_kernel=512),
    ],
    ids=["kernel-1024", "ours-64"],
)
def test_folded_conditioning_is_the_upsampler_then_each_cond_layer(config: WaveGlowConfig) -> None:
    torch.manual_seed(0)
    model = WaveGlow(config).eval()
    mel = torch.randn(2, 80, 23) - 5
    with torch.inference_mode():
        grouped = model._condition(mel)
        reference = [cast(WN, wn).cond_layer(grouped) for wn in model.WN]
        model.fold_conditioning()
        for k, want in enumerate(reference):
            got = model._folded_condition(mel, k)
            assert got.shape == want.shape
            assert torch.allclose(got, want, atol=1e-4 * float(want.abs().max())), k


def test_a_folded_waveglow_gives_the_same_audio() -> None:
    torch.manual_seed(0)
    model = WaveGlow(WaveGlowConfig(n_flows=4, n_layers=2, n_channels=32, upsample_kernel=512)).eval()
    for wn in model.WN:  # small coupling outputs keep exp(log_s) tame, as trained models do
        torch.nn.init.normal_(cast(WN, wn).end.weight, std=1e-3)
    model.refresh_inverses()
    mel = torch.randn(1, 80, 12) - 5
    z = 0.6 * torch.randn(1, 8, 12 * 32)
    with torch.inference_mode():
        plain = model(mel, z)
        model.fold_conditioning()
        folded = model(mel, z)
    assert torch.allclose(plain, folded, atol=1e-5, rtol=1e-4)


def test_the_excitation_is_a_pulse_train_at_f0_where_voiced_and_noise_where_not() -> None:
    frames = 80
    f0 = torch.full((1, frames), 110.0)
    voiced = torch.ones(1, frames)
    voiced[:, 40:] = 0.0
    noise = torch.randn(1, frames * HOP, generator=torch.Generator().manual_seed(0))
    e = excitation(f0, voiced, noise, hop=HOP, rate=RATE)[0].numpy().astype(np.float32)
    tracked = pitch_track(e[: 35 * HOP], RATE)
    assert np.abs(tracked[5:-5] - 110).max() < 2
    assert (pitch_track(e[45 * HOP :], RATE) == 0).mean() > 0.9  # noise: unvoiced
    assert 0.08 < float(np.sqrt(np.mean(e[: 35 * HOP] ** 2))) < 0.12


def test_a_block_started_at_a_frame_start_phase_continues_the_pulse_train_exactly() -> None:
    """In float64 so that the check is of the arithmetic, not of float32's rounding of the phase."""
    f0 = torch.full((1, 50), 97.0, dtype=torch.float64)
    voiced = torch.ones(1, 50, dtype=torch.float64)
    silent = torch.zeros(1, 50 * HOP, dtype=torch.float64)
    phase0 = torch.tensor([0.3], dtype=torch.float64)
    whole = excitation(f0, voiced, silent, hop=HOP, rate=RATE, phase0=phase0)
    start = phase0 + frame_starts(f0, HOP, RATE)[:, 20]
    later = excitation(f0[:, 20:], voiced[:, 20:], silent[:, 20 * HOP :], hop=HOP, rate=RATE, phase0=start)
    assert torch.allclose(whole[:, 20 * HOP :], later, atol=1e-6)


def test_a_source_waveglow_draws_z_from_its_pitch_head() -> None:
    torch.manual_seed(0)
    model = WaveGlow(WaveGlowConfig(n_flows=4, n_layers=2, n_channels=32, upsample_kernel=512), source=True)
    assert isinstance(model.pitch, PitchHead)
    mel = torch.randn(1, 80, 10) - 5
    with torch.no_grad():
        z = model.noise(mel, sigma=0.0, generator=torch.Generator().manual_seed(1))
    assert z.shape == (1, 8, 10 * 32) and float(z.abs().max()) > 0  # an excitation, not sigma * noise
    with pytest.raises(ValueError, match="no source"):
        WaveGlow(WaveGlowConfig(n_flows=4, n_layers=2, n_channels=32)).source_z(mel, torch.zeros(1, 2560))


def identity_source_checkpoint(path: Path, hz: float) -> Path:
    """A source WaveGlow whose flows are the identity and whose pitch head always says ``hz``, voiced:
    its audio is exactly its excitation, so seams in the pulse train show in the output."""
    model = trainable(WaveGlowConfig(n_flows=4, n_layers=2, n_channels=16, upsample_kernel=512), source=True)
    assert model.pitch is not None
    last = cast(torch.nn.Conv1d, model.pitch.net[-1])
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        cast(torch.Tensor, last.bias).copy_(torch.tensor([math.log(hz / F0_REF), 30.0]))
    return export_waveglow(model, model.config, path, step=0)


async def test_a_source_waveglow_streams_without_a_seam_in_its_pulse_train(tmp_path: Path) -> None:
    path = identity_source_checkpoint(tmp_path / "wg.pt", 110.0)
    assert declares_source(path) and load_waveglow(path).pitch is not None
    settings = AnchorSettings(engines={"cache_dir": tmp_path, "weights": {"waveglow": str(path)}})  # type: ignore[arg-type]
    voice = resolve_voice(settings.model_copy(update={"voice": VoiceSettings(name="mel")}))
    assert voice.source
    stage = waveglow_stage(voice.sigma, source=True, seed=5)
    phase0 = float(np.random.default_rng(5).uniform(0, 2 * np.pi))  # the stage's first draw
    frames = 300
    mel = np.full((80, frames), -5.0, dtype=np.float32)
    chunks = [
        MelChunk(mel=mel[:, j : j + 10], sample_rate=RATE, hop_length=HOP, utterance_id="u")
        for j in range(0, frames, 10)
    ]
    async with Runtime(settings) as runtime:
        out = [
            f.pcm
            async for f in run_stages(runtime, [stage], [*chunks, EndOfUtterance(utterance_id="u")])
            if isinstance(f, AudioChunk)
        ]
    f0 = torch.full((1, frames), 110.0)
    clean = excitation(
        f0,
        torch.ones(1, frames),
        torch.zeros(1, frames * HOP),
        hop=HOP,
        rate=RATE,
        phase0=torch.tensor([phase0]),
    )
    want = resample(clean[0].numpy(), RATE, settings.media.sample_rate)
    got = np.concatenate(out)
    assert abs(len(got) - len(want)) < 64
    # Each 10 ms of the stream against the clean pulse train: only the breath noise (std 0.01 against
    # a pulse train of RMS 0.1) may differ. A seam, a break in the phase between blocks, misaligns
    # the pulses: a pulse-sized error (~1) and a match near 0.
    step = settings.media.sample_rate // 100
    n = min(len(got), len(want)) // step * step
    a, b = got[:n].reshape(-1, step), want[:n].reshape(-1, step)
    match = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    assert match.min() > 0.98, np.argsort(match)[:5]
    assert np.abs(a - b).max() < 0.08


def test_small_waveglows_load_folded_and_the_public_size_does_not() -> None:
    from engines.vocoders.waveglow_checkpoints import FOLD_LIMIT
    from engines.weights import WeightsSource

    assert load_waveglow(WeightsSource.project("waveglow.pt").resolve()).folded is not None
    assert WaveGlow(WaveGlowConfig()).folded_size() > FOLD_LIMIT  # 2 GB folded: left as published
