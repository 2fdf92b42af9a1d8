"""The cluster's control plane over MQTT v5: workers take session starts from a shared subscription and
announce themselves with retained status and a last will; gateways ask for sessions and wait for replies.

Topics under ``cluster.topic`` (``anchor/cluster``):

- ``{t}/sessions/start``: start requests. Workers with room subscribe as
  ``$share/{group}/{t}/sessions/start``, so the broker gives each request to
  one of them; a full worker unsubscribes, and one that got a request it
  cannot hold publishes it again with its name in ``refused`` (at most
  ``max_hops`` times) so that another worker takes it. A request from a
  gateway carries the MQTT v5 response topic and correlation data; the
  worker that starts the session (or the last one to refuse it) answers
  there.
- ``{t}/sessions/{id}/events``: what a session says (utterances started and
  finished, news), from whichever worker holds it, with that worker's name
  and epoch; viewers' words stay private and are not sent.
- ``{t}/workers/{id}/status`` (retained): ``online`` with capacity,
  sessions, load and the worker's URL; ``offline`` as its last will, so a
  worker that dies (or is cut off, after 1.5 keepalives) is seen at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import ssl
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from anchor.core.aio import cancel_and_wait
from anchor.core.backoff import Backoff
from streams.mqtt import NO_DELAY
from streams.settings import ClusterSettings, MqttSettings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

SESSION_ID = r"^[A-Za-z0-9_.-]{1,64}$"


class StartRequest(BaseModel):
    """Run ``session`` (a restart of a lost holder names the ``epoch`` it had, so it happens once)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str = Field(pattern=SESSION_ID)
    epoch: int | None = Field(None, ge=1)
    refused: list[str] = Field(default_factory=list, max_length=100)


