"""MQTT commands carried out on a session (the ``ControlTarget`` of ``streams.mqtt``)."""

from __future__ import annotations

from typing import Any

from anchor.session import EventStream, Session
from streams.mqtt import Command, CommandError, Interrupt, Mute, Say


class SessionControl:
    def __init__(self, session: Session) -> None:
        self.session = session

    async def execute(self, command: Command) -> str:
        if self.session.state != "running":
            raise CommandError(f"session {self.session.id} is {self.session.state}")
        if isinstance(command, Say):
            return await self.session.say(command.text, uninterruptible=command.uninterruptible)
        if isinstance(command, Interrupt):
            cut = await self.session.interrupt(command.reason)
            return ",".join(sorted(cut)) or "nothing to interrupt"
        if isinstance(command, Mute):
            self.session.mute(command.muted)
            return "muted" if command.muted else "unmuted"
        name = type(command).__name__
        raise CommandError(
            f"{name} is not available in this anchor: it has no news queue, avatar or voice choice yet"
        )

    def status(self) -> dict[str, Any]:
        live = sorted(self.session.utterances.live())
        return {
            "sessions": 1 if self.session.state == "running" else 0,
            "session": self.session.id,
            "speaking": bool(live),
            "current": live[0] if live else None,
            "muted": self.session.muted,
        }

    def events(self) -> EventStream:
        return self.session.events()
