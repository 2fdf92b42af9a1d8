"""Training the pitch head (``engines/models/source.py``): the teacher's mel -> its F0 and voicing.

Labels are Praat's pitch (``praat-parselmouth``, a dev dependency) of the
teacher's own audio at each mel frame's centre. Loss: L1 of log F0 on voiced
frames plus binary cross-entropy of the voicing; each window gets a random
gain (a constant added to the log-mel) so the head reads the harmonics'
spacing, not the level. On this CPU a few thousand steps take a minute or two.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from anchor.train.loop import TrainJob, train
from anchor.train.speech_data import HOP, RATE, SpeechShard, speech_shards
from engines.models.source import F0_REF, PitchHead

WINDOW = 64  # mel frames per training window


def frame_f0(audio: npt.NDArray[np.float32], frames: int) -> npt.NDArray[np.float64]:
    """Praat's F0 (Hz, 0 unvoiced) at the centre of each HiFi-GAN-framed mel frame of ``audio``."""
    import parselmouth

    sound = parselmouth.Sound(np.asarray(audio, dtype=np.float64), sampling_frequency=RATE)
    pitch = sound.to_pitch(time_step=HOP / RATE, pitch_floor=60.0, pitch_ceiling=400.0)
    f0 = np.nan_to_num(pitch.selected_array["frequency"])
    times = (np.arange(frames) * HOP + HOP // 2) / RATE
    index = np.round((times - pitch.xs()[0]) * RATE / HOP).astype(np.int64)
    inside = (index >= 0) & (index < len(f0))
    out = np.zeros(frames)
    out[inside] = f0[index[inside]]
    return out


class _Frames:
    def __init__(self, data: Path) -> None:
        self.mels: list[npt.NDArray[np.float32]] = []
        self.f0: list[npt.NDArray[np.float64]] = []
        for path in speech_shards(data):
            shard = SpeechShard(path)
            for i in range(len(shard)):
                mel = shard.mel_of(i).astype(np.float32)
                if mel.shape[1] >= WINDOW:
                    self.mels.append(mel)
                    self.f0.append(frame_f0(shard.audio_of(i), mel.shape[1]))
        if not self.mels:
            raise ValueError(f"no sentence in {data} is {WINDOW} mel frames long")

    def batch(self, rng: random.Random, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        mels, f0 = [], []
        for _ in range(size):
            i = rng.randrange(len(self.mels))
            s = rng.randrange(self.mels[i].shape[1] - WINDOW + 1)
            mels.append(self.mels[i][:, s : s + WINDOW] + rng.uniform(-1.5, 0.5))
            f0.append(self.f0[i][s : s + WINDOW])
        return torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(f0)).float()


def train_pitch(job: TrainJob) -> Path:
    dev, rng = job.begin()
    batch, lr = job.batch or 32, job.lr or 1e-3
    frames = _Frames(job.data)
    model = PitchHead().to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    modules = {"model": model, "optimizer": optimizer}
    run = job.run("pitch")
    run.resume(modules)

    def step() -> dict[str, float]:
        model.train()
        mel, f0 = (t.to(dev) for t in frames.batch(rng, batch))
        out = model(mel)
        voiced = (f0 > 0).float()
        voicing = nn.functional.binary_cross_entropy_with_logits(out[:, 1], voiced)
        target = torch.log(f0.clamp(min=1.0) / F0_REF)
        log_f0 = ((out[:, 0] - target).abs() * voiced).sum() / voiced.sum().clamp(min=1.0)
        optimizer.zero_grad(set_to_none=True)
        (voicing + log_f0).backward()
        optimizer.step()
        return {"voicing_bce": voicing.item(), "log_f0_l1": log_f0.item()}

    train(run, modules, step)
    final = job.out / "pitch-final.pt"
    torch.save(
        {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "step": run.step}, final
    )
    return final


def load_pitch_head(path: Path) -> PitchHead:
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise ValueError(f"{path} is not a pitch-head checkpoint (no 'model' state dict)")
    head = PitchHead()
    head.load_state_dict(data["model"])
    return head.eval()
