"""Streaming vocoding: mel chunks in, audio out, with time-to-first-audio independent of length.

Each block of mel frames is vocoded together with ``context`` frames on
either side and only its own samples are kept, so a convolutional vocoder
sees (nearly) what it would see on the whole utterance (HiFi-GAN V1 needs
about 16 frames: its receptive field). The first block is short
(``first_frames``) so audio starts early however long the utterance; later
blocks are long (``chunk_frames``) so the context costs little.

A WaveGlow with a source takes as z an excitation at the F0 its pitch head
(the ``waveglow-pitch`` engine) reads off each block. The stage builds it in
float64 and carries its phase: each block's pulse train is anchored so that
its first kept sample has the phase the previous block's audio ended on, and
the pitch never breaks at a seam.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anchor.core.config import AnchorSettings
from anchor.core.frames import AudioChunk, EndOfUtterance, Frame, MelChunk
from anchor.core.resample import StreamingResampler
from anchor.core.stage import Stage, StageContext

#: ``vocode(window, keep)``: audio for every frame of the mel ``window``; ``keep`` is the range of its
#: frames whose audio will be used (the rest is context).
Vocode = Callable[[npt.NDArray[np.float32], range], Awaitable[npt.NDArray[np.float32]]]


class ChunkedVocoder:
    def __init__(
        self, vocode: Vocode, *, hop: int, chunk_frames: int = 96, first_frames: int = 24, context: int = 16
    ) -> None:
        if min(chunk_frames, first_frames) < 1 or context < 0:
            raise ValueError(
                f"chunk_frames and first_frames must be >= 1 and context >= 0, "
                f"got {chunk_frames}, {first_frames}, {context}"
            )
        self._vocode = vocode
        self.hop = hop
        self.chunk_frames = chunk_frames
        self.first_frames = first_frames
        self.context = context
        self._mel = np.zeros((0, 0), dtype=np.float32)
        self._mel_start = 0  # frame index of _mel[:, 0]
        self._frames = 0  # frames received
        self._done = 0  # frames whose audio was emitted

    def _check(self, mel: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if mel.ndim != 2 or (self._mel.size and mel.shape[0] != self._mel.shape[0]):
            expected = self._mel.shape[0] if self._mel.size else "n_mels"
            raise ValueError(f"mel chunk must be shaped ({expected}, frames), got {mel.shape}")
        return np.asarray(mel, dtype=np.float32)

    async def push(self, mel: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Add mel frames; return the audio blocks that are now final."""
        mel = self._check(mel)
        self._mel = mel if not self._mel.size else np.concatenate([self._mel, mel], axis=1)
        self._frames += mel.shape[1]
        out = []
        while self._frames - self._done >= self._next_size() + self.context:
            out.append(await self._block(self._done + self._next_size()))
        return out

    def _next_size(self) -> int:
        """A short first block for early audio, then long ones for throughput."""
        return self.first_frames if self._done == 0 else self.chunk_frames

    async def flush(self) -> list[npt.NDArray[np.float32]]:
        """Audio for every remaining frame (end of utterance)."""
        out = []
        while self._done < self._frames:
            out.append(await self._block(min(self._done + self._next_size(), self._frames)))
        return out

    async def _block(self, end: int) -> npt.NDArray[np.float32]:
        lo = max(0, self._done - self.context)
        hi = min(self._frames, end + self.context)
        window = self._mel[:, lo - self._mel_start : hi - self._mel_start]
        audio = await self._vocode(window, range(self._done - lo, end - lo))
        keep = audio[(self._done - lo) * self.hop : (end - lo) * self.hop]
        self._done = end
        drop = max(0, self._done - self.context - self._mel_start)
        self._mel = self._mel[:, drop:]
        self._mel_start += drop
        return keep


