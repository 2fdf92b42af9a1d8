"""Training the mouth GAN: mel windows -> mouth shapes, against the phoneme teacher and a temporal critic.

The teacher is ``anchor.face.visemes`` over Piper's own phoneme durations for
the speech shards (``anchor train data speech``): the phonetic shape the
mouth should have at each video frame's middle (vocal effort is applied at
run time, from the audio itself, as for the phoneme path). The generator sees only the sound. It is
scored on runs of ``SEQUENCE`` consecutive frames by L1 to the teacher, L1
of the frame-to-frame change (so it moves as fast, not only as far), and,
from ``adversarial_after`` on, a least-squares temporal discriminator that
learns teacher motion from generated motion: averaging regression alone
gives a mumbling, under-articulated mouth.

To carry over to voices it never heard, every sentence is also used sped up
and slowed down by resampling (pitch and formants move with it, durations
scale), and every run of windows gets a random gain and a random spectral
tilt (another microphone, another voice's brightness).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from anchor.core.resample import resample
from anchor.face.visemes import Timed, mouth_track, timed_phonemes
from anchor.train.loop import TrainJob, train
from anchor.train.speech_data import HOP, RATE, SpeechShard, speech_shards
from engines.face.mouth_gan import MouthGenerator, log_mel, window_start
from engines.face.wav2lip import MEL_WINDOW, SAMPLE_RATE

FPS = 25
SEQUENCE = 24  # frames per training run (~1 s)
FACTORS = (0.88, 1.0, 1.13)  # speed and pitch, by resampling
DB_SCALE = 8 / 100  # Wav2Lip's normalised units per dB
SILENT = -4.0


def phoneme_symbols() -> dict[int, str]:
    """Piper joe-medium's phoneme ids to their symbols."""
    from engines.voices.piper import JOE_MODEL, PiperConfig

    model = JOE_MODEL.resolve()
    config = PiperConfig.read(model.with_name(model.name + ".json"))
    return {ids[0]: symbol for symbol, ids in config.phoneme_id_map.items()}


