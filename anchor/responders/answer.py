"""The response-text stage of the live anchor: scripts are read as given, questions answered.

``Say`` frames (the text box, MQTT, the news desk) pass through verbatim.
``Ask`` frames (a viewer's final transcript, or a typed question) go to the
session's chosen answerer (``faq``, ``llm`` or ``off``), whose text streams
out piece by piece: the voice's phrase splitter starts speaking at the first
phrase, before the answer is complete. Barge-in cancels the utterance, and
with it the in-flight answer (an LLM request is closed). Each session keeps
a short memory of its questions and answers.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from anchor.core.frames import Ask, EndOfUtterance, Frame, Say, TextDelta
from anchor.core.stage import Stage, StageContext


@dataclass(frozen=True, slots=True)
class Turn:
    role: Literal["user", "assistant"]
    text: str


class Answerer(Protocol):
    def answer(self, question: str, history: Sequence[Turn]) -> AsyncIterator[str]:
        """The answer to ``question``, streamed in pieces (tokens, sentences or all at once)."""
        ...

    async def aclose(self) -> None: ...


AnswererFactory = Callable[[StageContext], Awaitable[Answerer]]


class ResponderError(ValueError):
    """A responder choice that does not exist."""


class Responder(Stage):
    accepts = (Say, Ask)

    def __init__(
        self,
        factories: Mapping[str, AnswererFactory],
        choice: str,
        *,
        memory_turns: int = 6,
        name: str = "respond",
    ) -> None:
        super().__init__(name)
        self.factories = dict(factories)
        self.choices = (*self.factories, "off")
        self.choice = self._checked(choice)
        self.memory: deque[Turn] = deque(maxlen=2 * memory_turns)
        self._answerers: dict[str, Answerer] = {}
        self._building = asyncio.Lock()  # a switch (MQTT) and a question may ask for the same one at once

    def _checked(self, choice: str) -> str:
        if choice not in self.choices:
            raise ResponderError(f"unknown responder {choice!r}; choose one of {', '.join(self.choices)}")
        return choice

    async def start(self, ctx: StageContext) -> None:
        await super().start(ctx)
        if self.choice != "off":
            await self._answerer(self.choice)

    async def stop(self) -> None:
        answerers, self._answerers = self._answerers, {}
        for answerer in answerers.values():
            await answerer.aclose()

    async def choose(self, choice: str) -> None:
        """Answer with ``choice`` from the next question on (it is loaded now, so it answers fast)."""
        self._checked(choice)
        if choice != "off":
            await self._answerer(choice)
        self.choice = choice

    async def _answerer(self, choice: str) -> Answerer:
        async with self._building:
            answerer = self._answerers.get(choice)
            if answerer is None:
                answerer = self._answerers[choice] = await self.factories[choice](self.ctx)
            return answerer

    async def process(self, frame: Frame) -> AsyncGenerator[Frame, None]:
        if isinstance(frame, Say):
            yield TextDelta(text=frame.text, utterance_id=frame.utterance_id)
        elif isinstance(frame, Ask):
            if self.choice != "off":
                async for piece in self._answer(frame):
                    yield piece
        else:
            return
        yield EndOfUtterance(utterance_id=frame.utterance_id)

    async def _answer(self, ask: Ask) -> AsyncGenerator[Frame, None]:
        answerer = await self._answerer(self.choice)
        said: list[str] = []
        try:
            async for piece in answerer.answer(ask.text, tuple(self.memory)):
                if piece:
                    said.append(piece)
                    yield TextDelta(text=piece, utterance_id=ask.utterance_id)
        finally:
            # Whatever was produced is remembered, even when a barge-in cut it short.
            self.memory.append(Turn("user", ask.text))
            self.memory.append(Turn("assistant", "".join(said).strip() or "(no answer)"))
