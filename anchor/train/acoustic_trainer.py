"""Distilling the Piper teacher into the FastSpeech-style acoustic model.

Teacher-forced on the teacher's own durations (the length regulator expands
by them), the model learns the teacher's mels (L1, before and after the
postnet) and, from the encoder, the durations themselves (MSE on
``log(1 + frames)``). Sentences are batched at random; every 2 % is kept
aside and its loss logged as ``val``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from anchor.train.loop import TrainJob, train
from anchor.train.speech_data import SpeechShard, speech_shards
from engines.models.fastspeech import AcousticConfig, FastSpeech

SILENT = float(np.log(1e-5))


class _Sentences:
    def __init__(self, data: Path) -> None:
        self.ids: list[torch.Tensor] = []
        self.durations: list[torch.Tensor] = []
        self.mels: list[torch.Tensor] = []
        for path in speech_shards(data):
            shard = SpeechShard(path)
            for i in range(len(shard)):
                self.ids.append(torch.from_numpy(shard.ids_of(i).astype(np.int64)))
                self.durations.append(torch.from_numpy(shard.durations_of(i).astype(np.int64)))
                self.mels.append(torch.from_numpy(np.ascontiguousarray(shard.mel_of(i).T)))  # [T, 80] f16

    def batch(self, rows: list[int], device: torch.device) -> tuple[torch.Tensor, ...]:
        pad = nn.utils.rnn.pad_sequence
        ids = pad([self.ids[r] for r in rows], batch_first=True)
        lengths = torch.tensor([len(self.ids[r]) for r in rows])
        durations = pad([self.durations[r] for r in rows], batch_first=True)
        mels = pad([self.mels[r].float() for r in rows], batch_first=True, padding_value=SILENT).transpose(
            1, 2
        )
        frames = torch.tensor([len(self.mels[r]) for r in rows])
        return tuple(t.to(device, non_blocking=True) for t in (ids, lengths, durations, mels, frames))


def train_acoustic(job: TrainJob, *, config: AcousticConfig | None = None) -> Path:
    dev, rng = job.begin()
    batch, lr = job.batch or 32, job.lr or 1e-3
    sentences = _Sentences(job.data)
    order = list(range(len(sentences.ids)))
    rng.shuffle(order)
    held = max(1, len(order) // 50)
    val, fit = order[:held], order[held:] or order
    config = config or AcousticConfig()
    model = FastSpeech(config).to(dev)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=1e-6)
    run = job.run("acoustic")
    modules = {"model": model, "optimizer": optimizer}
    run.resume(modules)
    warmup = 1000

    def losses(rows: list[int]) -> tuple[torch.Tensor, dict[str, float]]:
        ids, lengths, durations, mels, frames = sentences.batch(rows, dev)
        mel, post, log_dur = model(ids, lengths, durations)
        mask = (torch.arange(mels.shape[2], device=dev)[None, :] < frames[:, None])[:, None, :]
        n = mask.sum() * mels.shape[1]
        mel_loss = ((mel - mels).abs() * mask).sum() / n
        post_loss = ((post - mels).abs() * mask).sum() / n
        id_mask = torch.arange(ids.shape[1], device=dev)[None, :] < lengths[:, None]
        target = torch.log1p(durations.float())
        dur_loss = (((log_dur - target) ** 2) * id_mask).sum() / id_mask.sum()
        total = mel_loss + post_loss + dur_loss
        return total, {"mel": mel_loss.item(), "postnet": post_loss.item(), "duration": dur_loss.item()}

    def step() -> dict[str, float]:
        model.train()
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, (run.step + 1) / warmup) * max(0.1, 1.0 - run.progress())
        total, parts = losses(rng.sample(fit, min(batch, len(fit))))
        optimizer.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if (run.step + 1) % run.budget.log_every == 0:
            model.eval()
            with torch.no_grad():
                parts["val"] = losses(val[:batch])[0].item()
        return parts

    train(run, modules, step)
    torch.save(
        {"model": model.state_dict(), "config": config.as_dict(), "step": run.step},
        job.out / "acoustic-final.pt",
    )
    return job.out / "acoustic-final.pt"
