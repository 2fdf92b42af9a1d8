"""Canary for the private parts of aiortc and aioice we rely on: fails loudly, naming what a release moved."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

import aioice
import aiortc
from aiortc import RTCPeerConnection
from aiortc.codecs import get_decoder
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack

from anchor.core.aio import cancel_and_wait
from streams.aiortc_compat import (
    allow_loopback_candidates,
    on_sender_report,
    private_parts_missing,
    rtp_origin,
    tasks_of,
    video_counted_not_decoded,
)
from streams.server import close_pc


def test_every_private_part_is_where_we_reach_for_it() -> None:
    missing = private_parts_missing()
    assert not missing, (
        f"aiortc {aiortc.__version__} / aioice {aioice.__version__} moved what streams/aiortc_compat.py "
        f"uses: {missing}; mend the module, then move the upper bounds in pyproject.toml"
    )


def read_every_track(
    receiver: RTCPeerConnection, sink: Callable[[aiortc.MediaStreamTrack, Any], None]
) -> list[asyncio.Task[None]]:
    """Each track ``receiver`` gets is read to ``sink`` (frame by frame) by a task in the list returned."""
    readers: list[asyncio.Task[None]] = []

    @receiver.on("track")
    def _track(track: aiortc.MediaStreamTrack) -> None:
        async def read() -> None:
            while True:
                sink(track, await track.recv())

        readers.append(asyncio.get_running_loop().create_task(read(), name=f"compat:{track.kind}"))

    return readers


async def test_loopback_peers_connect_and_the_receiver_clock_is_readable() -> None:
    allow_loopback_candidates()
    sender, receiver = RTCPeerConnection(), RTCPeerConnection()
    sender.addTrack(AudioStreamTrack())
    reports: list[tuple[float, int]] = []
    got: asyncio.Queue[int] = asyncio.Queue()
    readers = read_every_track(receiver, lambda _, frame: got.put_nowait(int(frame.pts or 0)))

    try:
        await sender.setLocalDescription(await sender.createOffer())
        assert sender.localDescription is not None
        assert "127.0.0.1" in sender.localDescription.sdp, "no loopback host candidate was offered"
        await receiver.setRemoteDescription(sender.localDescription)
        rtp_receiver = receiver.getReceivers()[0]
        on_sender_report(rtp_receiver, lambda ntp, rtp: reports.append((ntp, rtp)))
        await receiver.setLocalDescription(await receiver.createAnswer())
        assert receiver.localDescription is not None
        assert tasks_of(receiver), "the peer connection's connect task was not found"
        await sender.setRemoteDescription(receiver.localDescription)
        async with asyncio.timeout(15):
            await got.get()
            while not reports:
                await got.get()
        assert rtp_origin(rtp_receiver) is not None
        ntp, _ = reports[-1]
        assert ntp > 3.9e9, "a sender report's NTP time should be seconds since 1900"
    finally:
        await cancel_and_wait(readers, 2.0)
        await close_pc(receiver)
        await close_pc(sender)
    assert not tasks_of(receiver) and not tasks_of(sender)


async def test_video_counted_not_decoded_keeps_every_frame_and_its_timestamp() -> None:
    allow_loopback_candidates()
    with video_counted_not_decoded():
        sender, receiver = RTCPeerConnection(), RTCPeerConnection()
        sender.addTrack(VideoStreamTrack())
        sender.addTrack(AudioStreamTrack())
        frames: dict[str, list[tuple[int, int]]] = {"video": [], "audio": []}
        readers = read_every_track(
            receiver,
            lambda track, frame: frames[track.kind].append(
                (int(frame.pts or 0), frame.width if track.kind == "video" else 0)
            ),
        )

        try:
            await sender.setLocalDescription(await sender.createOffer())
            assert sender.localDescription is not None
            await receiver.setRemoteDescription(sender.localDescription)
            await receiver.setLocalDescription(await receiver.createAnswer())
            assert receiver.localDescription is not None
            await sender.setRemoteDescription(receiver.localDescription)
            async with asyncio.timeout(15):
                while len(frames["video"]) < 30 or not frames["audio"]:  # noqa: ASYNC110 - filled by readers
                    await asyncio.sleep(0.05)
        finally:
            await cancel_and_wait(readers, 2.0)
            await close_pc(receiver)
            await close_pc(sender)
    video = frames["video"]
    assert {width for _, width in video} == {2}, "placeholders, not 640x480 decodes"
    steps = {b - a for (a, _), (b, _) in itertools.pairwise(video)}
    assert steps <= {2999, 3000, 3001}, "one per sent frame at 30 fps, in order, on the 90 kHz clock"
    assert get_decoder is aiortc.rtcrtpreceiver.get_decoder, "aiortc's own decoders are back after the block"
