"""The mouth GAN's generator: a 200 ms mel window around a video frame -> that frame's mouth shape.

It predicts ``(open, width, round)`` for the mouth rig from the sound alone,
for speech whose phonemes we do not know (a viewer's microphone, ``anchor
lipsync FILE``). It was trained against the phoneme teacher
(``anchor.face.visemes``) with a temporal discriminator
(``anchor.train.mouth_gan_trainer``); its checkpoint is ours:
``{'state_dict', 'config': {'width'}, 'step'}``.

Windows are centred on the frame: 16 mel frames (Wav2Lip's mel: 16 kHz, hop
200, n_fft 800, 80 bands, in [-4, 4]) around the frame's middle, so the
driver's lookahead is about 100 ms. Audio outside the utterance is silence
(zero samples, pre-emphasis starting from zero), the same in training, in a
whole file and in a stream: streaming windows equal whole-file windows.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from engines.errors import WeightsError
from engines.face.wav2lip import _MEL, HOP, MEL_FPS, MEL_WINDOW, SAMPLE_RATE, Wav2LipMel, _log_mel
from engines.spec import Dim, EngineSpec, TensorSpec
from engines.weights import StateDict, WeightsSource, check_state_dict, read_checkpoint

MOUTH_GAN = "mouth-gan"
SHAPE = 3  # open, width, round
_HALF = MEL_WINDOW // 2


class MouthGenerator(nn.Module):
    """Dilated 1-D convolutions over the window's 16 mel frames, pooled at its centre and overall."""

    def __init__(self, width: int = 128) -> None:
        super().__init__()
        self.width = width
        self.inp = nn.Conv1d(80, width, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.LeakyReLU(0.2), nn.Conv1d(width, width, 3, padding=d, dilation=d))
            for d in (1, 2, 4, 1)
        )
        self.head = nn.Sequential(
            nn.LeakyReLU(0.2), nn.Linear(2 * width, 64), nn.LeakyReLU(0.2), nn.Linear(64, SHAPE)
        )

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.inp(audio[:, 0])
        for block in self.blocks:
            h = h + block(h)
        pooled = torch.cat([h[:, :, _HALF - 1 : _HALF + 1].mean(dim=2), h.mean(dim=2)], dim=1)
        out = self.head(pooled)
        return torch.cat(
            [torch.sigmoid(out[:, :1]), torch.tanh(out[:, 1:2]), torch.sigmoid(out[:, 2:])], dim=1
        )


def load_mouth_gan(path: Path | str) -> MouthGenerator:
    path = Path(path)
    data = read_checkpoint(path)
    if not isinstance(data, dict) or not isinstance(data.get("state_dict"), dict):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise WeightsError(f"mouth GAN checkpoint {path} has no 'state_dict' (found {found})")
    config = data.get("config", {})
    width = config.get("width") if isinstance(config, dict) else None
    if not isinstance(width, int) or width <= 0:
        raise WeightsError(f"mouth GAN checkpoint {path} has no positive integer config['width']")
    state: StateDict = data["state_dict"]
    model = MouthGenerator(width)
    check_state_dict(model, state, str(path))
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def window_start(frame: int, fps: float) -> int:
    """The first mel frame of video frame ``frame``'s window: 8 mel frames before its middle."""
    return round((frame + 0.5) * MEL_FPS / fps) - _HALF


def lookahead_samples(fps: float) -> int:
    """16 kHz samples past a frame's last sample that its window's STFT reaches (~100 ms at 25 fps)."""
    last_centre = ((0.5 * MEL_FPS / fps + 0.5) + _HALF - 1) * HOP  # frame 0's, the worst rounding
    return math.ceil(last_centre + _MEL.n_fft / 2 - SAMPLE_RATE / fps)


#: ``history_samples`` at any frame rate: the window's first STFT starts at most 8.5 hops before a frame.
MAX_HISTORY_SAMPLES = _MEL.n_fft // 2 + 1 + (_HALF + 1) * HOP


def history_samples(fps: float) -> int:
    """16 kHz samples before a frame's first sample that its window's STFT and pre-emphasis reach."""
    first_centre = (0.5 * MEL_FPS / fps - 0.5 - _HALF) * HOP
    return math.ceil(_MEL.n_fft / 2 + 1 - first_centre)


def log_mel(audio: npt.NDArray[np.floating], start: int, first: int, count: int) -> npt.NDArray[np.float32]:
    """Mel frames ``first .. first+count`` (frame ``j`` centred on sample ``j * 200``; may be negative).

    ``audio[k]`` is sample ``start + k`` of the utterance; every other sample is silence.
    """
    half = _MEL.n_fft // 2
    lo, hi = first * HOP - half - 1, (first + count - 1) * HOP + half
    x = np.zeros(hi - lo, dtype=np.float64)
    a, b = max(lo, start), min(hi, start + len(audio))
    if b > a:
        x[a - lo : b - lo] = audio[a - start : b - start]
    params = Wav2LipMel()
    padded = x[1:] - params.preemphasis * x[:-1]
    return _log_mel(padded, count, params)


def frame_windows(
    audio: npt.NDArray[np.floating], start: int, first: int, count: int, fps: float
) -> npt.NDArray[np.float32]:
    """``[count, 1, 80, 16]``: the windows of video frames ``first .. first+count``."""
    j0 = window_start(first, fps)
    j1 = window_start(first + count - 1, fps) + MEL_WINDOW
    mel = log_mel(audio, start, j0, j1 - j0)
    out = np.empty((count, 1, mel.shape[0], MEL_WINDOW), dtype=np.float32)
    for k in range(count):
        a = window_start(first + k, fps) - j0
        out[k, 0] = mel[:, a : a + MEL_WINDOW]
    return out


def _mel_inputs(
    rng: np.random.Generator, name: str, shapes: dict[str, tuple[int, ...]]
) -> npt.NDArray[np.float32]:
    return rng.uniform(-4, 4, shapes[name]).astype(np.float32)


def mouth_gan_spec(weights: WeightsSource | None = None) -> EngineSpec:
    return EngineSpec(
        name=MOUTH_GAN,
        description="mouth GAN generator: mel window (80x16, centred on a video frame) -> open, width, round",
        inputs=(TensorSpec("audio", "float32", ("batch", 1, 80, MEL_WINDOW)),),
        outputs=(TensorSpec("mouth", "float32", ("batch", SHAPE)),),
        axes={"batch": Dim(1, 8, 256)},
        weights=weights or WeightsSource.project("mouth_gan.pt"),
        load=load_mouth_gan,
        sample_value=_mel_inputs,
        media_seconds=lambda inputs: inputs["audio"].shape[0] / 25,  # one frame at 25 fps
    )