class StartReply(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str
    ok: bool
    url: str = ""
    worker: str = ""
    error: str = ""


class WorkerStatus(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    worker: str
    incarnation: str
    state: Literal["online", "offline"]
    url: str = ""
    capacity: int = 0
    sessions: list[str] = Field(default_factory=list)
    load: float = 0.0
    at: float = 0.0

    @property
    def holder(self) -> str:
        """The name a worker's leases carry: a restarted worker is another holder."""
        return f"{self.worker}/{self.incarnation}"

    @property
    def room(self) -> int:
        return max(0, self.capacity - len(self.sessions)) if self.state == "online" else 0


def decode(model: type[M], payload: bytes) -> M | None:
    """``payload`` as ``model``, or None (logged) when it is not one."""
    try:
        return model.model_validate(json.loads(payload))
    except (ValueError, RecursionError, ValidationError) as exc:
        log.warning("cluster: ignored a malformed %s: %s", model.__name__, str(exc).splitlines()[0])
        return None


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


class Topics:
    def __init__(self, settings: ClusterSettings) -> None:
        self.start = f"{settings.topic}/sessions/start"
        self.shared_start = f"$share/{settings.group}/{self.start}"
        self.statuses = f"{settings.topic}/workers/+/status"
        self._prefix = settings.topic

    def status(self, worker: str) -> str:
        return f"{self._prefix}/workers/{worker}/status"

    def session_events(self, session: str) -> str:
        return f"{self._prefix}/sessions/{session}/events"

    def replies(self, gateway: str) -> str:
        return f"{self._prefix}/replies/{gateway}"


Handler = Callable[[aiomqtt.Message], Awaitable[None]]


class Bus:
    """One MQTT v5 connection, kept up with backoff and full jitter until ``stop()``. On every connect it
    subscribes to what ``subscriptions()`` lists then; each message goes to ``on_message`` in order."""

    def __init__(
        self,
        mqtt: MqttSettings,
        *,
        client_id: str,
        keepalive_s: int,
        subscriptions: Callable[[], list[str]],
        on_message: Handler,
        will: tuple[str, bytes] | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if mqtt.url is None:
            raise ValueError("the cluster needs mqtt.url (its broker)")
        self.mqtt = mqtt
        self.client_id = client_id
        self.keepalive_s = keepalive_s
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.will = will
        self.on_connect = on_connect
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error = ""
        self._client: aiomqtt.Client | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"bus:{self.client_id}")

    async def stop(self, farewell: tuple[str, bytes] | None = None) -> None:
        """Publish ``farewell`` (retained) while still connected, then disconnect (the last will only
        covers a connection that dies)."""
        client = self._client
        if farewell is not None and client is not None and self.connected.is_set():
            try:
                async with asyncio.timeout(2.0):
                    await client.publish(farewell[0], farewell[1], qos=1, retain=True)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.warning("cluster: could not say goodbye: %s", exc)
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], 5.0, again_every_s=0.2)

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        response_topic: str | None = None,
        correlation: bytes | None = None,
    ) -> bool:
        """Publish at QoS 1; False when not connected (the caller decides whether that matters)."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        properties = None
        if response_topic is not None or correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation is not None:
                properties.CorrelationData = correlation
        try:
            await client.publish(topic, payload, qos=1, retain=retain, properties=properties, timeout=5.0)
        except aiomqtt.MqttError as exc:
            log.warning("cluster: publish to %s failed: %s", topic, exc)
            return False
        return True

    async def subscribe(self, topic: str) -> None:
        if (client := self._client) is not None and self.connected.is_set():
            await client.subscribe(topic, qos=1, timeout=5.0)

    async def unsubscribe(self, topic: str) -> None:
        if (client := self._client) is not None and self.connected.is_set():
            await client.unsubscribe(topic, timeout=5.0)

    def _connection(self) -> aiomqtt.Client:
        host, port, tls, user, password = self.mqtt.endpoint()
        will = None if self.will is None else aiomqtt.Will(self.will[0], self.will[1], qos=1, retain=True)
        return aiomqtt.Client(
            host,
            port,
            username=user,
            password=password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            keepalive=self.keepalive_s,
            timeout=max(2.0, float(self.keepalive_s)),
            tls_context=ssl.create_default_context(cafile=self.mqtt.ca_file) if tls else None,
            will=will,
            socket_options=NO_DELAY,
        )

    async def _run(self) -> None:
        backoff = Backoff(self.mqtt.reconnect_min_s, self.mqtt.reconnect_max_s)
        while True:
            try:
                async with self._connection() as client:
                    self._client = client
                    for topic in self.subscriptions():
                        await client.subscribe(topic, qos=1)
                    self.connects += 1
                    self.connected.set()
                    backoff.reset()
                    if self.on_connect is not None:
                        await self.on_connect()
                    async for message in client.messages:
                        await self.on_message(message)
            except aiomqtt.MqttError as exc:
                self._lost(str(exc))
            except Exception as exc:
                log.exception("cluster bus %s failed", self.client_id)
                self._lost(f"{type(exc).__name__}: {exc}")
            delay = backoff.next_delay()
            log.warning("cluster: broker connection lost (%s); again in %.1f s", self.last_error, delay)
            await asyncio.sleep(delay)

    def _lost(self, why: str) -> None:
        self.connected.clear()
        self._client = None
        self.last_error = why


def reply_route(message: aiomqtt.Message) -> tuple[str, bytes] | None:
    """The v5 response topic and correlation data a request came with, if any."""
    properties = message.properties
    topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
    correlation = getattr(properties, "CorrelationData", None) if properties is not None else None
    if not isinstance(topic, str) or not topic:
        return None
    return topic, bytes(correlation or b"")


class Requests:
    """A gateway's outstanding start requests, matched to replies by correlation data."""

    def __init__(self) -> None:
        self._waiting: dict[bytes, asyncio.Future[StartReply]] = {}

    def open(self) -> tuple[bytes, asyncio.Future[StartReply]]:
        key = secrets.token_bytes(12)
        future: asyncio.Future[StartReply] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return key, future

    def close(self, key: bytes) -> None:
        self._waiting.pop(key, None)

    def resolve(self, correlation: bytes, reply: StartReply) -> None:
        future = self._waiting.pop(correlation, None)
        if future is not None and not future.done():
            future.set_result(reply)
