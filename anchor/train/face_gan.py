"""Training the face GAN: the Wav2Lip generator topology (narrower) against a quality discriminator.

As Wav2Lip trains its GAN: the generator sees the target frame with its
lower half blanked plus a reference frame, and the frame's 16-step mel
window; it is scored by L1 to the target (the whole face, and once more the
lower half, where the mouth is) plus ``adversarial`` times the quality
discriminator's verdict on its lower half. The discriminator learns real
lower faces from generated ones. References are the portrait's own crop
(what the live driver feeds) or, half the time, another frame, so the
generator must take the mouth from the audio, not copy it.

To carry over to voices it never heard, each window is shifted by a random
gain (-12 to +6 dB, in Wav2Lip's normalised dB scale; silence stays silent):
the animator that made the targets adapts to loudness, so the mouth must not
depend on it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import torch
from torch import nn

from anchor.train.loop import Budget, Run, pick_device, train
from engines.face.wav2lip import FACE_SIZE, MEL_WINDOW, Wav2Lip, mel_start

FPS = 25
HALF = FACE_SIZE // 2
DB_SCALE = 8 / 100  # Wav2Lip's normalised units per dB


class QualityDiscriminator(nn.Module):
    """Real or generated, from the lower half of a 96x96 face (Wav2Lip's ``disc_qual`` role)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width, 8 * width]
        layers: list[nn.Module] = []
        for cin, cout in itertools.pairwise(chans):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)  # 48x96 -> 1x3
        self.head = nn.Linear(8 * width, 1)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        h = self.body(faces[:, :, HALF:])
        logits: torch.Tensor = self.head(h.mean(dim=(2, 3))).squeeze(-1)
        return logits


class FaceFrames:
    """Every face shard on ``device``: crops, the reference, and each frame's mel-window columns."""

    def __init__(self, data: Path, device: torch.device) -> None:
        shards = sorted((data / "face").glob("shard-[0-9][0-9][0-9][0-9][0-9].npz"))
        if not shards:
            raise FileNotFoundError(
                f"no face shards under {data / 'face'}: run `anchor train data face` first"
            )
        crops, mels, columns = [], [], []
        base = 0
        for path in shards:
            with np.load(path) as z:
                crops.append(z["crops"])
                mels.append(z["mel"])
                frames, mel_at = z["frame_offsets"], z["mel_offsets"]
            for s in range(len(frames) - 1):
                first, last = mel_at[s], mel_at[s + 1] - 1
                for i in range(frames[s + 1] - frames[s]):
                    start = first + mel_start(i, FPS)
                    columns.append(base + np.minimum(np.arange(start, start + MEL_WINDOW), last))
            base += mels[-1].shape[1]
        self.crops = torch.from_numpy(np.concatenate(crops)).to(device)  # [N, 96, 96, 3] uint8 BGR
        self.mel = torch.from_numpy(np.concatenate(mels, axis=1)).to(device)  # [80, M] f16
        self.columns = torch.from_numpy(np.stack(columns)).to(device)  # [N, 16]
        reference = np.load(data / "face" / "reference.npy")
        self.reference = torch.from_numpy(reference).to(device)
        self.device = device

    def __len__(self) -> int:
        return len(self.crops)

    @staticmethod
    def image(crops: torch.Tensor) -> torch.Tensor:
        return crops.permute(0, 3, 1, 2).float() / 255

    def batch(
        self, rows: torch.Tensor, generator: torch.Generator, augment: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mel windows ``[B,1,80,16]``, generator faces ``[B,6,96,96]``, targets ``[B,3,96,96]``)."""
        n = len(rows)
        target = self.image(self.crops[rows])
        others = torch.randint(len(self), (n,), generator=generator, device=self.device)
        own = torch.rand(n, generator=generator, device=self.device) < 0.5
        reference = torch.where(
            own[:, None, None, None],
            self.image(self.reference[None].expand(n, -1, -1, -1)),
            self.image(self.crops[others]),
        )
        masked = target.clone()
        masked[:, :, HALF:] = 0
        windows = self.mel[:, self.columns[rows]].permute(1, 0, 2).float()[:, None]  # [B, 1, 80, 16]
        if augment:
            gain = (torch.rand(n, generator=generator, device=self.device) * 18 - 12) * DB_SCALE
            shifted = torch.clamp(windows + gain[:, None, None, None], -4.0, 4.0)
            windows = torch.where(windows > -3.99, shifted, windows)
        return windows, torch.cat([masked, reference], 1), target


def train_face(
    data: Path,
    out: Path,
    budget: Budget,
    *,
    device: str = "auto",
    batch: int = 64,
    width: float = 0.25,
    lr: float = 2e-4,
    adversarial: float = 0.07,
    adversarial_after: int = 500,
    seed: int = 0,
) -> Path:
    torch.manual_seed(seed)
    dev = pick_device(device)
    frames = FaceFrames(data, dev)
    generator = torch.Generator(device=dev).manual_seed(seed)
    model = Wav2Lip(width).to(dev)
    critic = QualityDiscriminator().to(dev)
    g_opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.5, 0.999))
    d_opt = torch.optim.Adam(critic.parameters(), lr=lr, betas=(0.5, 0.999))
    run = Run(out, "face", budget)
    modules = {"model": model, "critic": critic, "g_opt": g_opt, "d_opt": d_opt}
    run.resume(modules)
    bce = nn.BCEWithLogitsLoss()

    def step() -> dict[str, float]:
        model.train()
        critic.train()
        rows = torch.randint(len(frames), (batch,), generator=generator, device=dev)
        windows, faces, target = frames.batch(rows, generator)
        fake = model(windows, faces)
        l1 = (fake - target).abs().mean() + (fake[:, :, HALF:] - target[:, :, HALF:]).abs().mean()
        weight = adversarial if run.step >= adversarial_after else 0.0
        fool = bce(critic(fake), torch.ones(batch, device=dev))
        g_loss = l1 + weight * fool
        g_opt.zero_grad(set_to_none=True)
        g_loss.backward()
        g_opt.step()
        d_loss = bce(critic(target), torch.ones(batch, device=dev)) + bce(
            critic(fake.detach()), torch.zeros(batch, device=dev)
        )
        d_opt.zero_grad(set_to_none=True)
        d_loss.backward()
        d_opt.step()
        return {"l1": l1.item(), "adversarial": fool.item(), "discriminator": d_loss.item()}

    train(run, modules, step)
    return export_face(model, out / "face-final.pt", step=run.step)


def export_face(model: Wav2Lip, path: Path, *, step: int, half: bool = False) -> Path:
    """Wav2Lip's own checkpoint layout: ``{'state_dict': {'module.…'}, 'global_step': …}``."""
    state = {
        f"module.{k}": (v.half() if half and v.is_floating_point() else v).detach().cpu()
        for k, v in model.state_dict().items()
    }
    torch.save({"state_dict": state, "global_step": step, "width": model.width}, path)
    return path
