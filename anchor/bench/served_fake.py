"""The bench's fake anchor (FakeTTS, the animator face), served over HTTP/WebRTC in a process of its own.

``anchor bench streams`` measures admission against it: in its own process,
the server's admission signals (its CPU share, its viewers' dropped frames)
see the anchor's work only, not the bench's receivers decoding video.
Run as ``python -m anchor.bench.served_fake --port P --size N``; it talks
without pause until SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from anchor.bench.streams import fake_anchor, keep_talking
from anchor.core.aio import cancel_and_wait
from streams.server import WebRtcServer
from streams.settings import WebRtcSettings

SESSION = "bench"


async def serve(port: int, size: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with fake_anchor(size) as session:
        server = WebRtcServer(
            WebRtcSettings(port=port, max_peers=256), {SESSION: session}, default_session=SESSION
        )
        await server.start()
        talker = loop.create_task(keep_talking(session), name="bench:talk")
        try:
            await stop.wait()
        finally:
            await cancel_and_wait([talker], 5.0)
            await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.size))


if __name__ == "__main__":
    main()
