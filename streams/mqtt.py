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
- ``anchor/{id}/events/private`` (QoS 1): what viewers asked or said (with the
  asker's token subject when known), for the operator: give it its own ACL.

A bad command (too big, not JSON, wrong schema, expired, unknown) yields an
``error`` event naming the command and what was wrong, and changes
nothing. A command id seen before is not carried out again (QoS 1 may
deliver twice; a broker may replay). The connection is kept with exponential
backoff and full jitter, and subscriptions are made again on every connect.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, Protocol

import aiomqtt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anchor.core.aio import cancel_and_wait
from anchor.core.backoff import Backoff
from anchor.core.commands import Command, CommandError, decode_object, describe, parse_command
from anchor.core.recent import RecentIds
from streams.server import EventFeed
from streams.settings import MqttSettings

log = logging.getLogger(__name__)


# -- the MQTT envelope around a command ------------------------------------------------


class Envelope(BaseModel):
    """What MQTT adds to a command: an id (for de-duplication) and a lifetime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    sent_at: float = Field(description="Unix time the command was sent")
    ttl_s: float = Field(gt=0, le=3600)

    def expired(self, now: float) -> bool:
        return now > self.sent_at + self.ttl_s


@dataclass(frozen=True)
class Message:
    envelope: Envelope
    command: Command

    @property
    def id(self) -> str:
        return self.envelope.id


#: A command stamped further ahead than this is refused (else its ``ttl_s`` would never run out).
MAX_CLOCK_SKEW_S = 60.0

# Small command and event packets must not wait for Nagle's algorithm (40 ms and more per hop).
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


class ControlTarget(Protocol):
    """What the control plane drives: an anchor's sessions."""

    async def execute(self, command: Command) -> str:
        """Carry ``command`` out; a short result for the ``accepted`` event, or ``CommandError``."""
        ...

    def status(self) -> dict[str, Any]: ...

    def events(self) -> EventFeed: ...


def parse_message(name: str, payload: bytes, limit: int, now: float) -> Message:
    """The command of topic suffix ``name`` in its envelope, or ``CommandError`` saying precisely why not."""
    if len(payload) > limit:
        raise CommandError(f"payload of {len(payload)} bytes exceeds {limit}")
    fields = decode_object(payload, "payload")
    envelope_fields = {key: fields.pop(key) for key in Envelope.model_fields if key in fields}
    try:
        envelope = Envelope.model_validate(envelope_fields)
    except ValidationError as exc:
        raise CommandError(f"invalid {name} command: {describe(exc)}") from None
    command = parse_command(name, fields)
    if envelope.sent_at > now + MAX_CLOCK_SKEW_S:
        raise CommandError(
            f"command {envelope.id} was sent {envelope.sent_at - now:.0f} s in the future; "
            f"clocks may differ by at most {MAX_CLOCK_SKEW_S:.0f} s"
        )
    if envelope.expired(now):
        raise CommandError(
            f"command {envelope.id} expired {now - envelope.sent_at - envelope.ttl_s:.1f} s ago"
        )
    return Message(envelope, command)


def _command_id(payload: bytes) -> str | None:
    """The ``id`` of a refused command, when its payload has one (to name it in the error event)."""
    try:
        found = decode_object(payload).get("id")
    except CommandError:
        return None
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
        #: Set while the broker is out of reach (a connection lost or refused), cleared on connect.
        self.down = asyncio.Event()
        self.connects = 0
        self.last_error = ""
        self._live: aiomqtt.Client | None = None
        self._seen = RecentIds(seen_ids)
        self._task: asyncio.Task[None] | None = None
        self._events: EventFeed | None = None

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        self._events = self.target.events()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"mqtt:{self.prefix}")

    async def stop(self) -> None:
        """Say ``offline`` (retained) while still connected, then disconnect: the last will only covers a
        connection that dies, so a clean stop must say it itself."""
        client = self._live
        if client is not None and self.connected.is_set():
            offline = json.dumps({"state": "offline", "at": time.time()}).encode()
            try:
                async with asyncio.timeout(2.0):
                    await client.publish(f"{self.prefix}/status", offline, qos=1, retain=True)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.warning("could not publish the offline status: %s", exc)
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], 5.0, again_every_s=0.2)
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
        backoff = Backoff(self.settings.reconnect_min_s, self.settings.reconnect_max_s)
        while True:
            try:
                async with self._client() as client:
                    backoff.reset()
                    self.connects += 1
                    self.down.clear()
                    self._live = client
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                self._lost(str(exc))
                delay = backoff.next_delay()
                log.warning("MQTT connection lost (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)
            except Exception as exc:
                self._lost(f"{type(exc).__name__}: {exc}")
                delay = backoff.next_delay()
                log.exception("MQTT control failed; reconnecting in %.1f s", delay)
                await asyncio.sleep(delay)

    def _lost(self, why: str) -> None:
        self.connected.clear()
        self._live = None
        self.last_error = why
        self.down.set()

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
            await cancel_and_wait(helpers, 5.0, again_every_s=0.2)

    # -- commands ------------------------------------------------------------------
    async def _handle(self, client: aiomqtt.Client, topic: str, payload: bytes) -> None:
        name = topic.removeprefix(f"{self.prefix}/cmd/")
        try:
            message = parse_message(name, payload, self.settings.max_payload_bytes, time.time())
        except CommandError as exc:
            await self._event(
                client, {"kind": "error", "command": _command_id(payload), "topic": topic, "error": str(exc)}
            )
            return
        if message.id in self._seen:
            log.info("command %s already carried out; not replayed", message.id)
            return
        self._seen.add(message.id)
        try:
            result = await self.target.execute(message.command)
        except CommandError as exc:
            await self._event(
                client, {"kind": "error", "command": message.id, "topic": topic, "error": str(exc)}
            )
            return
        except Exception as exc:
            log.exception("command %s on %s failed", message.id, topic)
            failure = f"the anchor failed to carry it out: {type(exc).__name__}"
            await self._event(
                client, {"kind": "error", "command": message.id, "topic": topic, "error": failure}
            )
            return
        await self._event(
            client, {"kind": "accepted", "command": message.id, "topic": topic, "result": result}
        )
        await self._publish_status(client)

    # -- outputs -------------------------------------------------------------------
    async def _event(self, client: aiomqtt.Client, event: dict[str, Any], *, topic: str = "events") -> None:
        event["at"] = time.time()
        await client.publish(f"{self.prefix}/{topic}", json.dumps(event).encode(), qos=1)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        status = {"state": "online", **self.target.status(), "at": time.time()}
        await client.publish(f"{self.prefix}/status", json.dumps(status).encode(), qos=1, retain=True)

    async def _status_loop(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(self.settings.status_every_s)
            await self._publish_status(client)

    async def _forward_events(self, client: aiomqtt.Client) -> None:
        """Session events to the events topic, a viewer's words (private events) to ``events/private``;
        kept across reconnects (bounded, oldest dropped)."""
        assert self._events is not None
        while (event := await self._events.next()) is not None:
            data = {"kind": event.kind, "utterance": event.utterance_id, "detail": event.detail}
            if event.private:
                await self._event(client, {**data, "asker": event.asker}, topic="events/private")
            else:
                await self._event(client, data)
            if event.kind in ("utterance_started", "utterance_finished"):
                await self._publish_status(client)
