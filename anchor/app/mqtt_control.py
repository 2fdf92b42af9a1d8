"""Commands carried out on a session, for the MQTT control plane (its ``ControlTarget``).

A session without a news desk or a question responder (a bare ``say``
graph) refuses those commands with a message that says so.
"""

from __future__ import annotations

from typing import Any

from anchor.core.commands import (
    Ask,
    Command,
    CommandError,
    Interrupt,
    Mute,
    NewsAir,
    NewsCue,
    NewsEnqueue,
    NewsSkip,
    ResponderSwitch,
    Say,
)
from anchor.core.session import EventStream, Session
from anchor.news.desk import NewsDesk
from anchor.news.store import NewsError, NewsItem
from anchor.responders.answer import Responder, ResponderError


class SessionControl:
    def __init__(
        self, session: Session, *, desk: NewsDesk | None = None, responder: Responder | None = None
    ) -> None:
        self.session = session
        self.desk = desk
        self.responder = responder
        self.draining = False  # shutting down: no new lines

    async def execute(self, command: Command) -> str:
        if self.session.state != "running":
            raise CommandError(f"session {self.session.id} is {self.session.state}")
        if isinstance(command, Say | Ask) and self.draining:
            raise CommandError(f"session {self.session.id} is shutting down; it takes no new lines")
        if isinstance(command, Say | Ask) and not self.session.has_room():
            limit = self.session.settings.graph.max_live_utterances
            raise CommandError(
                f"session {self.session.id} already holds {limit} utterances; try again shortly"
            )
        if isinstance(command, Say):
            return await self.session.say(command.text, uninterruptible=command.uninterruptible)
        if isinstance(command, Interrupt):
            cut = await self.session.interrupt(command.reason or "mqtt")
            return ",".join(sorted(cut)) or "nothing to interrupt"
        if isinstance(command, Mute):
            self.session.mute(command.muted)
            return "muted" if command.muted else "unmuted"
        if isinstance(command, Ask | ResponderSwitch):
            return await self._answering(command)
        if isinstance(command, NewsEnqueue | NewsCue | NewsSkip | NewsAir):
            try:
                return await self._news(command)
            except NewsError as exc:
                raise CommandError(str(exc)) from None
        name = type(command).__name__
        raise CommandError(f"{name} is not available in this anchor: it has one avatar and one voice")

    async def _answering(self, command: Ask | ResponderSwitch) -> str:
        if self.responder is None:
            raise CommandError(f"session {self.session.id} does not answer questions")
        if isinstance(command, Ask):
            return await self.session.ask(command.text)
        try:
            await self.responder.choose(command.answer)
        except ResponderError as exc:
            raise CommandError(str(exc)) from None
        self.session.announce("news", f"answering with {command.answer}")
        return command.answer

    async def _news(self, command: NewsEnqueue | NewsCue | NewsSkip | NewsAir) -> str:
        desk = self.desk
        if desk is None:
            raise CommandError(f"session {self.session.id} has no news desk")
        if isinstance(command, NewsEnqueue):
            item = NewsItem(command.title, command.body, command.priority, source="mqtt")
            item_id, added = await desk.enqueue(item)
            return item_id if added else f"{item_id} (already queued)"
        if isinstance(command, NewsCue):
            await desk.cue(command.item)
            return command.item
        if isinstance(command, NewsSkip):
            return await desk.skip()
        desk.set_on_air(command.on_air)
        return "on air" if command.on_air else "off air"

    def status(self) -> dict[str, Any]:
        live = sorted(self.session.utterances.live())
        status: dict[str, Any] = {
            "sessions": 1 if self.session.state == "running" else 0,
            "session": self.session.id,
            "speaking": bool(live),
            "current": live[0] if live else None,
            "muted": self.session.muted,
        }
        if self.desk is not None:
            status["news"] = self.desk.status()
        if self.responder is not None:
            status["answer"] = self.responder.choice
        return status

    def events(self) -> EventStream:
        return self.session.events()
