"""The MQTT control plane (aiomqtt): commands in, retained status and events out.

Topics for anchor ``{id}``:

- ``anchor/{id}/cmd/<name>`` (QoS 1): JSON commands, one schema per name
  (``say``, ``interrupt``, ``mute``, ``ask``, ``responder``,
  ``news/enqueue``, ``news/cue``, ``news/skip``, ``news/air``, ``avatar``,
  ``voice``). Every command carries ``id``,
  ``sent_at`` (unix seconds) and ``ttl_s``; extra fields are refused and
  sizes are bounded.
- ``anchor/{id}/status`` (retained, QoS 1): state, sessions, current item;
  ``offline`` as the connection's last will.
- ``anchor/{id}/events`` (QoS 1): session events (utterances, captions),
  command results and errors.

A bad command (too big, not JSON, wrong schema, expired, unknown) yields an
``error`` event naming the command and what was wrong, and changes
nothing. A command id seen before is not carried out again (QoS 1 may
deliver twice; a broker may replay). The connection is kept with jittered
exponential backoff, and subscriptions are made again on every connect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import socket
import ssl
import time
from collections import OrderedDict
from typing import Any, Protocol

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from streams.server import EventFeed
from streams.settings import MqttSettings

log = logging.getLogger(__name__)


# -- command schemas ----------------------------------------------------------------


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    sent_at: float = Field(description="Unix time the command was sent")
    ttl_s: float = Field(gt=0, le=3600)

    def expired(self, now: float) -> bool:
        return now > self.sent_at + self.ttl_s


class Say(Command):
    text: str = Field(min_length=1, max_length=2000)
    uninterruptible: bool = False


class Interrupt(Command):
    reason: str = Field("mqtt", max_length=200)


class Mute(Command):
    muted: bool


class Ask(Command):
    text: str = Field(min_length=1, max_length=2000)


class ResponderSwitch(Command):
    answer: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")


class NewsEnqueue(Command):
    title: str = Field(min_length=1, max_length=200)
    body: str = Field(min_length=1, max_length=20_000)
    priority: int = Field(0, ge=0, le=10)


class NewsCue(Command):
    item: str = Field(min_length=1, max_length=64)


class NewsSkip(Command):
    pass


class NewsAir(Command):
    on_air: bool


class AvatarSwitch(Command):
    avatar: str = Field(min_length=1, max_length=200)


class VoiceSwitch(Command):
    voice: str = Field(min_length=1, max_length=200)


COMMANDS: dict[str, type[Command]] = {
    "say": Say,
    "interrupt": Interrupt,
    "mute": Mute,
    "ask": Ask,
    "responder": ResponderSwitch,
    "news/enqueue": NewsEnqueue,
    "news/cue": NewsCue,
    "news/skip": NewsSkip,
    "news/air": NewsAir,
    "avatar": AvatarSwitch,
    "voice": VoiceSwitch,
}


# Small command and event packets must not wait for Nagle's algorithm (40 ms and more per hop).
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class CommandError(ValueError):
    """A well-formed command the anchor cannot carry out (now)."""


class ControlTarget(Protocol):
    """What the control plane drives: an anchor's sessions."""

    async def execute(self, command: Command) -> str:
        """Carry ``command`` out; a short result for the ``accepted`` event, or ``CommandError``."""
        ...

    def status(self) -> dict[str, Any]: ...

    def events(self) -> EventFeed: ...


def parse_command(name: str, payload: bytes, limit: int, now: float) -> Command:
    """The command of topic suffix ``name``, or ``CommandError`` saying precisely why not."""
    if len(payload) > limit:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {limit}")
    schema = COMMANDS.get(name)
    if schema is None:
        raise CommandError(f"unknown command {name!r}; known: {sorted(COMMANDS)}")
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"payload is not JSON: {exc}") from None
    try:
        command = schema.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise CommandError(f"invalid {name} command: {problems}") from None
    if command.expired(now):
        raise CommandError(f"command {command.id} expired {now - command.sent_at - command.ttl_s:.1f} s ago")
    return command


async def cancel_firmly(tasks: list[asyncio.Task[None]], grace_s: float = 5.0) -> None:
    """Cancel ``tasks`` until they end (at most ``grace_s``).

    Once is not enough on Python 3.11: ``asyncio.wait_for`` (inside aiomqtt's
    publish) swallows a cancel that lands just as its PUBACK arrives (fixed in 3.12).
    """
    deadline = time.monotonic() + grace_s
    while (pending := [t for t in tasks if not t.done()]) and time.monotonic() < deadline:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.2)
    if pending:
        log.error("still running %.1f s after cancel: %s", grace_s, [t.get_name() for t in pending])


