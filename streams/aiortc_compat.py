"""Every place we reach into aiortc's or aioice's private parts, in one module.

The public APIs leave three things out that we need:

- **Loopback host candidates.** aioice leaves 127.0.0.1 out of its host
  candidates, so a peer that can reach this machine only over loopback (a
  sandboxed browser on the same host, a test) never connects. A
  loopback-bound server swaps ``aioice.ice.get_host_addresses`` for one that
  adds it: a process-wide switch, made once and idempotent.
- **The tasks a peer connection starts.** ``RTCPeerConnection`` starts its
  connect task with ``ensure_future`` and never awaits it; closing a
  connection must wait for it, found by the coroutine's ``self``.
- **Receivers that count video frames without decoding them** (benchmarks
  that hold dozens of viewers on a small machine): the receivers' decoder
  thread takes its decoder from ``aiortc.rtcrtpreceiver.get_decoder``.
- **Sender reports and the RTP origin** (the benchmarks' glass-to-glass
  clock): a receiver reads RTCP sender reports in ``_handle_rtcp_packet``,
  and decoded pts count from the first RTP timestamp, which its private
  ``TimestampMapper`` holds as ``_origin``.

``pyproject.toml`` bounds both libraries above, and ``private_parts_missing``
(run by the canary test) names whatever a new release moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import av
from aioice import ice
from aiortc import RTCPeerConnection, RTCRtpReceiver, rtcrtpreceiver
from aiortc.mediastreams import VIDEO_TIME_BASE
from aiortc.rtp import RtcpSrPacket

_host_addresses = ice.get_host_addresses
_MAPPER = "_RTCRtpReceiver__timestamp_mapper"


def _with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _host_addresses(use_ipv4, use_ipv6)
    return [*addresses, "127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses


def allow_loopback_candidates() -> None:
    """Offer 127.0.0.1 as a host candidate from now on, in this process."""
    ice.get_host_addresses = _with_loopback


def tasks_of(pc: RTCPeerConnection) -> list[asyncio.Task[Any]]:
    """The running tasks whose coroutine is a method of ``pc`` (its connect task, its close task)."""
    return [task for task in asyncio.all_tasks() if _bound_to(task, pc)]


def _bound_to(task: asyncio.Task[Any], pc: RTCPeerConnection) -> bool:
    frame = getattr(task.get_coro(), "cr_frame", None)
    return frame is not None and frame.f_locals.get("self") is pc


class _PlaceholderVideoDecoder:
    """Turns each received video frame into a 2x2 grey picture with its RTP timestamp: no decoding."""

    def decode(self, encoded_frame: Any) -> list[av.VideoFrame]:
        frame = av.VideoFrame(2, 2, "yuv420p")
        frame.pts = encoded_frame.timestamp
        frame.time_base = VIDEO_TIME_BASE
        return [frame]


@contextlib.contextmanager
def video_counted_not_decoded() -> Iterator[None]:
    """Receivers in this process hand out a placeholder per received video frame instead of decoding
    it (audio is still decoded), until the block ends. Frame counts and timestamps stay true."""
    module: Any = rtcrtpreceiver  # its get_decoder is an import, not part of its declared interface
    decoder_for = module.get_decoder

    def placeholder_for_video(codec: Any) -> Any:
        return (
            _PlaceholderVideoDecoder() if codec.mimeType.lower().startswith("video/") else decoder_for(codec)
        )

    module.get_decoder = placeholder_for_video
    try:
        yield
    finally:
        module.get_decoder = decoder_for


def on_sender_report(receiver: RTCRtpReceiver, noted: Callable[[float, int], None]) -> None:
    """Call ``noted(ntp_seconds, rtp_timestamp)`` for each RTCP sender report ``receiver`` reads."""
    handle: Callable[[Any], Awaitable[None]] = receiver._handle_rtcp_packet

    async def tapped(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            info = packet.sender_info
            noted(info.ntp_timestamp / 2**32, info.rtp_timestamp)
        await handle(packet)

    receiver._handle_rtcp_packet = tapped  # type: ignore[method-assign]


def rtp_origin(receiver: RTCRtpReceiver) -> int | None:
    """The RTP timestamp that ``receiver``'s decoded pts count from; None before the first frame."""
    origin = getattr(getattr(receiver, _MAPPER, None), "_origin", None)
    return None if origin is None else int(origin)


def private_parts_missing() -> list[str]:
    """What this module relies on and the installed aiortc/aioice no longer has (empty when all is there)."""
    missing = []
    if list(inspect.signature(_host_addresses).parameters) != ["use_ipv4", "use_ipv6"]:
        missing.append("aioice.ice.get_host_addresses(use_ipv4, use_ipv6)")
    if not inspect.iscoroutinefunction(getattr(RTCRtpReceiver, "_handle_rtcp_packet", None)):
        missing.append("aiortc RTCRtpReceiver._handle_rtcp_packet (async)")
    receiver_source = inspect.getsource(rtcrtpreceiver)
    if "decoder = get_decoder(codec)" not in receiver_source:
        missing.append("aiortc rtcrtpreceiver.decoder_worker's get_decoder(codec)")
    if "self.__timestamp_mapper = TimestampMapper()" not in receiver_source:
        missing.append("aiortc RTCRtpReceiver.__timestamp_mapper")
    mapper = getattr(rtcrtpreceiver, "TimestampMapper", None)
    if mapper is None or "_origin" not in mapper().__dict__:
        missing.append("aiortc TimestampMapper._origin")
    connection_source = inspect.getsource(RTCPeerConnection)
    if "asyncio.ensure_future(self.__connect())" not in connection_source:
        missing.append("aiortc RTCPeerConnection's connect task (ensure_future(self.__connect()))")
    return missing
