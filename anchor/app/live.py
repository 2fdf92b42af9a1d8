"""``anchor run``: the anchor you can watch and hear in a browser, on the embedded defaults.

One runtime, one session (``main``): what it is told to say goes through the
default voice and the default face, paced at the edge (idle life included),
and out over WebRTC to every viewer of the page. The news desk reads the
durable queue (fed from the page, MQTT or a scripts folder); a viewer who
speaks interrupts it and gets an answer from the chosen responder, after
which the desk goes on where it stopped. On a loopback-only dev
server without a configured secret, a secret is made for this run and a
ready-to-use viewer URL with a token (watch, talk, control) is printed.
With ``mqtt.url`` set (``--mqtt``), the newsroom controls it over MQTT too;
``--record FILE.mp4`` and ``--rtmp URL`` send the same program to an archive
and a broadcast ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Gauge
from pydantic import SecretStr

from anchor.app.mqtt_control import SessionControl
from anchor.app.settings import AppSettings
from anchor.core.aio import TaskOwner
from anchor.core.config import AnchorSettings, ConfigError, ResponderSettings
from anchor.core.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.core.session import Session
from anchor.core.stage import Stage
from anchor.face.drivers import DriverName, face_driver
from anchor.face.face_stage import FaceStage
from anchor.face.look import PortraitLook
from anchor.face.portrait import Portrait, default_image, fit, make_portrait
from anchor.listen.recognizer import SpeechRecognizer
from anchor.news.desk import DeskTiming, NewsDesk
from anchor.news.scripts import ScriptFeed
from anchor.news.store import NewsError, NewsQueue
from anchor.responders.answer import AnswererFactory, Responder
from anchor.responders.faq import FaqError, faq_answerer
from anchor.responders.llm import llm_answerer
from anchor.speech.voices import Voice, resolve_voice
from streams.auth import TokenAuthority
from streams.fanout import JanusPublisher
from streams.mqtt import MqttControl
from streams.recorder import ProgramRecorder
from streams.server import WebRtcServer
from streams.settings import is_loopback

log = logging.getLogger(__name__)

SESSION = "main"


def anchor_graph(
    portrait: Portrait, fps: int, responder: Stage, voice: Voice, face: DriverName = "gan"
) -> Graph:
    """Say/Ask -> responder -> ``voice`` -> program audio, and -> the ``face`` driver -> program video.

    Viewer audio (the page's talk button) goes to the speech recognizer: the
    viewer starting to speak interrupts the anchor (barge-in), and what was
    said becomes a ``transcript`` event (shown on the page, sent over MQTT)
    and, in a session that answers transcripts, a question for ``responder``.
    """
    speech = voice.stages()
    stage = FaceStage(face_driver(face, portrait), fps=fps)
    graph = Graph().add(SpeechRecognizer()).chain(responder, *speech).link(speech[-1], AUDIO_OUT)
    return graph.add(stage).link(speech[-1], stage).link(stage, VIDEO_OUT)


def live_responder(settings: ResponderSettings) -> Responder:
    """Scripts verbatim; questions to ``settings.answer`` (``faq``, ``llm`` or ``off``)."""
    factories: dict[str, AnswererFactory] = {"faq": faq_answerer, "llm": llm_answerer}
    return Responder(factories, settings.answer, memory_turns=settings.llm.memory_turns)


def default_portrait(settings: AnchorSettings) -> Portrait:
    media = settings.media
    return make_portrait(fit(default_image(), (media.width, media.height)))


@dataclass(frozen=True)
class LiveAnchor:
    runtime: Runtime
    server: WebRtcServer
    token: str | None
    desk: NewsDesk

    @property
    def viewer_url(self) -> str:
        return f"{self.server.url}/?autostart" + (f"&token={self.token}" if self.token else "")


def with_run_secret(settings: AppSettings) -> AppSettings:
    """A loopback dev server without a secret gets a fresh one for this run (so a token can be printed)."""
    webrtc = settings.webrtc
    if webrtc.jwt_secret is not None or not is_loopback(webrtc.host):
        return settings
    secret = SecretStr(secrets.token_urlsafe(32))
    return settings.model_copy(update={"webrtc": webrtc.model_copy(update={"jwt_secret": secret})})


async def serve(
    settings: AppSettings,
    ready: Callable[[LiveAnchor], Awaitable[None]],
    *,
    outputs: Sequence[Path | str] = (),
    stop: asyncio.Event | None = None,
) -> None:
    """Run the anchor until cancelled, or until ``stop`` is set and it has drained; ``ready`` is awaited
    once viewers can connect.

    The page, ``/healthz`` and ``/metrics`` are served before the models load, so a supervisor sees a
    live process at once; ``/readyz`` turns 200 when the session is up. ``outputs``: MP4 files and
    ``rtmp://`` URLs that get the program too.
    """
    settings = with_run_secret(settings)
    portrait = await asyncio.to_thread(default_portrait, settings)
    voice = await asyncio.to_thread(resolve_voice, settings)
    responder = live_responder(settings.responder)
    # Each part is released (in reverse order) however far start-up got: a port in use, a bad broker.
    async with Runtime(settings) as runtime, contextlib.AsyncExitStack() as parts:
        server = WebRtcServer(settings.webrtc, {}, default_session=SESSION, registry=runtime.metrics.registry)
        parts.push_async_callback(server.close)
        try:
            await server.start()
        except OSError as exc:
            where = f"{settings.webrtc.host}:{settings.webrtc.port}"
            raise ConfigError(f"cannot serve the viewer page on {where}: {exc.strerror}") from None
        session = await runtime.open_session(
            anchor_graph(portrait, settings.media.fps, responder, voice, settings.face.driver),
            session_id=SESSION,
            look=PortraitLook(portrait),
            answer_transcripts=True,
        )
        queue = NewsQueue(settings.news.database, SESSION)
        await queue.open()
        parts.push_async_callback(queue.aclose)
        desk = NewsDesk(session, queue, DeskTiming(resume_after_s=settings.news.resume_after_s))
        desk.on_air = settings.news.on_air
        owner = TaskOwner(
            "live",
            settings.graph.cancel_timeout_s,
            lambda name, exc: session.announce("error", f"{name} failed: {type(exc).__name__}: {exc}"),
        )
        parts.push_async_callback(owner.aclose)
        owner.spawn(desk.run(), "news-desk")
        if settings.news.scripts is not None:
            owner.spawn(ScriptFeed(desk, settings.news.scripts, settings.news.poll_s).run(), "news-scripts")
        control_target = SessionControl(session, desk=desk, responder=responder)
        server.on_drain = lambda: no_new_lines(control_target, desk)
        if server.draining:  # a drain asked for while the models loaded reaches the desk and MQTT too
            server.on_drain()
        if settings.mqtt.url:
            control = MqttControl(settings.mqtt, control_target)
            control.start()
            parts.push_async_callback(control.stop)
            registry = runtime.metrics.registry
            connected = Gauge(
                "anchor_mqtt_connected", "1 while connected to the MQTT broker.", registry=registry
            )
            connected.set_function(lambda: float(control.connected.is_set()))
        media = settings.media
        for target in outputs:
            recorder = ProgramRecorder(
                session.subscribe(audio_ms=2000, video_frames=2 * media.fps),
                target,
                width=media.width,
                height=media.height,
                fps=media.fps,
                sample_rate=media.sample_rate,
            )
            parts.push_async_callback(recorder.stop)
            await recorder.start()
        fanout = None
        if settings.fanout.mode == "janus":
            fanout = JanusPublisher(session, settings.fanout, name=SESSION)
            fanout.start()
            parts.push_async_callback(fanout.stop)
        server.add_session(SESSION, session, desk, fanout)
        secret = settings.webrtc.jwt_secret
        token = None
        if secret is not None:
            authority = TokenAuthority(secret.get_secret_value().encode())
            token = authority.issue("console", SESSION, {"watch", "talk", "control"})
        await ready(LiveAnchor(runtime, server, token, desk))
        await (stop or asyncio.Event()).wait()
        await drain(server, session, settings.webrtc.drain_grace_s)
        try:  # the desk is off air: its last sentence's place is written before the process goes
            async with asyncio.timeout(5.0):
                await desk.parked()
        except TimeoutError:
            log.warning("drain: the news desk's last place was not recorded in time")


def no_new_lines(control: SessionControl, desk: NewsDesk) -> None:
    """What a drain stops besides the server: MQTT lines, and the desk after the sentence it reads."""
    control.draining = True
    if desk.on_air:
        desk.set_on_air(False)


async def drain(server: WebRtcServer, session: Session, grace_s: float) -> None:
    """Refuse new viewers and lines, let the line being spoken finish (news resumes after it on the
    next start), for at most ``grace_s``; the viewers here watch until then. A drain already begun by
    ``POST /drain`` (a preStop hook) just goes on."""
    if not server.draining:
        server.drain()
    log.info("draining: %d line(s) to finish, at most %.0f s", session.live_lines(), grace_s)
    events = session.events()
    try:
        async with asyncio.timeout(grace_s):
            while session.live_lines() and await events.next() is not None:
                pass
    except TimeoutError:
        log.warning("drain: %d line(s) still live after %.0f s; cutting them", session.live_lines(), grace_s)
    finally:
        events.close()


async def while_serving(settings: AppSettings, check: Callable[[LiveAnchor], Awaitable[None]]) -> None:
    """Serve the anchor, await ``check`` once it is ready, then shut it down; errors of either re-raised."""
    checked = asyncio.Event()

    async def ready(live: LiveAnchor) -> None:
        await check(live)
        checked.set()

    loop = asyncio.get_running_loop()
    task = loop.create_task(serve(settings, ready), name="anchor:serve")
    waiter = loop.create_task(checked.wait(), name="anchor:checked")
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        waiter.cancel()
        outcome, _ = await asyncio.gather(task, waiter, return_exceptions=True)
    if isinstance(outcome, Exception):
        raise outcome


def run_forever(settings: AppSettings, outputs: Sequence[Path | str] = ()) -> int:
    """``anchor run``: serve until Ctrl-C or SIGTERM, then shut down cleanly."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stop = asyncio.Event()

        def terminate() -> None:  # the first SIGTERM drains; another stops at once
            if stop.is_set():
                task.cancel()
            stop.set()

        loop.add_signal_handler(signal.SIGINT, task.cancel)
        loop.add_signal_handler(signal.SIGTERM, terminate)

        async def announce(live: LiveAnchor) -> None:
            print(f"anchor is live: open {live.viewer_url}", flush=True)
            if live.token:
                print("the token in that URL is valid for 10 minutes (watch, talk, control)", flush=True)

        await serve(settings, announce, outputs=outputs, stop=stop)

    try:
        with suppress(asyncio.CancelledError, KeyboardInterrupt):
            asyncio.run(main())
    except (NewsError, FaqError) as exc:  # a news database or FAQ file that cannot be used
        raise ConfigError(str(exc)) from None
    print("anchor stopped", flush=True)
    return 0