def _command_id(payload: bytes) -> str | None:
    """The ``id`` of a refused command, when its payload has one (to name it in the error event)."""
    try:
        data = json.loads(payload)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    found = data.get("id") if isinstance(data, dict) else None
    return found[:64] if isinstance(found, str) else None


class MqttControl:
    """Keeps one anchor connected to its broker until ``stop()``."""

    def __init__(self, settings: MqttSettings, target: ControlTarget, *, seen_ids: int = 4096) -> None:
        if settings.url is None:
            raise ValueError("MqttControl needs settings.url")
        self.settings = settings
        self.target = target
        self.prefix = f"anchor/{settings.anchor_id}"
        self.connected = asyncio.Event()
        self.connects = 0
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._seen_max = seen_ids
        self._task: asyncio.Task[None] | None = None
        self._events: EventFeed | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._events = self.target.events()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mqtt:{self.prefix}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_firmly([task])
        if self._events is not None:
            self._events.close()
            self._events = None

    def _client(self) -> aiomqtt.Client:
        host, port, tls, user, password = self.settings.endpoint()
        tls_context = ssl.create_default_context(cafile=self.settings.ca_file) if tls else None
        offline = json.dumps({"state": "offline"}).encode()
        return aiomqtt.Client(
            host,
            port,
            username=user,
            password=password,
            identifier=self.settings.client_id,
            keepalive=self.settings.keepalive_s,
            tls_context=tls_context,
            will=aiomqtt.Will(f"{self.prefix}/status", offline, qos=1, retain=True),
            socket_options=NO_DELAY,
        )

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                async with self._client() as client:
                    failures = 0
                    self.connects += 1
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                failures += 1
                ceiling = min(
                    self.settings.reconnect_max_s, self.settings.reconnect_min_s * 2 ** min(failures, 16)
                )
                delay = random.uniform(self.settings.reconnect_min_s, ceiling)  # full jitter
                log.warning("MQTT connection lost (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.subscribe(f"{self.prefix}/cmd/#", qos=1)
        await self._publish_status(client)
        self.connected.set()
        loop = asyncio.get_running_loop()
        helpers = [
            loop.create_task(self._forward_events(client), name=f"mqtt:{self.prefix}:events"),
            loop.create_task(self._status_loop(client), name=f"mqtt:{self.prefix}:status"),
        ]
        try:
            async for message in client.messages:
                await self._handle(client, str(message.topic), bytes(message.payload or b""))
        finally:
            await cancel_firmly(helpers)

    # -- commands ------------------------------------------------------------------
    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        name = topic.removeprefix(f"{self.prefix}/cmd/")
        try:
            command = parse_command(name, payload, self.settings.max_payload_bytes, time.time())
        except CommandError as exc:
            await self._event(
                client, {"kind": "error", "command": _command_id(payload), "topic": topic, "error": str(exc)}
            )
            return
        if command.id in self._seen:
            log.info("command %s already carried out; not replayed", command.id)
            return
        self._seen[command.id] = None
        while len(self._seen) > self._seen_max:
            self._seen.popitem(last=False)
        try:
            result = await self.target.execute(command)
        except CommandError as exc:
            await self._event(
                client, {"kind": "error", "command": command.id, "topic": topic, "error": str(exc)}
            )
            return
        await self._event(
            client, {"kind": "accepted", "command": command.id, "topic": topic, "result": result}
        )
        await self._publish_status(client)

    # -- outputs -------------------------------------------------------------------
    async def _event(self, client: aiomqtt.Client, event: dict[str, Any]) -> None:
        event["at"] = time.time()
        await client.publish(f"{self.prefix}/events", json.dumps(event).encode(), qos=1)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        status = {"state": "online", **self.target.status(), "at": time.time()}
        await client.publish(f"{self.prefix}/status", json.dumps(status).encode(), qos=1, retain=True)

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.status_every_s)
            await self._publish_status(client)

    async def _forward_events(self, client: aiomqtt.Client) -> None:
        """Session events to the events topic; kept across reconnects (bounded, oldest dropped)."""
        assert self._events is not None
        while (event := await self._events.next()) is not None:
            await self._event(
                client, {"kind": event.kind, "utterance": event.utterance_id, "detail": event.detail}
            )
            if event.kind in ("utterance_started", "utterance_finished"):
                await self._publish_status(client)
