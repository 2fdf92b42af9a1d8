"""What every acoustic stage of the mel path shares: phrases in, ``MelChunk``s out, pts per utterance.

A subclass turns one phrase into mel blocks (``[80, frames]`` log-mels at
22050 Hz, hop 256) with ``_blocks``, optionally preceded by the phonemes
they will say and their frames (``Timing``), which go out as a ``Phonemes``
frame for the face; this base splits the streamed text into phrases, stamps
each block's pts, flushes at ``EndOfUtterance`` and forgets cancelled utterances.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anchor.core.frames import EndOfUtterance, Frame, MelChunk, Phonemes, TextDelta
from anchor.core.stage import Stage
from anchor.speech.phrases import PhraseSplitter

HOP = 256
RATE = 22050


@dataclass(frozen=True)
class Timing:
    """The phonemes of the mel blocks that follow, and the mel frames each lasts."""

    symbols: list[str]
    frames: list[int]


class MelTTS(Stage):
    accepts = (TextDelta,)

    def __init__(self, name: str, *, first_words: int = 6) -> None:
        super().__init__(name)
        self.first_words = first_words
        self._splitters: dict[str, PhraseSplitter] = {}
        self._pts: dict[str, int] = {}

    def _blocks(self, phrase: str) -> AsyncIterator[npt.NDArray[np.float32] | Timing]:
        """The phrase's mel, block by block, as soon as each is ready (a ``Timing`` before, if known)."""
        raise NotImplementedError

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        uid = frame.utterance_id
        if isinstance(frame, TextDelta):
            splitter = self._splitters.setdefault(uid, PhraseSplitter(first_words=self.first_words))
            for phrase in splitter.feed(frame.text):
                async for mel in self._speak(uid, phrase):
                    yield mel
        elif isinstance(frame, EndOfUtterance):
            ending = self._splitters.pop(uid, None)
            for phrase in ending.flush() if ending else []:
                async for mel in self._speak(uid, phrase):
                    yield mel
            self._pts.pop(uid, None)
            yield frame
        else:
            yield frame

    async def _speak(self, uid: str, phrase: str) -> AsyncGenerator[MelChunk | Phonemes, None]:
        async for block in self._blocks(phrase):
            pts = self._pts.get(uid, 0)
            if isinstance(block, Timing):
                bounds = pts + HOP * np.concatenate([[0], np.cumsum(block.frames)])
                yield Phonemes(
                    symbols=tuple(block.symbols),
                    bounds=tuple(int(b) for b in bounds),
                    sample_rate=RATE,
                    utterance_id=uid,
                )
                continue
            mel = np.ascontiguousarray(block, dtype=np.float32)
            self._pts[uid] = pts + mel.shape[1] * HOP
            yield MelChunk(mel=mel, sample_rate=RATE, hop_length=HOP, pts=pts, utterance_id=uid)

    def on_cancel(self, utterance_ids: frozenset[str]) -> None:
        for uid in utterance_ids:
            self._splitters.pop(uid, None)
            self._pts.pop(uid, None)
