"""A client for Janus's HTTP API and its VideoRoom plugin: to publish one program and subscribe viewers.

Janus answers some requests at once (``create``, ``attach``, a room's
``create``) and others later, as events on the session's long poll (a
publisher's ``configured`` answer, a subscriber's ``attached`` offer). One
task per session polls ``GET /janus/{session}``; each event finds the
request that asked for it by its transaction. The poll is also what keeps
the session alive (Janus drops sessions idle for its ``session_timeout``).
When Janus goes away the poll fails, every waiting request fails with
``JanusError``, and ``lost`` is set: the owner starts over.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable
from typing import Any

import aiohttp

from anchor.core.aio import cancel_and_wait

log = logging.getLogger(__name__)

VIDEOROOM = "janus.plugin.videoroom"
ROOM_EXISTS = 427  # the VideoRoom's JANUS_VIDEOROOM_ERROR_ROOM_EXISTS
NO_SUCH_FEED = 428  # JANUS_VIDEOROOM_ERROR_NO_SUCH_FEED: the publisher is not (or no longer) up


class JanusError(RuntimeError):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class JanusSession:
    """One Janus session over HTTP; ``async with`` opens and destroys it."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        url: str,
        *,
        timeout_s: float = 10.0,
        on_hangup: Callable[[int], None] | None = None,
    ) -> None:
        """``on_hangup(handle)``: a handle's PeerConnection ended (its viewer left, or its media failed)."""
        self.on_hangup = on_hangup
        self.http = http
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.id: int | None = None
        self.lost = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._up: set[int] = set()  # handles whose PeerConnection Janus reported up ("webrtcup")
        self._up_changed = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None

    async def __aenter__(self) -> JanusSession:
        reply = await self._post(self.url, {"janus": "create"})
        self.id = int(reply["data"]["id"])
        self._poller = asyncio.get_running_loop().create_task(self._poll(), name=f"janus:poll:{self.id}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._poller is not None:
            await cancel_and_wait([self._poller], 2.0)
        if self.id is not None and not self.lost.is_set():
            try:
                await self._post(f"{self.url}/{self.id}", {"janus": "destroy"})
            except (JanusError, aiohttp.ClientError, TimeoutError) as exc:
                log.info("janus session %s: destroy failed (%s)", self.id, exc)
        self._fail_all(JanusError("the Janus session was closed"))

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        reply = await self._post(f"{self.url}/{self.id}", {"janus": "attach", "plugin": plugin})
        return int(reply["data"]["id"])

    async def detach(self, handle: int) -> None:
        await self._post(f"{self.url}/{self.id}/{handle}", {"janus": "detach"})

    async def request(self, handle: int, body: dict[str, Any]) -> dict[str, Any]:
        """A plugin request Janus answers at once (a room's ``create``): its plugin data."""
        reply = await self._post(f"{self.url}/{self.id}/{handle}", {"janus": "message", "body": body})
        return _plugin_data(reply)

    async def message(
        self, handle: int, body: dict[str, Any], jsep: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """A plugin request answered by a later event: that event's plugin data and its JSEP, if any."""
        transaction = secrets.token_hex(8)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[transaction] = future
        try:
            request: dict[str, Any] = {"janus": "message", "body": body, "transaction": transaction}
            if jsep is not None:
                request["jsep"] = jsep
            reply = await self._post(f"{self.url}/{self.id}/{handle}", request, transaction=transaction)
            if reply.get("janus") == "event":  # some requests are answered at once after all
                event = reply
            else:
                async with asyncio.timeout(self.timeout_s):
                    event = await future
        finally:
            self._waiting.pop(transaction, None)
        return _plugin_data(event), event.get("jsep")

    async def until_up(self, handle: int, timeout_s: float) -> None:
        """Until Janus says ``handle``'s PeerConnection is up (its ``webrtcup`` event): only then does the
        VideoRoom list a publisher's feed."""
        try:
            async with asyncio.timeout(timeout_s):
                while handle not in self._up:
                    self._up_changed.clear()
                    if self.lost.is_set():
                        raise JanusError("lost the Janus session")
                    await self._up_changed.wait()
        except TimeoutError:
            raise JanusError(f"Janus did not report handle {handle} up within {timeout_s:g} s") from None

    async def _post(
        self, url: str, request: dict[str, Any], *, transaction: str | None = None
    ) -> dict[str, Any]:
        body = {**request, "transaction": transaction or secrets.token_hex(8)}
        try:
            async with asyncio.timeout(self.timeout_s), self.http.post(url, json=body) as response:
                reply: dict[str, Any] = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise JanusError(f"Janus at {self.url} did not answer {request['janus']}: {exc}") from None
        if reply.get("janus") == "error":
            error = reply.get("error", {})
            raise JanusError(f"Janus refused {request['janus']}: {error.get('reason')}", error.get("code"))
        return reply

    async def _poll(self) -> None:
        try:
            while True:
                async with self.http.get(f"{self.url}/{self.id}", params={"maxev": "10"}) as response:
                    if response.status != 200:
                        raise JanusError(f"Janus's event poll answered {response.status}")
                    events = await response.json(content_type=None)
                for event in events if isinstance(events, list) else [events]:
                    self._dispatch(event)
        except (aiohttp.ClientError, JanusError, ValueError) as exc:
            log.warning("janus session %s lost: %s", self.id, exc)
            self.lost.set()
            self._up_changed.set()
            self._fail_all(JanusError(f"lost the Janus session: {exc}"))

    def _dispatch(self, event: dict[str, Any]) -> None:
        kind = event.get("janus")
        if kind == "keepalive":
            return
        if kind == "webrtcup" and isinstance(event.get("sender"), int):
            self._up.add(event["sender"])
            self._up_changed.set()
            return
        future = self._waiting.get(str(event.get("transaction")))
        if future is not None and not future.done() and kind == "event":
            future.set_result(event)
        elif kind in ("hangup", "detached"):
            log.info("janus handle %s: %s (%s)", event.get("sender"), kind, event.get("reason", ""))
            if kind == "hangup" and self.on_hangup is not None and isinstance(event.get("sender"), int):
                self.on_hangup(event["sender"])

    def _fail_all(self, error: JanusError) -> None:
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(error)


def _plugin_data(reply: dict[str, Any]) -> dict[str, Any]:
    data: dict[str, Any] = reply.get("plugindata", {}).get("data", {})
    if "error" in data:
        raise JanusError(f"VideoRoom: {data['error']}", data.get("error_code"))
    return data
