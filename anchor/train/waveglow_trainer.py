"""Training a small WaveGlow on the teacher's audio, saved in NVIDIA's own checkpoint layout.

The model is ``engines.models.waveglow.WaveGlow`` itself with NVIDIA's weight
norm on each WN's ``start``, ``in_layers``, ``res_skip_layers`` and
``cond_layer`` (so the saved keys carry ``weight_g``/``weight_v`` exactly as
the public checkpoints do) and its ``end`` zeroed, so every flow starts as
the identity. The result is written as a DeepLearningExamples checkpoint
(``{'state_dict': {'module.…'}, 'config': {...}}``) that ``load_waveglow`` reads.

Two objectives, weighted. The paper's: run the flows forwards (audio -> z)
and minimise the negative log-likelihood of z under N(0, sigma^2); a run on
a lent H100 (15,539 steps, NLL -6.06) still gave no words, as the paper's
model needs hundreds of thousands of steps. The default is the other: run
the flows the way inference does (z drawn at ``sample_sigma`` -> audio,
through exact, differentiable inverses of the 1x1 convolutions) and score
that audio against a target with a multi-resolution STFT loss and the
log-mel L1, as Parallel WaveGAN and HiFi-GAN do, plus a waveform L1.

The target is the teacher's mel vocoded by HiFi-GAN, a function of the mel
(``anchor.train.vocoded`` has the numbers: WER 40-50 % against the teacher's
own audio at ``sample_sigma`` 0.1, 4.9 % this way). Against a deterministic
target the noise is only in the way, so samples are drawn at
``sample_sigma`` 0: the checkpoint's config records it, and the vocoder
stage samples at the sigma a checkpoint declares.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from torch import nn

from anchor.train.loop import TrainJob, train
from anchor.train.pitch_trainer import load_pitch_head
from anchor.train.speech_data import HOP, SpeechShard, speech_shards
from anchor.train.vocoded import vocoded_audio
from engines.audio.mel import MelConfig, mel_basis
from engines.models.waveglow import WN, Invertible1x1Conv, WaveGlow, WaveGlowConfig

SAMPLE_SIGMA = 0.0  # the noise scale our samples are trained (and meant to be drawn) at
SMALL = WaveGlowConfig(
    n_flows=8, n_group=8, n_early_every=4, n_early_size=2, n_layers=4, n_channels=64, upsample_kernel=512
)


def trainable(config: WaveGlowConfig, *, source: bool = False) -> WaveGlow:
    """A fresh WaveGlow laid out for training: weight norm, identity flows, random orthogonal 1x1
    convolutions. ``source``: with a pitch head (load its weights before training; it stays frozen)."""
    model = WaveGlow(config, source=source)
    for wn in model.WN:
        w = cast(WN, wn)
        w.start = nn.utils.weight_norm(w.start, name="weight")
        w.cond_layer = nn.utils.weight_norm(w.cond_layer, name="weight")
        w.in_layers = nn.ModuleList(nn.utils.weight_norm(layer, name="weight") for layer in w.in_layers)
        w.res_skip_layers = nn.ModuleList(
            nn.utils.weight_norm(layer, name="weight") for layer in w.res_skip_layers
        )
        nn.init.zeros_(w.end.weight)
        nn.init.zeros_(cast(torch.Tensor, w.end.bias))
    if source:
        interpolate_frames(model)
    for conv in model.convinv:
        c = cast(Invertible1x1Conv, conv)
        n = c.conv.weight.shape[0]
        # With a source the whole flow starts as the identity, so its first samples are the excitation.
        q = torch.eye(n) if source else torch.linalg.qr(torch.randn(n, n))[0]
        if torch.det(q) < 0:
            q[:, 0] = -q[:, 0]
        c.conv.weight.data.copy_(q[..., None])
    return model


def interpolate_frames(model: WaveGlow) -> None:
    """Fix the upsampler to linear interpolation between mel frames (each channel to itself), frozen.

    For a source-filter flow: a learned upsampler ripples with the hop (its kernel's shape repeats
    every 256 samples), the couplings' scales follow, and they modulate the excitation at
    22050 / 256 = 86 Hz, which a listener (and a pitch tracker) hears as the pitch. Interpolated
    conditioning cannot ripple; it lags the audio by half a frame, which the flows learn around.
    """
    c = model.config
    if c.upsample_kernel != 2 * c.hop_length:
        raise ValueError(f"a source needs upsample_kernel = 2 * hop_length, got {c.upsample_kernel}")
    taps = torch.arange(c.upsample_kernel, dtype=torch.float32)
    triangle = 1.0 - (taps - (c.hop_length - 0.5)).abs() / c.hop_length
    with torch.no_grad():
        model.upsample.weight.zero_()
        for m in range(c.n_mel_channels):
            model.upsample.weight[m, m] = triangle
        cast(torch.Tensor, model.upsample.bias).zero_()
    model.upsample.requires_grad_(False)


def flow_forward(
    model: WaveGlow, mel: torch.Tensor, audio: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Audio ``[B, T]`` -> (z ``[B, n_group, T/n_group]``, the sum of every log-determinant per batch)."""
    c = model.config
    spect = model.upsample(mel)[:, :, : audio.shape[1]]
    b, m, t = spect.shape
    spect = spect.reshape(b, m, t // c.n_group, c.n_group).permute(0, 2, 1, 3).reshape(b, t // c.n_group, -1)
    spect = spect.permute(0, 2, 1)
    x = audio.reshape(b, t // c.n_group, c.n_group).permute(0, 2, 1)
    early: list[torch.Tensor] = []
    log_det = torch.zeros((), device=audio.device)
    for k in range(c.n_flows):
        if k % c.n_early_every == 0 and k > 0:
            early.append(x[:, : c.n_early_size])
            x = x[:, c.n_early_size :]
        conv = cast(Invertible1x1Conv, model.convinv[k]).conv
        w = conv.weight.squeeze(-1)
        x = nn.functional.conv1d(x, conv.weight)
        log_det = log_det + x.shape[2] * b * torch.logdet(w.float())
        half = x.shape[1] // 2
        x0, x1 = x[:, :half], x[:, half:]
        out = cast(WN, model.WN[k])(x0, spect)
        log_s, shift = out[:, half:], out[:, :half]
        x = torch.cat([x0, torch.exp(log_s) * x1 + shift], 1)
        log_det = log_det + log_s.sum()
    return torch.cat([*early, x], 1), log_det


def nll(z: torch.Tensor, log_det: torch.Tensor, sigma: float) -> torch.Tensor:
    """WaveGlow's loss: ``sum(z^2) / (2 sigma^2) - log det``, per element of z."""
    return ((z * z).sum() / (2 * sigma * sigma) - log_det) / z.numel()


RESOLUTIONS = ((512, 128), (1024, 256), (2048, 512))  # (n_fft, hop), Parallel WaveGAN's three


def _magnitude(audio: torch.Tensor, n_fft: int, hop: int) -> torch.Tensor:
    window = torch.hann_window(n_fft, device=audio.device)
    spec = torch.stft(audio, n_fft, hop, window=window, return_complex=True)
    return torch.sqrt(torch.clamp(spec.real**2 + spec.imag**2, min=1e-9))


def spectral_loss(fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
    """Multi-resolution STFT (spectral convergence + log-magnitude L1, averaged) and log-mel L1."""
    sc, mag = fake.new_zeros(()), fake.new_zeros(())
    for n_fft, hop in RESOLUTIONS:
        f, r = _magnitude(fake, n_fft, hop), _magnitude(real, n_fft, hop)
        sc = sc + torch.linalg.norm(r - f) / torch.linalg.norm(r)
        mag = mag + (torch.log(f) - torch.log(r)).abs().mean()
    config = MelConfig()
    basis = torch.from_numpy(mel_basis(config)).to(fake.device)
    f, r = (
        torch.log(torch.clamp(basis @ _magnitude(x, config.n_fft, config.hop_length), min=config.clip))
        for x in (fake, real)
    )
    mel = f - r
    n = len(RESOLUTIONS)
    return {"sc": sc / n, "log_magnitude": mag / n, "mel_l1": mel.abs().mean()}


Target = Literal["vocoded", "teacher"]


class _Segments:
    """Random aligned (mel, audio) windows: ``frames`` mel frames and their ``frames * 256`` samples.

    The audio is the ``target``: the teacher's mel vocoded by HiFi-GAN, or the teacher's own audio.
    """

    def __init__(self, data: Path, frames: int, target: Target) -> None:
        self.frames = frames
        self.audio: list[np.ndarray] = []
        self.mels: list[np.ndarray] = []
        for path in speech_shards(data):
            shard = SpeechShard(path)
            audio = vocoded_audio(path, shard) if target == "vocoded" else shard.audio
            for i in range(len(shard)):
                mel = shard.mel_of(i)
                if mel.shape[1] >= frames:
                    self.audio.append(audio[shard.audio_offsets[i] : shard.audio_offsets[i + 1]])
                    self.mels.append(mel)
        if not self.audio:
            raise ValueError(f"no sentence in {data} is {frames} mel frames long")

    def batch(self, rng: random.Random, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mels, audio = [], []
        for _ in range(size):
            i = rng.randrange(len(self.audio))
            f = rng.randrange(self.mels[i].shape[1] - self.frames + 1)
            mels.append(self.mels[i][:, f : f + self.frames].astype(np.float32))
            audio.append(self.audio[i][f * HOP : (f + self.frames) * HOP].astype(np.float32) / 32767)
        return (
            torch.from_numpy(np.stack(mels)).to(device, non_blocking=True),
            torch.from_numpy(np.stack(audio)).to(device, non_blocking=True),
        )


def train_waveglow(
    job: TrainJob,
    *,
    frames: int = 32,
    sigma: float = 1.0,
    sample_sigma: float = SAMPLE_SIGMA,
    target: Target = "vocoded",
    nll_weight: float = 0.0,
    spectral_weight: float = 1.0,
    wave_weight: float = 10.0,
    bf16: bool = True,
    config: WaveGlowConfig = SMALL,
    init: Path | None = None,
    pitch: Path | None = None,
) -> Path:
    """Train on ``nll_weight`` x NLL (at ``sigma``) + ``spectral_weight`` x the spectral loss of samples
    + ``wave_weight`` x their waveform L1, against the ``target`` audio.

    Samples are drawn at ``sample_sigma``, the noise scale inference will
    use; the checkpoint records it. ``bf16``: the WN convolutions run in
    bfloat16 (the flows stay float32). ``init``: a new run starts from these
    weights (our exported layout, e.g. the shipped ``waveglow.pt``) instead
    of identity flows. ``pitch``: a pitch head (``anchor train pitch``) that
    makes this a source-filter flow: samples are drawn from the excitation
    it implies (random starting phase) instead of noise at ``sample_sigma``,
    and the head ships inside the checkpoint, frozen.
    """
    if nll_weight <= 0 and spectral_weight <= 0 and wave_weight <= 0:
        raise ValueError("at least one of nll_weight, spectral_weight and wave_weight must be positive")
    dev, rng = job.begin()
    batch, lr = job.batch or 6, job.lr or 5e-4
    segments = _Segments(job.data, frames, target)
    model = trainable(config, source=pitch is not None)
    if pitch is not None:
        assert model.pitch is not None
        model.pitch.load_state_dict(load_pitch_head(pitch).state_dict())
        model.pitch.requires_grad_(False)
    for wn in model.WN:
        cast(WN, wn).autocast_dtype = torch.bfloat16 if bf16 else None
    run = job.run("waveglow")
    if init is not None and not run.checkpoint.is_file():
        start_from(model, init)
    model = model.to(dev)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    modules = {"model": model, "optimizer": optimizer}
    run.resume(modules)

    def step() -> dict[str, float]:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr * max(0.1, 1.0 - run.progress())
        mel, audio = segments.batch(rng, batch, dev)
        losses: dict[str, torch.Tensor] = {}
        total = audio.new_zeros(())
        if nll_weight > 0:
            z, log_det = flow_forward(model, mel, audio)
            losses["nll"] = nll(z, log_det, sigma)
            total = total + nll_weight * losses["nll"]
        if spectral_weight > 0 or wave_weight > 0:
            if model.pitch is not None:
                model.pitch.eval()
                with torch.no_grad():
                    noise = torch.randn_like(audio)
                    phase0 = 2 * math.pi * torch.rand(audio.shape[0], device=dev)
                    z = model.source_z(mel, noise, phase0)
            else:
                z = model.noise(mel, sample_sigma)
            fake = model(mel, z)
            spectral = spectral_loss(fake, audio)
            losses.update(spectral)
            total = total + spectral_weight * sum(spectral.values(), audio.new_zeros(()))
            losses["wave_l1"] = (fake - audio).abs().mean()
            total = total + wave_weight * losses["wave_l1"]
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        return {k: v.item() for k, v in losses.items()}

    train(run, modules, step)
    return export_waveglow(
        model, config, job.out / "waveglow-final.pt", step=run.step, sample_sigma=sample_sigma
    )


def start_from(model: WaveGlow, path: Path) -> None:
    """Load exported weights (``module.``-prefixed, weight norm kept) into a trainable ``model``.
    Flows without a source may start a model with one: its pitch head is loaded separately."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    state = data.get("state_dict") if isinstance(data, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a WaveGlow checkpoint of ours (no 'state_dict')")
    weights = {k.removeprefix("module."): v.float() for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # a tensor of another shape: another configuration
        raise ValueError(f"{path} does not fit this WaveGlow: {exc}") from None
    missing = [k for k in missing if not (k.startswith("pitch.") and model.pitch is not None)]
    if missing or unexpected:
        raise ValueError(
            f"{path} does not fit this WaveGlow: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def export_waveglow(
    model: WaveGlow,
    config: WaveGlowConfig,
    path: Path,
    *,
    step: int,
    sample_sigma: float = SAMPLE_SIGMA,
    half: bool = False,
) -> Path:
    """The DeepLearningExamples layout: ``module.``-prefixed weights (weight norm kept) and the config."""
    state = {
        f"module.{k}": (v.half() if half and v.is_floating_point() else v).detach().cpu()
        for k, v in model.state_dict().items()
    }
    fields = asdict(config)
    wn = {k: fields.pop(k) for k in ("n_layers", "n_channels", "kernel_size")}
    declared = {k: v for k, v in fields.items() if k not in ("hop_length", "upsample_kernel")}
    config_out = {**declared, "WN_config": wn, "sigma": sample_sigma}
    if model.pitch is not None:
        config_out["source"] = "pitch"
    torch.save({"state_dict": state, "config": config_out, "iteration": step}, path)
    return path
