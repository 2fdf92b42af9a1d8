"""WaveGlow's targets: the teacher's mels vocoded by HiFi-GAN, one file per speech shard.

Against the teacher's own audio (multi-resolution STFT + log-mel L1, samples
drawn at sigma 0.1), our small WaveGlow reached WER 40-50 % in 3,938 CPU
steps. Against these targets, with samples at sigma 0 and a waveform L1
added, 580 more steps took it to 17 % and 7,387 after those to 4.9 %. The
three changes were made together and not ablated. Why this target: HiFi-GAN
is deterministic, so its audio is a function of the mel and every loss has
one consistent answer per input, where Piper's audio carries detail the mel
does not (its phase comes from Piper's latent). The waveform L1 itself
stayed flat (~0.028) through the run: the phase is not learned, and the
harmonics stay at the mel frame rate (86 Hz).

``vocoded/shard-NNNNN.npy`` holds int16 audio at 22050 Hz laid out exactly
like the speech shard's ``audio`` (same ``audio_offsets``: ``frames * 256``
samples per sentence). Files are written atomically and skipped when
present, so a run resumes; HiFi-GAN is deterministic, so is the data.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

from anchor.train.speech_data import HOP, SpeechShard, speech_shards


def vocoded_path(shard: Path) -> Path:
    return shard.parent.parent / "vocoded" / f"{shard.stem}.npy"


def vocode_shard(vocoder: torch.nn.Module, shard: SpeechShard) -> npt.NDArray[np.int16]:
    """Every sentence's mel through ``vocoder``, cut or padded to ``frames * 256`` samples, as int16."""
    parts = []
    for i in range(len(shard)):
        mel = torch.from_numpy(shard.mel_of(i).astype(np.float32))[None]
        with torch.inference_mode():
            audio = vocoder(mel).reshape(-1).numpy()
        samples = mel.shape[2] * HOP
        audio = np.pad(audio, (0, max(0, samples - len(audio))))[:samples]
        parts.append(np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16))
    return np.concatenate(parts)


def vocode(data: Path, limit: int | None = None) -> list[Path]:
    """Write every missing vocoded file for ``data``'s speech shards (the first ``limit``); return all."""
    from engines.registry import hifigan_spec, load_hifigan

    shards = speech_shards(data)[:limit]
    todo = [s for s in shards if not vocoded_path(s).is_file()]
    if todo:
        vocoder = load_hifigan(hifigan_spec().weights.resolve()).eval()
        for shard in tqdm(todo, desc="vocoded"):
            target = vocoded_path(shard)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.stem + ".tmp.npy")
            np.save(tmp, vocode_shard(vocoder, SpeechShard(shard)))
            tmp.replace(target)
    return [vocoded_path(s) for s in shards]


def vocoded_audio(shard_path: Path, shard: SpeechShard) -> npt.NDArray[np.int16]:
    """The vocoded audio of one speech shard, checked against the shard's layout."""
    target = vocoded_path(shard_path)
    if not target.is_file():
        raise FileNotFoundError(f"no {target}: run `anchor train data vocoded` first")
    audio: npt.NDArray[np.int16] = np.load(target)
    if audio.dtype != np.int16 or audio.shape != shard.audio.shape:
        raise ValueError(
            f"{target} holds {audio.dtype} {audio.shape}, the shard's audio is int16 {shard.audio.shape}: "
            "delete it and run `anchor train data vocoded` again"
        )
    return audio