class VocoderStage(Stage):
    """``MelChunk``s -> output-rate ``AudioChunk``s through a vocoder engine in the hub.

    One ``ChunkedVocoder`` and one resampler per utterance; pts continuous
    within it. ``EndOfUtterance`` flushes both.
    """

    accepts = (MelChunk,)

    def __init__(
        self,
        name: str = "vocoder",
        *,
        engine: str = "hifigan",
        chunk_frames: int = 96,
        first_frames: int = 24,
        context: int = 16,
        min_frames: int = 8,
        silence: float = float(np.log(1e-5)),
        noise_channels: int | None = None,
        sigma: float = 0.0,
        source: bool = False,
        timeout_s: float | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(name, timeout_s=timeout_s)
        self.engine = engine
        self.chunk_frames = chunk_frames
        self.first_frames = first_frames
        self.context = context
        self.min_frames = min_frames
        self.silence = silence
        #: Flow vocoders (WaveGlow) take their noise as an input ``z``: ``noise_channels`` x samples/channels.
        self.noise_channels = noise_channels
        self.sigma = sigma
        #: A source-filter WaveGlow: z is the excitation at the F0 of the ``waveglow-pitch`` engine.
        self.source = source
        #: Draws WaveGlow's noise and each utterance's starting pulse phase (``seed``: reproducibly).
        self._rng = np.random.default_rng(seed)
        self._open: dict[str, tuple[ChunkedVocoder, StreamingResampler, list[int]]] = {}
        self.hop = 256

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        await ctx.engines.prepare(self.engine)
        if self.source:
            await ctx.engines.prepare(PITCH_ENGINE)

    async def _vocode(
        self, mel: npt.NDArray[np.float32], keep: range, phase: list[float]
    ) -> npt.NDArray[np.float32]:
        """``phase[0]``: the utterance's pulse-train phase at the start of ``keep`` (source engines)."""
        frames = mel.shape[1]
        if frames < self.min_frames:  # the engine's smallest input: pad with silence, trim after
            pad = np.full((mel.shape[0], self.min_frames - frames), self.silence, dtype=np.float32)
            mel = np.concatenate([mel, pad], axis=1)
        inputs = {"mel": mel[None]}
        if self.source:
            pitch = await self.ctx.infer(PITCH_ENGINE, inputs)
            noise = self._rng.standard_normal(mel.shape[1] * self.hop)
            inputs["z"] = await self.run_blocking(
                lambda: _excitation_z(pitch["f0"], pitch["voiced"], noise, self.hop, keep, phase)
            )
        elif self.noise_channels:
            samples = mel.shape[1] * self.hop // self.noise_channels
            z = self._rng.standard_normal((1, self.noise_channels, samples)).astype(np.float32)
            inputs["z"] = z * np.float32(self.sigma)
        out = await self.ctx.infer(self.engine, inputs)
        audio = np.asarray(out["audio"], dtype=np.float32).reshape(-1)
        return audio[: len(audio) * frames // mel.shape[1]]

    def _state(self, frame: MelChunk) -> tuple[ChunkedVocoder, StreamingResampler, list[int]]:
        state = self._open.get(frame.utterance_id)
        if state is None:
            self.hop = frame.hop_length
            phase = [float(self._rng.uniform(0, 2 * np.pi))]

            async def vocode(mel: npt.NDArray[np.float32], keep: range) -> npt.NDArray[np.float32]:
                return await self._vocode(mel, keep, phase)

            vocoder = ChunkedVocoder(
                vocode,
                hop=frame.hop_length,
                chunk_frames=self.chunk_frames,
                first_frames=self.first_frames,
                context=self.context,
            )
            resampler = StreamingResampler(frame.sample_rate, self.ctx.settings.media.sample_rate)
            state = (vocoder, resampler, [0])
            self._open[frame.utterance_id] = state
        return state

    async def _audio(
        self, uid: str, blocks: list[npt.NDArray[np.float32]], tail: bool = False
    ) -> list[AudioChunk]:
        _, resampler, pts = self._open[uid]

        def resample() -> list[npt.NDArray[np.float32]]:
            pieces = [resampler.process(b) for b in blocks]
            return [*pieces, resampler.flush()] if tail else pieces

        pieces = await self.run_blocking(resample)
        rate = self.ctx.settings.media.sample_rate
        chunks = []
        for pcm in pieces:
            if len(pcm):
                chunks.append(AudioChunk(pcm=pcm, sample_rate=rate, pts=pts[0], utterance_id=uid))
                pts[0] += len(pcm)
        return chunks

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, MelChunk):
            vocoder = self._state(frame)[0]
            for chunk in await self._audio(uid, await vocoder.push(frame.mel)):
                yield chunk
        elif isinstance(frame, EndOfUtterance):
            if uid in self._open:
                for chunk in await self._audio(uid, await self._open[uid][0].flush(), tail=True):
                    yield chunk
                del self._open[uid]
            yield frame
        else:
            yield frame

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        for uid in utterance_ids:
            self._open.pop(uid, None)


PITCH_ENGINE = "waveglow-pitch"
N_GROUP = 8  # WaveGlow's z: samples in groups of 8


def _excitation_z(
    f0: npt.NDArray[np.generic],
    voiced: npt.NDArray[np.generic],
    noise: npt.NDArray[np.float64],
    hop: int,
    keep: range,
    phase: list[float],
) -> npt.NDArray[np.float32]:
    """A block's excitation as WaveGlow's z ``[1, 8, samples / 8]``, in float64 so the phase is exact:
    anchored so that frame ``keep.start`` starts at ``phase[0]``, which then moves on to the phase
    at ``keep.stop`` (where the next block's kept audio starts)."""
    import torch

    from engines.models.source import excitation, frame_starts
    from engines.models.waveglow import SAMPLE_RATE

    hz = torch.from_numpy(np.asarray(f0, dtype=np.float64).reshape(1, -1))
    starts = frame_starts(hz, hop, SAMPLE_RATE)[0]
    phase0 = phase[0] - float(starts[keep.start])
    if keep.stop < hz.shape[1]:
        phase[0] = (phase0 + float(starts[keep.stop])) % (2 * np.pi)
    e = excitation(
        hz,
        torch.from_numpy(np.asarray(voiced, dtype=np.float64).reshape(1, -1)),
        torch.from_numpy(noise[None]),
        hop=hop,
        rate=SAMPLE_RATE,
        phase0=torch.tensor([phase0], dtype=torch.float64),
    )
    grouped = e.numpy().reshape(1, -1, N_GROUP).transpose(0, 2, 1)
    return np.ascontiguousarray(grouped, dtype=np.float32)


def waveglow_stage(sigma: float, *, source: bool = False, seed: int | None = None) -> VocoderStage:
    """WaveGlow through the hub in the stage's default blocks: z is noise at ``sigma``, or, for
    weights with a source, the excitation at the pitch its head reads off the mel."""
    return VocoderStage(engine="waveglow", noise_channels=N_GROUP, sigma=sigma, source=source, seed=seed)


@dataclass(frozen=True)
class WaveGlowDeclared:
    """What the configured WaveGlow weights declare about how they are sampled."""

    sigma: float
    source: bool


def waveglow_declared(settings: AnchorSettings) -> WaveGlowDeclared:
    """Blocking: reads the configured WaveGlow checkpoint."""
    from engines.registry import catalog
    from engines.vocoders.waveglow_checkpoints import declared_sigma, declares_source

    path = catalog(settings.engines)["waveglow"].weights.resolve()
    return WaveGlowDeclared(declared_sigma(path), declares_source(path))