def sentence_frames(
    audio16k: npt.NDArray[np.float32], phonemes: list[Timed]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """One sentence's mel, each frame's window start (column into it) and the teacher's shapes."""
    frames = math.ceil(len(audio16k) * FPS / SAMPLE_RATE)
    j0 = window_start(0, FPS)
    j1 = window_start(frames - 1, FPS) + MEL_WINDOW
    mel = log_mel(audio16k, 0, j0, j1 - j0)
    columns = np.array([window_start(i, FPS) - j0 for i in range(frames)], dtype=np.int64)
    teacher = mouth_track(phonemes, (np.arange(frames) + 0.5) / FPS)
    return mel, columns, teacher


class MouthFrames:
    """Every sentence of the speech shards at each speed: mels, window columns and teacher shapes."""

    def __init__(self, data: Path, device: torch.device, *, shards: int | None = None) -> None:
        symbols = phoneme_symbols()
        mels, columns, teachers, runs = [], [], [], []
        base = frame = 0
        for path in speech_shards(data)[:shards]:
            shard = SpeechShard(path)
            for i in range(len(shard)):
                names = [symbols.get(int(k), "?") for k in shard.ids_of(i)]
                seconds = shard.durations_of(i).astype(np.float64) * HOP / RATE
                audio = resample(shard.audio_of(i), RATE, SAMPLE_RATE)
                for factor in FACTORS:
                    sped = (
                        audio if factor == 1.0 else resample(audio, SAMPLE_RATE, round(SAMPLE_RATE / factor))
                    )
                    phonemes = timed_phonemes(names, list(seconds / factor))
                    mel, cols, teacher = sentence_frames(sped, phonemes)
                    if len(teacher) >= SEQUENCE:
                        runs.append((frame, frame + len(teacher) - SEQUENCE + 1))
                    mels.append(mel.astype(np.float16))
                    columns.append(cols + base)
                    teachers.append(teacher)
                    base += mel.shape[1]
                    frame += len(teacher)
        self.mel = torch.from_numpy(np.concatenate(mels, axis=1)).to(device)  # [80, M]
        self.columns = torch.from_numpy(np.concatenate(columns)).to(device)  # [N]
        self.teacher = torch.from_numpy(np.concatenate(teachers)).to(device)  # [N, 3]
        starts = np.concatenate([np.arange(a, b) for a, b in runs])
        self.starts = torch.from_numpy(starts).to(device)  # frames that begin a full run
        self.device = device

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows ``[size * SEQUENCE, 1, 80, 16]`` (random gain, tilt); teacher ``[size, SEQUENCE, 3]``."""
        pick = torch.randint(len(self.starts), (size,), generator=generator, device=self.device)
        frames = (self.starts[pick][:, None] + torch.arange(SEQUENCE, device=self.device)).reshape(-1)
        cols = self.columns[frames][:, None] + torch.arange(MEL_WINDOW, device=self.device)
        windows = self.mel[:, cols].permute(1, 0, 2).float()  # [B*S, 80, 16]
        gain_db = torch.empty(size, device=self.device).uniform_(-12.0, 6.0, generator=generator)
        tilt_db = torch.empty(size, device=self.device).uniform_(-6.0, 6.0, generator=generator)
        bands = torch.linspace(-1.0, 1.0, windows.shape[1], device=self.device)
        shift_db = gain_db[:, None] + tilt_db[:, None] * bands[None, :]  # [B, 80]
        shift = (shift_db * DB_SCALE).repeat_interleave(SEQUENCE, dim=0)[:, :, None]
        sound = windows > SILENT + 1e-3
        windows = torch.where(sound, (windows + shift).clamp(SILENT, 4.0), windows)
        return windows[:, None], self.teacher[frames].reshape(size, SEQUENCE, 3)


class MotionCritic(nn.Module):
    """Teacher or generated, from a run of mouth shapes ``[B, SEQUENCE, 3]`` (least-squares scores)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(3, width, 5, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(width, 2 * width, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(2 * width, 2 * width, 5, stride=2, padding=2),
            nn.LeakyReLU(0.2),
            nn.Conv1d(2 * width, 1, 3, padding=1),
        )

    def forward(self, shapes: torch.Tensor) -> torch.Tensor:
        scores: torch.Tensor = self.body(shapes.transpose(1, 2)).mean(dim=(1, 2))
        return scores


def train_mouth(
    job: TrainJob,
    *,
    width: int = 128,
    adversarial: float = 0.05,
    adversarial_after: int = 300,
    shards: int | None = None,
) -> Path:
    dev, _ = job.begin()
    batch, lr = job.batch or 32, job.lr or 1e-3
    frames = MouthFrames(job.data, dev, shards=shards)
    generator = torch.Generator(device=dev).manual_seed(job.seed)
    model = MouthGenerator(width).to(dev)
    critic = MotionCritic().to(dev)
    g_opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(critic.parameters(), lr=lr / 2, betas=(0.5, 0.999))
    run = job.run("mouth")
    modules = {"model": model, "critic": critic, "g_opt": g_opt, "d_opt": d_opt}
    run.resume(modules)
    weights = torch.tensor([2.0, 1.0, 1.0], device=dev)  # the opening matters most to a viewer

    def step() -> dict[str, float]:
        model.train()
        critic.train()
        windows, teacher = frames.batch(batch, generator)
        fake = model(windows).reshape(batch, SEQUENCE, 3)
        l1 = ((fake - teacher).abs() * weights).mean()
        motion = ((fake.diff(dim=1) - teacher.diff(dim=1)).abs() * weights).mean()
        weight = adversarial if run.step >= adversarial_after else 0.0
        fool = ((critic(fake) - 1) ** 2).mean()
        g_loss = l1 + 2.0 * motion + weight * fool
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        d_loss = ((critic(teacher) - 1) ** 2).mean() + (critic(fake.detach()) ** 2).mean()
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        return {"l1": l1.item(), "motion": motion.item(), "adversarial": fool.item(), "critic": d_loss.item()}

    train(run, modules, step)
    return export_mouth(model, job.out / "mouth-final.pt", step=run.step)


def export_mouth(model: MouthGenerator, path: Path, *, step: int) -> Path:
    """Our checkpoint layout (``engines.face.mouth_gan``), fp32; `anchor train export` ships it in fp16."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "config": {"width": model.width}, "step": step}, path)
    return path
