"""The bench's fake anchor (FakeTTS, the animator face), served over HTTP/WebRTC in a process of its own.

``anchor bench streams`` measures admission against it: in its own process,
the server's admission signals (its CPU share, its viewers' dropped frames)
see the anchor's work only, not the bench's receivers decoding video.
Run as ``python -m anchor.bench.served_fake --port P --size N``; it talks
without pause until SIGTERM. ``ANCHOR_FANOUT__*`` (``anchor bench fanout``)
fans its program out through Janus; ``--stamp`` draws frame numbers into it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from anchor.app.settings import AppSettings
from anchor.bench.stamps import StampedProgram
from anchor.bench.streams import fake_anchor, keep_talking
from anchor.core.aio import cancel_and_wait
from streams.fanout import JanusPublisher
from streams.server import WebRtcServer

SESSION = "bench"


async def serve(port: int, size: int, stamped: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    # Every bench viewer comes from one address: the per-client rate limit would refuse most of them.
    settings = AppSettings(webrtc={"port": port, "max_peers": 256, "offers_per_minute": 100_000})
    async with fake_anchor(size) as talking, contextlib.AsyncExitStack() as parts:
        session = StampedProgram(talking) if stamped else talking
        fanouts = {}
        if settings.fanout.mode == "janus":
            publisher = JanusPublisher(session, settings.fanout, name=SESSION)
            publisher.start()
            parts.push_async_callback(publisher.stop)
            fanouts[SESSION] = publisher
        server = WebRtcServer(settings.webrtc, {SESSION: session}, default_session=SESSION, fanouts=fanouts)
        await server.start()
        parts.push_async_callback(server.close)
        talker = loop.create_task(keep_talking(talking), name="bench:talk")
        try:
            await stop.wait()
        finally:
            await cancel_and_wait([talker], 5.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--stamp", action="store_true", help="draw frame numbers into the pictures")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.size, args.stamp))


if __name__ == "__main__":
    main()
