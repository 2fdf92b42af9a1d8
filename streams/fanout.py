"""Fan-out through Janus: the program is encoded once, published into a VideoRoom, and viewers watch the room.

Each direct viewer costs the anchor its own encode; through the SFU the
anchor sends one stream whatever the audience. The room is made by the
anchor with a random id, PIN and secret that only it knows, and Janus's API
stays on a private address: a viewer never talks to Janus's API, it asks
the anchor (with the anchor's own token), which subscribes it and relays
Janus's offer and the viewer's answer (``WebRtcServer``'s ``/fanout``
routes). Media then flows between Janus and the viewer.

When Janus goes away (a restart, a crash), the publisher notices through
its session's event poll or its peer connection, and publishes again with
backoff (full jitter) into a new room; viewers, whose subscriptions went
with the old Janus, subscribe again (the page does it by itself).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription

from anchor.core.aio import cancel_and_wait
from anchor.core.backoff import Backoff
from streams.janus import NO_SUCH_FEED, ROOM_EXISTS, JanusError, JanusSession
from streams.settings import FanoutSettings
from streams.tracks import ProgramAudioTrack, ProgramFeed, ProgramVideoTrack

log = logging.getLogger(__name__)


class FanoutUnavailable(RuntimeError):
    """The program is not published right now (Janus unreachable, or republishing)."""


class Program(Protocol):
    """What the publisher needs of a session: a paced copy of its program."""

    def subscribe(self, *, audio_ms: float, video_frames: int) -> Any: ...

    def unsubscribe(self, feed: Any, /) -> None: ...


@dataclass(frozen=True)
class Room:
    id: int
    pin: str
    secret: str  # destroys it
    handle: int  # the publisher's handle, which made it
    feed: int  # the publisher's id in the room: what subscribers ask for


class JanusPublisher:
    """Keeps one session's program published into a Janus VideoRoom until ``stop()``."""

    def __init__(self, source: Program, settings: FanoutSettings, *, name: str = "anchor") -> None:
        self.source = source
        self.settings = settings
        self.name = name
        self.published = asyncio.Event()
        self.publishes = 0
        #: Seconds from losing Janus to publishing again, per republish (the first publish is not one).
        self.republish_s: list[float] = []
        self.room: Room | None = None
        #: Called with a viewer's handle when its subscription ends on Janus's side (it left, its media
        #: failed, or Janus went away): the server forgets that viewer.
        self.on_viewer_gone: Callable[[int], None] | None = None
        self._viewers: set[int] = set()  # subscription handles in the current Janus session
        self._janus: JanusSession | None = None
        self._task: asyncio.Task[None] | None = None
        self._detaching: set[asyncio.Task[None]] = set()
        self._http: aiohttp.ClientSession | None = None

    def start(self) -> None:
        self._http = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._run(), name=f"fanout:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], 5.0)
            self._task = None
        await cancel_and_wait(list(self._detaching), 2.0)
        if self._http is not None:
            await self._http.close()
            self._http = None

    # -- viewers (relayed by the server) --------------------------------------------
    async def subscribe(self) -> tuple[int, dict[str, Any]]:
        """A new subscription for one viewer: its Janus handle and Janus's SDP offer to it."""
        janus, room = self._janus, self.room
        if janus is None or room is None or not self.published.is_set():
            raise FanoutUnavailable("the program is not published to the SFU right now")
        handle = await janus.attach()
        self._viewers.add(handle)
        try:
            join = {
                "request": "join",
                "ptype": "subscriber",
                "room": room.id,
                "pin": room.pin,
                "streams": [{"feed": room.feed}],
            }
            try:
                _, jsep = await janus.message(handle, join)
            except JanusError as exc:
                if exc.code == NO_SUCH_FEED:  # the program is between two publishes
                    raise FanoutUnavailable(
                        "the program is being published again; subscribe shortly"
                    ) from None
                raise
            if jsep is None or jsep.get("type") != "offer":
                raise JanusError("Janus gave no offer for the subscription")
        except BaseException:
            self._viewers.discard(handle)
            await self._detach(janus, handle)
            raise
        return handle, jsep

    async def start_viewer(self, handle: int, answer: dict[str, Any]) -> None:
        janus = self._janus
        if janus is None:
            raise FanoutUnavailable("the SFU went away; subscribe again")
        await janus.message(handle, {"request": "start"}, jsep=answer)

    async def leave(self, handle: int) -> None:
        janus = self._janus
        self._viewers.discard(handle)
        if janus is not None:
            await self._detach(janus, handle)

    def _hung_up(self, handle: int) -> None:
        """Janus says a handle's connection ended: a viewer's (its subscription is over) or the program's
        own (the publisher's connection watch handles that)."""
        if handle in self._viewers:
            self._viewers.discard(handle)
            if self._janus is not None:
                detaching = asyncio.get_running_loop().create_task(
                    self._detach(self._janus, handle), name=f"fanout:detach:{handle}"
                )
                self._detaching.add(detaching)
                detaching.add_done_callback(self._detaching.discard)
            self._gone(handle)

    def _gone(self, handle: int) -> None:
        if self.on_viewer_gone is not None:
            self.on_viewer_gone(handle)

    @staticmethod
    async def _detach(janus: JanusSession, handle: int) -> None:
        try:
            await janus.detach(handle)
        except JanusError as exc:
            log.info("janus handle %s: detach failed (%s)", handle, exc)

    # -- publishing -------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = Backoff(self.settings.republish_min_s, self.settings.republish_max_s)
        lost_at: float | None = None
        assert self._http is not None
        while True:
            feed = None
            pc = RTCPeerConnection()
            try:
                async with JanusSession(
                    self._http, self.settings.janus_url, on_hangup=self._hung_up
                ) as janus:
                    feed = self.source.subscribe(audio_ms=500, video_frames=8)
                    self.room = await self._publish(janus, pc, feed)
                    self._janus = janus
                    self.publishes += 1
                    if lost_at is not None:
                        self.republish_s.append(time.monotonic() - lost_at)
                    self.published.set()
                    backoff.reset()
                    log.info("published to Janus room %s (publisher %s)", self.room.id, self.room.feed)
                    try:
                        await self._until_lost(janus, pc)
                    except asyncio.CancelledError:
                        await self._destroy(janus, self.room)  # a clean stop leaves no empty room behind
                        raise
                    log.warning("lost the SFU; publishing again")
            except (JanusError, aiohttp.ClientError, OSError) as exc:
                log.warning("cannot publish to Janus at %s: %s", self.settings.janus_url, exc)
            finally:
                if self.published.is_set() or lost_at is None:
                    lost_at = time.monotonic()
                self.published.clear()
                self._janus, self.room = None, None
                for handle in self._viewers:  # their subscriptions went with that Janus session
                    self._gone(handle)
                self._viewers.clear()
                await pc.close()
                if feed is not None:
                    self.source.unsubscribe(feed)
            await asyncio.sleep(backoff.next_delay())

    async def _publish(self, janus: JanusSession, pc: RTCPeerConnection, feed: ProgramFeed) -> Room:
        handle = await janus.attach()
        room_id, pin, secret = (
            secrets.randbelow(2**52) + 1,
            secrets.token_urlsafe(16),
            secrets.token_urlsafe(24),
        )
        create = {
            "request": "create",
            "room": room_id,
            "pin": pin,
            "secret": secret,
            "is_private": True,
            "publishers": 1,
            "audiocodec": "opus",
            "videocodec": "vp8,h264",
            "description": self.name,
        }
        if self.settings.janus_admin_key is not None:
            create["admin_key"] = self.settings.janus_admin_key.get_secret_value()
        try:
            await janus.request(handle, create)
        except JanusError as exc:
            if exc.code != ROOM_EXISTS:
                raise
        pc.addTrack(ProgramAudioTrack(feed))
        pc.addTrack(ProgramVideoTrack(feed))
        await pc.setLocalDescription(await pc.createOffer())
        offer = {"type": "offer", "sdp": pc.localDescription.sdp}
        join = {
            "request": "joinandconfigure",
            "ptype": "publisher",
            "room": room_id,
            "pin": pin,
            "display": self.name,
            "audio": True,
            "video": True,
        }
        data, jsep = await janus.message(handle, join, jsep=offer)
        if jsep is None or jsep.get("type") != "answer":
            raise JanusError("Janus gave no answer to the program's offer")
        await pc.setRemoteDescription(RTCSessionDescription(sdp=jsep["sdp"], type="answer"))
        await _connected(pc, self.settings.connect_timeout_s)
        await janus.until_up(handle, self.settings.connect_timeout_s)  # Janus lists the feed only from then
        return Room(room_id, pin, secret, handle, int(data["id"]))

    @staticmethod
    async def _destroy(janus: JanusSession, room: Room) -> None:
        try:
            async with asyncio.timeout(2.0):
                await janus.request(
                    room.handle, {"request": "destroy", "room": room.id, "secret": room.secret}
                )
        except (JanusError, TimeoutError) as exc:
            log.info("janus room %s: destroy failed (%s)", room.id, exc)

    async def _until_lost(self, janus: JanusSession, pc: RTCPeerConnection) -> None:
        failed = asyncio.Event()

        @pc.on("connectionstatechange")
        def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                failed.set()

        waits = [asyncio.ensure_future(janus.lost.wait()), asyncio.ensure_future(failed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait(waits, 1.0)


async def _connected(pc: RTCPeerConnection, timeout_s: float) -> None:
    up = asyncio.Event()

    @pc.on("connectionstatechange")
    def _state() -> None:
        if pc.connectionState in ("connected", "failed", "closed"):
            up.set()

    try:
        async with asyncio.timeout(timeout_s):
            await up.wait()
    except TimeoutError:
        raise JanusError(f"the program's connection to Janus was not up within {timeout_s:g} s") from None
    if pc.connectionState != "connected":
        raise JanusError(f"the program's connection to Janus {pc.connectionState}")
