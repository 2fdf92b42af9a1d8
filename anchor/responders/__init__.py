"""Responders: the stages that turn a command or a question into response text.

``SayResponder`` reads scripts only; ``Responder`` (``answer.py``) also
answers questions with ``faq`` (``faq.py``) or ``llm`` (``llm.py``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

from anchor.core.frames import EndOfUtterance, Frame, Say, TextDelta
from anchor.core.stage import Stage


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
