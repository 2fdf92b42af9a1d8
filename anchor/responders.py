"""Responders: the stage that turns a command or a question into response text."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from anchor.frames import EndOfUtterance, Frame, Say, TextDelta
from anchor.stage import Stage


class SayResponder(Stage):
    """``Say`` -> its text, as one ``TextDelta``, then ``EndOfUtterance`` (read a script verbatim)."""

    accepts = (Say,)

    def __init__(self, name: str = "say") -> None:
        super().__init__(name)

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        if isinstance(frame, Say):
            yield TextDelta(text=frame.text, utterance_id=frame.utterance_id)
            yield EndOfUtterance(utterance_id=frame.utterance_id)
        else:
            yield frame
