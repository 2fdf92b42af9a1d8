"""The Wav2Lip generator, its loader for the public checkpoints, and its exact mel.

Checkpoints people have: ``wav2lip.pth`` / ``wav2lip_gan.pth`` as
``{'state_dict': {'module.…'}, 'optimizer', 'global_step', 'global_epoch'}``,
a bare state dict, or (some newer copies) the whole pickled module from the
original ``models`` package.

The module's ``forward(audio[N,1,80,16], faces[N,6,96,96]) -> [N,3,96,96]``:
faces are BGR in [0, 1], channels 0-2 the target with its lower half
(rows 48-95) zeroed, channels 3-5 a reference frame of the same face.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.audio.mel import MelConfig, mel_basis
from engines.errors import WeightsError
from engines.spec import Dim, EngineSpec, TensorSpec
from engines.weights import (
    StateDict,
    WeightsSource,
    check_state_dict,
    read_checkpoint_or_module,
    strip_prefix,
)

SAMPLE_RATE = 16000
HOP = 200
MEL_FPS = SAMPLE_RATE // HOP  # 80 mel frames a second
MEL_WINDOW = 16  # mel frames per video frame (200 ms)
FACE_SIZE = 96


class ConvBlock(nn.Module):
    """Conv (or transposed conv) + BatchNorm + ReLU, with an optional identity shortcut."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel: int,
        stride: int | tuple[int, int],
        padding: int,
        *,
        residual: bool = False,
        transpose: bool = False,
        output_padding: int = 0,
    ) -> None:
        super().__init__()
        conv: nn.Module = (
            nn.ConvTranspose2d(cin, cout, kernel, stride, padding, output_padding)
            if transpose
            else nn.Conv2d(cin, cout, kernel, stride, padding)
        )
        self.conv_block = nn.Sequential(conv, nn.BatchNorm2d(cout))
        self.residual = residual
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv_block(x)
        act: torch.Tensor = self.act(out + x if self.residual else out)
        return act


