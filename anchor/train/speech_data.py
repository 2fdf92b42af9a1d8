"""The teacher's speech: Piper reads the corpus; we keep its audio, its own durations and the mels.

Each shard (``speech/shard-NNNNN.npz``) holds ``SHARD`` sentences:

- ``ids`` / ``durations`` (int16, concatenated; ``id_offsets``): Piper's
  phoneme ids and the frames (hop 256) its duration predictor gave each one,
  read from the voice's ONNX graph (its ``Ceil`` tensor made an output);
- ``audio`` (int16 at 22050 Hz; ``audio_offsets``): exactly ``sum(durations) * 256``
  samples per sentence;
- ``mel`` (float16 ``[80, frames]``; ``mel_offsets``): the log-mel of that audio
  (HiFi-GAN framing, so one mel frame per duration frame).

The teacher runs with zero noise (``noise_scale = noise_w = 0``): the same
text always gives the same audio, which makes the data deterministic and
gives the student one target to learn instead of an average of many.
Shards are written atomically and skipped when present, so a run resumes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from anchor.train.corpus import Sentence, read_corpus
from anchor.train.workers import in_workers
from engines.audio.mel import mel_spectrogram
from engines.voices.piper import expose_durations

SHARD = 100
HOP = 256
RATE = 22050
TEACHER_SCALES = (0.0, 1.0, 0.0)  # noise_scale, length_scale, noise_w

_session: object | None = None


def teacher_session(model: Path, threads: int = 1) -> object:
    """An onnxruntime session of the Piper voice that also outputs its per-phoneme frame counts."""
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(model))
    expose_durations(graph)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])


def speak(session: object, ids: list[int]) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int16]]:
    """Teacher audio (float32, 22050 Hz) and frames per phoneme id for one sentence."""
    inputs = {
        "input": np.asarray([ids], dtype=np.int64),
        "input_lengths": np.asarray([len(ids)], dtype=np.int64),
        "scales": np.asarray(TEACHER_SCALES, dtype=np.float32),
    }
    audio, frames = session.run(None, inputs)  # type: ignore[attr-defined]
    durations = np.asarray(frames, dtype=np.float32).reshape(-1).astype(np.int16)
    wave = np.asarray(audio, dtype=np.float32).reshape(-1)
    if len(wave) != int(durations.sum()) * HOP:
        raise ValueError(f"teacher audio of {len(wave)} samples does not match {int(durations.sum())} frames")
    return wave, durations


def _init(model: str) -> None:
    global _session
    _session = teacher_session(Path(model))


def _shard(job: tuple[Path, list[Sentence]]) -> Path:
    path, sentences = job
    assert _session is not None
    ids, durations, audio, mels, texts = [], [], [], [], []
    for s in sentences:
        wave, frames = speak(_session, s.ids)
        pcm = np.round(np.clip(wave, -1.0, 1.0) * 32767).astype(np.int16)
        mel = mel_spectrogram(pcm.astype(np.float32) / 32767, framing="hifigan")
        ids.append(np.asarray(s.ids, dtype=np.int16))
        durations.append(frames)
        audio.append(pcm)
        mels.append(mel.astype(np.float16))
        texts.append({"key": s.key, "text": s.text})
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(
        tmp,
        ids=np.concatenate(ids),
        durations=np.concatenate(durations),
        id_offsets=_offsets([len(i) for i in ids]),
        audio=np.concatenate(audio),
        audio_offsets=_offsets([len(a) for a in audio]),
        mel=np.concatenate(mels, axis=1),
        mel_offsets=_offsets([m.shape[1] for m in mels]),
        texts=np.asarray(json.dumps(texts)),
    )
    tmp.replace(path)
    return path


def _offsets(lengths: list[int]) -> npt.NDArray[np.int64]:
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def synthesize(
    data: Path, model: Path, *, workers: int | None = None, limit: int | None = None
) -> list[Path]:
    """Write every missing speech shard of ``data``'s corpus (up to ``limit`` shards); return all shards."""
    sentences = list(read_corpus(data))
    out = data / "speech"
    out.mkdir(parents=True, exist_ok=True)
    jobs = [
        (out / f"shard-{k // SHARD:05d}.npz", sentences[k : k + SHARD])
        for k in range(0, len(sentences), SHARD)
    ][:limit]
    todo = [j for j in jobs if not j[0].is_file()]
    workers = workers or max(1, min(len(todo), os.cpu_count() or 1))
    if todo:
        for _ in tqdm(
            in_workers(_shard, todo, workers, _init, (str(model),)), total=len(todo), desc="speech"
        ):
            pass
    return [j[0] for j in jobs]


class SpeechShard:
    """One shard, read whole; ``item(i)`` slices sentence ``i``'s arrays out of it."""

    def __init__(self, path: Path) -> None:
        with np.load(path) as z:
            self.ids, self.durations, self.id_offsets = z["ids"], z["durations"], z["id_offsets"]
            self.audio, self.audio_offsets = z["audio"], z["audio_offsets"]
            self.mel, self.mel_offsets = z["mel"], z["mel_offsets"]
            self.texts = json.loads(str(z["texts"]))

    def __len__(self) -> int:
        return len(self.id_offsets) - 1

    def ids_of(self, i: int) -> npt.NDArray[np.int16]:
        return np.asarray(self.ids[self.id_offsets[i] : self.id_offsets[i + 1]], dtype=np.int16)

    def durations_of(self, i: int) -> npt.NDArray[np.int16]:
        return np.asarray(self.durations[self.id_offsets[i] : self.id_offsets[i + 1]], dtype=np.int16)

    def audio_of(self, i: int) -> npt.NDArray[np.float32]:
        pcm = self.audio[self.audio_offsets[i] : self.audio_offsets[i + 1]]
        return np.asarray(pcm, dtype=np.float32) * np.float32(1 / 32767)

    def mel_of(self, i: int) -> npt.NDArray[np.float16]:
        return np.asarray(self.mel[:, self.mel_offsets[i] : self.mel_offsets[i + 1]], dtype=np.float16)


def speech_shards(data: Path) -> list[Path]:
    shards = sorted((data / "speech").glob("shard-[0-9][0-9][0-9][0-9][0-9].npz"))
    if not shards:
        raise FileNotFoundError(
            f"no speech shards under {data / 'speech'}: run `anchor train data speech` first"
        )
    return shards