def _stage(
    cin: int, cout: int, stride: int | tuple[int, int], repeats: int, *, kernel: int = 3
) -> list[nn.Module]:
    """A strided conv into ``cout`` channels, then ``repeats`` residual 3x3 convs."""
    first = ConvBlock(cin, cout, kernel, stride, kernel // 2)
    return [first, *(ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(repeats))]


def _up(cin: int, cout: int, repeats: int) -> nn.Sequential:
    """A 2x transposed conv into ``cout`` channels, then ``repeats`` residual convs."""
    first = ConvBlock(cin, cout, 3, 2, 1, transpose=True, output_padding=1)
    return nn.Sequential(first, *(ConvBlock(cout, cout, 3, 1, 1, residual=True) for _ in range(repeats)))


def _squeeze(channels: int, out: int) -> list[nn.Module]:
    """3x3 (no padding) down to 1x1, then a 1x1 conv."""
    return [ConvBlock(channels, out, 3, 1, 0), ConvBlock(out, out, 1, 1, 0)]


class Wav2Lip(nn.Module):
    """U-Net face decoder fed by a face encoder (skip connections) and an audio encoder.

    ``width`` scales every layer's channels (1 is the published model; our
    own trained face GAN uses a narrower one with the same topology).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0 or abs(16 * width - round(16 * width)) > 1e-9:
            raise ValueError(f"width must make 16 * width a whole number of channels, got {width}")
        self.width = width

        def c(n: int) -> int:
            return round(n * width)

        self.face_encoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(6, c(16), 7, 1, 3)),  # 96
                nn.Sequential(*_stage(c(16), c(32), 2, 2)),  # 48
                nn.Sequential(*_stage(c(32), c(64), 2, 3)),  # 24
                nn.Sequential(*_stage(c(64), c(128), 2, 2)),  # 12
                nn.Sequential(*_stage(c(128), c(256), 2, 2)),  # 6
                nn.Sequential(*_stage(c(256), c(512), 2, 1)),  # 3
                nn.Sequential(*_squeeze(c(512), c(512))),  # 1
            ]
        )
        self.audio_encoder = nn.Sequential(
            *_stage(1, c(32), 1, 2),  # 80x16
            *_stage(c(32), c(64), (3, 1), 2),  # 27x16
            *_stage(c(64), c(128), 3, 2),  # 9x6
            *_stage(c(128), c(256), (3, 2), 1),  # 3x3
            *_squeeze(c(256), c(512)),  # 1x1
        )
        self.face_decoder_blocks = nn.ModuleList(
            [
                nn.Sequential(ConvBlock(c(512), c(512), 1, 1, 0)),  # 1
                nn.Sequential(
                    ConvBlock(c(1024), c(512), 3, 1, 0, transpose=True),
                    ConvBlock(c(512), c(512), 3, 1, 1, residual=True),
                ),  # 3
                _up(c(1024), c(512), 2),  # 6
                _up(c(768), c(384), 2),  # 12
                _up(c(512), c(256), 2),  # 24
                _up(c(320), c(128), 2),  # 48
                _up(c(160), c(64), 2),  # 96
            ]
        )
        self.output_block = nn.Sequential(
            ConvBlock(c(80), c(32), 3, 1, 1), nn.Conv2d(c(32), 3, 1, 1, 0), nn.Sigmoid()
        )

    def forward(self, audio: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
        skips = []
        x = faces
        for block in self.face_encoder_blocks:
            x = block(x)
            skips.append(x)
        x = self.audio_encoder(audio)
        for block in self.face_decoder_blocks:
            x = torch.cat((block(x), skips.pop()), dim=1)
        out: torch.Tensor = self.output_block(x)
        return out


def _state_of(data: Any, path: Path) -> StateDict:
    if isinstance(data, nn.Module):
        return dict(data.state_dict())
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        return dict(data["state_dict"])
    if isinstance(data, dict) and data and all(isinstance(v, torch.Tensor) for v in data.values()):
        return dict(data)
    found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
    raise WeightsError(f"Wav2Lip checkpoint {path} has no 'state_dict' and is no module (found {found})")


def load_wav2lip(path: Path | str) -> Wav2Lip:
    """A ready generator (eval mode) from any public Wav2Lip checkpoint format."""
    path = Path(path)
    data = read_checkpoint_or_module(
        path, "Wav2Lip", {"models.wav2lip": ("Wav2Lip",), "models.conv": ("Conv2d", "Conv2dTranspose")}
    )
    state = strip_prefix(_state_of(data, path), "module.")
    first = state.get("face_encoder_blocks.0.0.conv_block.0.weight")
    if first is None or first.ndim != 4:
        raise WeightsError(f"Wav2Lip checkpoint {path} has no face_encoder_blocks.0.0.conv_block.0.weight")
    try:
        model = Wav2Lip(width=first.shape[0] / 16)
    except ValueError as exc:
        raise WeightsError(f"Wav2Lip checkpoint {path}: {exc}") from None
    check_state_dict(model, state, str(path))
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True
    )
    return model.eval()


@dataclass(frozen=True)
class Wav2LipMel:
    """Wav2Lip's ``audio.py`` hyper-parameters (its ``hparams.py``)."""

    preemphasis: float = 0.97
    ref_level_db: float = 20.0
    min_level_db: float = -100.0
    max_abs_value: float = 4.0


_MEL = MelConfig(sample_rate=SAMPLE_RATE, n_fft=800, hop_length=HOP, win_length=800, fmin=55.0, fmax=7600.0)


@lru_cache(maxsize=1)
def _window() -> npt.NDArray[np.float64]:
    n = np.arange(_MEL.win_length)
    return 0.5 - 0.5 * np.cos(2 * np.pi * n / _MEL.win_length)  # periodic Hann, as librosa's stft


def melspectrogram(
    wav16k: npt.NDArray[np.floating], params: Wav2LipMel = Wav2LipMel()
) -> npt.NDArray[np.float32]:
    """``[80, 1 + len//200]`` normalised log-mel of 16 kHz mono audio, exactly as Wav2Lip computes it.

    Pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]``; a centred STFT (reflect padding
    of n_fft/2, periodic Hann 800, hop 200); magnitude through librosa's
    Slaney mel basis (fmin 55, fmax 7600); ``20 log10(max(1e-5, m)) - 20``;
    then ``clip(8 (S + 100) / 100 - 4, -4, 4)``.
    """
    x = np.asarray(wav16k, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        raise ValueError("melspectrogram needs at least one sample")
    y = np.empty_like(x)
    y[0] = x[0]
    y[1:] = x[1:] - params.preemphasis * x[:-1]
    pad = _MEL.n_fft // 2
    if len(y) <= pad:
        y = np.pad(y, (0, pad + 1 - len(y)))  # reflect padding needs more samples than it pads
    padded = np.pad(y, pad, mode="reflect")
    return _log_mel(padded, 1 + (len(padded) - _MEL.n_fft) // HOP, params)


def _log_mel(padded: npt.NDArray[np.float64], frames: int, params: Wav2LipMel) -> npt.NDArray[np.float32]:
    """Frames ``k`` of ``padded[k*hop : k*hop + n_fft]`` through the STFT, mel, dB and normalisation."""
    index = np.arange(_MEL.n_fft)[None, :] + HOP * np.arange(frames)[:, None]
    spectrum = np.abs(np.fft.rfft(padded[index] * _window(), axis=1)).T
    mel = mel_basis(_MEL).astype(np.float64) @ spectrum
    min_level = np.exp(params.min_level_db / 20 * np.log(10))
    db = 20 * np.log10(np.maximum(min_level, mel)) - params.ref_level_db
    m = params.max_abs_value
    normalised = 2 * m * (db - params.min_level_db) / -params.min_level_db - m
    return np.asarray(np.clip(normalised, -m, m), dtype=np.float32)


def streaming_windows(
    audio: npt.NDArray[np.float32],
    start: int,
    first: int,
    count: int,
    fps: float,
    params: Wav2LipMel = Wav2LipMel(),
) -> npt.NDArray[np.float32]:
    """``mel_windows(melspectrogram(whole), first, count, fps)`` from only the part of the audio they need.

    ``audio[k]`` is sample ``start + k`` of the utterance; it must reach back
    to the first window's start minus ``n_fft/2 + 1`` samples (or to the
    utterance's start). Samples past its end read as silence, where the
    whole-file mel would reflect: only the utterance's last frames differ.
    """
    j0 = mel_start(first, fps)
    j1 = mel_start(first + count - 1, fps) + MEL_WINDOW
    half = _MEL.n_fft // 2
    lo, hi = j0 * HOP - half, (j1 - 1) * HOP + half

    def span(a: int, b: int) -> npt.NDArray[np.float64]:
        if a < start and start > 0:
            raise ValueError(f"audio from sample {a} is needed, but it starts at {start}")
        out = np.zeros(b - a, dtype=np.float64)
        s, e = max(a, start), min(b, start + len(audio))
        if e > s:
            out[s - a : e - a] = audio[s - start : e - start]
        return out

    if lo <= 0:  # the utterance's start: pre-emphasis and reflect padding exactly as for the whole file
        x = span(0, hi)
        y = np.concatenate([x[:1], x[1:] - params.preemphasis * x[:-1]])
        padded = np.pad(y, (half, 0), mode="reflect")[j0 * HOP :]
    else:
        x = span(lo - 1, hi)
        padded = x[1:] - params.preemphasis * x[:-1]
    mel = _log_mel(padded, j1 - j0, params)
    out = np.empty((count, 1, mel.shape[0], MEL_WINDOW), dtype=np.float32)
    for k in range(count):
        a = mel_start(first + k, fps) - j0
        out[k, 0] = mel[:, a : a + MEL_WINDOW]
    return out


def lookahead_samples(fps: float) -> int:
    """16 kHz samples past a video frame's end that its mel window reaches (about 185 ms at 25 fps)."""
    return (MEL_WINDOW - 1) * HOP + _MEL.n_fft // 2 + HOP - int(SAMPLE_RATE / fps)


def mel_start(frame: int, fps: float) -> int:
    """The first mel frame of video frame ``frame``'s 16-frame window (Wav2Lip's ``int(i * 80 / fps)``)."""
    return int(frame * MEL_FPS / fps)


def mel_windows(mel: npt.NDArray[np.float32], first: int, count: int, fps: float) -> npt.NDArray[np.float32]:
    """``[count, 1, 80, 16]`` windows for video frames ``first..first+count``.

    A window running past the end repeats the last mel frame (a stream pads
    its end with silence first, so this only touches the final frame or two).
    """
    out = np.empty((count, 1, mel.shape[0], MEL_WINDOW), dtype=np.float32)
    for k in range(count):
        start = mel_start(first + k, fps)
        cols = np.minimum(np.arange(start, start + MEL_WINDOW), mel.shape[1] - 1)
        out[k, 0] = mel[:, cols]
    return out


def _face_inputs(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.float32]:
    if name == "audio":
        return rng.uniform(-4, 4, shapes[name]).astype(np.float32)
    faces = rng.uniform(0, 1, shapes[name]).astype(np.float32)
    faces[:, :3, FACE_SIZE // 2 :] = 0
    return faces


def wav2lip_spec(weights: WeightsSource | None = None, name: str = "wav2lip") -> EngineSpec:
    return EngineSpec(
        name=name,
        description="Wav2Lip generator: mel window (80x16) + masked and reference face (6x96x96) -> face",
        inputs=(
            TensorSpec("audio", "float32", ("batch", 1, 80, MEL_WINDOW)),
            TensorSpec("faces", "float32", ("batch", 6, FACE_SIZE, FACE_SIZE)),
        ),
        outputs=(TensorSpec("face", "float32", ("batch", 3, FACE_SIZE, FACE_SIZE)),),
        axes={"batch": Dim(1, 8, 128)},
        weights=weights or WeightsSource.project("wav2lip.pth"),
        load=load_wav2lip,
        sample_value=_face_inputs,
        media_seconds=lambda inputs: inputs["audio"].shape[0] / 25,  # one frame at 25 fps
    )
