"""MQTT control against a real Mosquitto: auth, ACL, schemas, TTL, duplicates, oversize, broker restart."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import getpass
import ipaddress
import json
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from anchor.app.mqtt_control import SessionControl
from anchor.core.aio import cancel_and_wait
from anchor.core.commands import COMMANDS, Command, Say
from anchor.core.config import AnchorSettings
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.core.session import Session
from anchor.news.desk import DeskTiming, NewsDesk
from anchor.news.store import NewsQueue
from anchor.responders import SayResponder
from anchor.responders.answer import Responder
from anchor.testing.fakes import FakeTTS
from streams.mqtt import MqttControl, parse_message
from streams.settings import MqttSettings
from tests.helpers import free_port, port_opens

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)
pytestmark = pytest.mark.skipif(MOSQUITTO is None, reason="needs Debian's mosquitto (CI installs it)")

USERS = {
    "anchor": "anchor-pass",
    "newsroom": "newsroom-pass",
    "intruder": "intruder-pass",
    "dashboard": "dashboard-pass",
}
ACL = """user anchor
topic readwrite anchor/main/#

user newsroom
topic write anchor/main/cmd/#
topic read anchor/main/status
topic read anchor/main/events
topic read anchor/main/events/private

user dashboard
topic read anchor/main/status
topic read anchor/main/events

user intruder
topic read anchor/other/#
topic write anchor/other/#
"""


@dataclass
class Broker:
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [str(MOSQUITTO), "-c", str(self.directory / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not port_opens(self.port):
            raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    passwd = tmp_path / "passwd"
    passwd.touch()
    for user, password in USERS.items():
        subprocess.run(
            ["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True
        )
    passwd.chmod(0o600)
    (tmp_path / "acl").write_text(ACL)
    (tmp_path / "acl").chmod(0o600)
    port = free_port()
    (tmp_path / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwd}\n"
        f"acl_file {tmp_path / 'acl'}\npersistence false\n"
        f"user {getpass.getuser()}\n"  # run as root (CI), it would switch to 'mosquitto' and lose the files
    )
    b = Broker(port, tmp_path)
    b.start()
    try:
        yield b
    finally:
        b.stop()


@contextlib.asynccontextmanager
async def controlled_session(
    broker: Broker, news: Path | None = None
) -> AsyncIterator[tuple[Session, MqttControl]]:
    """A session under MQTT control; with ``news`` (a database path) it has a news desk and answers."""
    tts = FakeTTS("tts", ms_per_word=40)
    responder = Responder({}, "off")
    graph = Graph().chain(responder, tts).link(tts, AUDIO_OUT)
    settings = MqttSettings(
        url=f"mqtt://127.0.0.1:{broker.port}", username="anchor", password="anchor-pass",  # type: ignore[arg-type]
        reconnect_min_s=0.1, reconnect_max_s=0.5,
    )  # fmt: skip
    async with Runtime(AnchorSettings(media={"width": 32, "height": 32})) as rt:  # type: ignore[arg-type]
        session = await rt.open_session(graph, session_id="main")
        async with contextlib.AsyncExitStack() as stack:
            desk = None
            if news is not None:
                queue = NewsQueue(news, "main")
                await queue.open()
                stack.push_async_callback(queue.aclose)
                desk = NewsDesk(session, queue, DeskTiming(resume_after_s=0.2))
                task = asyncio.get_running_loop().create_task(desk.run())
                stack.push_async_callback(cancel_and_wait, [task], 2.0)
            target = SessionControl(session, desk=desk, responder=responder if news else None)
            control = MqttControl(settings, target)
            control.start()
            stack.push_async_callback(control.stop)
            async with asyncio.timeout(10):
                await control.connected.wait()
            yield session, control


def client(broker: Broker, user: str | None, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", broker.port, username=user, password=password or USERS.get(user or "", "")
    )


def command(**fields: Any) -> bytes:
    return json.dumps(
        {"id": f"c{time.monotonic_ns()}", "sent_at": time.time(), "ttl_s": 30, **fields}
    ).encode()


async def next_json(
    messages: AsyncIterator[aiomqtt.Message], topic: str, kind: str | None = None
) -> dict[str, Any]:
    async with asyncio.timeout(10):
        async for message in messages:
            data = json.loads(bytes(message.payload))  # type: ignore[arg-type]
            if str(message.topic) == topic and (kind is None or data.get("kind") == kind):
                return data  # type: ignore[no-any-return]
    raise AssertionError("no message")


async def test_anonymous_and_wrong_passwords_are_refused(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttCodeError):
        async with client(broker, None):
            pass
    with pytest.raises(aiomqtt.MqttCodeError):
        async with client(broker, "newsroom", "wrong"):
            pass


async def test_say_runs_and_status_and_events_flow(broker: Broker) -> None:
    async with controlled_session(broker) as (session, _), client(broker, "newsroom") as newsroom:
        await newsroom.subscribe([("anchor/main/status", 1), ("anchor/main/events", 1)])
        status = await next_json(newsroom.messages, "anchor/main/status")
        assert status["state"] == "online" and status["sessions"] == 1
        say = command(text="markets rose today")
        await newsroom.publish("anchor/main/cmd/say", say, qos=1)
        accepted = await next_json(newsroom.messages, "anchor/main/events", "accepted")
        assert accepted["command"] == json.loads(say)["id"] and accepted["result"].startswith("main/")
        started = await next_json(newsroom.messages, "anchor/main/events", "utterance_started")
        assert started["detail"] == "markets rose today"
        await next_json(newsroom.messages, "anchor/main/events", "utterance_finished")
        await newsroom.publish("anchor/main/cmd/mute", command(muted=True), qos=1)
        await next_json(newsroom.messages, "anchor/main/events", "accepted")
        assert session.muted


async def test_bad_commands_get_error_events_and_change_nothing(broker: Broker) -> None:
    async with controlled_session(broker) as (session, control), client(broker, "newsroom") as newsroom:
        await newsroom.subscribe("anchor/main/events", qos=1)
        cases = [
            ("say", b"{nope", "payload is not JSON"),
            ("say", command(text="hi", volume=3), "volume: Extra inputs are not permitted"),
            ("say", command(text=""), "text: String should have at least 1 character"),
            (
                "say",
                json.dumps({"id": "old", "sent_at": time.time() - 100, "ttl_s": 10, "text": "x"}).encode(),
                "expired",
            ),
            ("dance", command(), "unknown command 'dance'"),
            ("news/skip", command(), "session main has no news desk"),
            ("ask", command(text="why?"), "session main does not answer questions"),
            ("avatar", command(avatar="x"), "AvatarSwitch is not available in this anchor"),
            ("say", command(text="x" * 1000, pad="y" * 20_000), "exceeds 16384"),
            # 16 KB of nesting: the JSON parser's recursion limit, refused like any bad payload.
            ("say", b'{"text": ' + b"[" * 8000 + b"]" * 8000 + b"}", "payload nests JSON too deeply"),
            (
                "say",
                json.dumps(
                    {"id": "future", "sent_at": time.time() + 86_400, "ttl_s": 10, "text": "x"}
                ).encode(),
                "s in the future; clocks may differ by at most 60 s",
            ),
        ]
        for name, payload, message in cases:
            await newsroom.publish(f"anchor/main/cmd/{name}", payload, qos=1)
            error = await next_json(newsroom.messages, "anchor/main/events", "error")
            assert message in error["error"], (name, error)
        assert not session.utterances.live() and not session.muted
        assert control.connects == 1, "an oversized or bad command does not drop the connection"
        again = command(text="still here")
        for _ in range(2):  # QoS 1 may deliver twice: the second is not carried out
            await newsroom.publish("anchor/main/cmd/say", again, qos=1)
        accepted = await next_json(newsroom.messages, "anchor/main/events", "accepted")
        assert accepted["command"] == json.loads(again)["id"]
        await next_json(newsroom.messages, "anchor/main/events", "utterance_finished")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1.0):
                await next_json(newsroom.messages, "anchor/main/events", "accepted")


def garbage(rng: random.Random, count: int) -> list[tuple[str, bytes]]:
    """``count`` hostile ``(topic suffix, payload)`` pairs: bytes, nesting, wrong types, odd names, sizes."""
    names = [*COMMANDS, "", "x" * 300, "say/../mute", "news/", "\u00e9t\u00e9", "+", "#"]
    values: list[Any] = [None, True, -1, 1e308, "", "\u0000", "x" * 3000, [], {}, [[[]]], {"a": {"b": []}}]
    out = []
    for _ in range(count):
        name = rng.choice(names)
        kind = rng.randrange(5)
        if kind == 0:
            payload = rng.randbytes(rng.randrange(0, 400))
        elif kind == 1:
            depth = rng.randrange(100, 8000)
            payload = b'{"text": ' + b"[" * depth + b"]" * depth + b"}"
        elif kind == 2:
            fields = {
                rng.choice(
                    ["id", "sent_at", "ttl_s", "text", "muted", "priority", "title", "body", "z"]
                ): rng.choice(values)
                for _ in range(rng.randrange(1, 7))
            }
            payload = json.dumps(fields).encode()
        elif kind == 3:
            payload = command(
                **{rng.choice(["text", "muted", "reason", "item", "on_air"]): rng.choice(values)}
            )
        else:
            payload = b"x" * rng.choice([16 * 1024 + 1, 200_000])
        out.append((name, payload))
    return out


async def test_a_barrage_of_hostile_messages_leaves_the_plane_and_the_session_running(
    broker: Broker,
) -> None:
    async with controlled_session(broker) as (session, control), client(broker, "newsroom") as newsroom:
        await newsroom.subscribe("anchor/main/events", qos=1)
        for name, payload in garbage(random.Random(19), 200):
            topic = f"anchor/main/cmd/{name}".rstrip("/")
            if "+" in topic or "#" in topic:
                continue  # not a topic one may publish to
            await newsroom.publish(topic, payload, qos=1)
        good = command(text="the plane is still up")
        await newsroom.publish("anchor/main/cmd/say", good, qos=1)
        async with asyncio.timeout(30):
            while (event := await next_json(newsroom.messages, "anchor/main/events"))[
                "kind"
            ] != "accepted" or (event["command"] != json.loads(good)["id"]):
                assert event["kind"] in (
                    "error",
                    "accepted",
                    "utterance_started",
                    "utterance_finished",
                    "silence",
                )
        assert control.connects == 1 and control.connected.is_set()
        assert session.state == "running"


async def test_lines_past_what_the_session_holds_are_refused(broker: Broker) -> None:
    async with controlled_session(broker) as (session, _), client(broker, "newsroom") as newsroom:
        await newsroom.subscribe("anchor/main/events", qos=1)
        limit = session.settings.graph.max_live_utterances
        for n in range(limit + 1):
            await newsroom.publish("anchor/main/cmd/say", command(text=f"line {n} " + "word " * 40), qos=1)
        async with asyncio.timeout(20):
            while (event := await next_json(newsroom.messages, "anchor/main/events"))["kind"] != "error":
                pass
        assert event["error"] == f"session main already holds {limit} utterances; try again shortly"
        assert len(session.utterances.live()) == limit
        await session.interrupt()


async def test_a_viewers_question_goes_to_the_private_topic_only(broker: Broker, tmp_path: Path) -> None:
    async with (
        controlled_session(broker, tmp_path / "news.db") as (session, _),
        client(broker, "newsroom") as newsroom,
        client(broker, "dashboard") as dashboard,
    ):
        await dashboard.subscribe("anchor/main/#", qos=1)
        await newsroom.subscribe([("anchor/main/events", 1), ("anchor/main/events/private", 1)])
        asked = await session.ask("Is my bank account safe?", asker="ana")
        question = await next_json(newsroom.messages, "anchor/main/events/private", "question")
        assert (question["utterance"], question["detail"], question["asker"]) == (
            asked,
            "Is my bank account safe?",
            "ana",
        )
        await next_json(newsroom.messages, "anchor/main/events", "utterance_finished")
        seen = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in dashboard.messages:
                    seen.append((str(message.topic), json.loads(bytes(message.payload)).get("kind")))  # type: ignore[arg-type]
        assert ("anchor/main/events", "utterance_finished") in seen
        assert all("private" not in topic and kind != "question" for topic, kind in seen), seen


class FailingControl(SessionControl):
    """Carries commands out, except that ``say "boom"`` raises as a bug in the anchor would."""

    async def execute(self, command: Command) -> str:
        if isinstance(command, Say) and command.text == "boom":
            raise RuntimeError("a bug")
        return await super().execute(command)


async def test_a_failing_command_is_reported_and_a_clean_stop_says_offline(broker: Broker) -> None:
    settings = MqttSettings(url=f"mqtt://127.0.0.1:{broker.port}", username="anchor", password="anchor-pass")  # type: ignore[arg-type]
    async with Runtime(AnchorSettings(media={"width": 32, "height": 32})) as rt:  # type: ignore[arg-type]
        tts = FakeTTS("tts", ms_per_word=40)
        session = await rt.open_session(
            Graph().chain(SayResponder(), tts).link(tts, AUDIO_OUT), session_id="main"
        )
        control = MqttControl(settings, FailingControl(session))
        control.start()
        try:
            async with asyncio.timeout(10):
                await control.connected.wait()
            async with client(broker, "newsroom") as newsroom:
                await newsroom.subscribe("anchor/main/events", qos=1)
                boom = command(text="boom")
                await newsroom.publish("anchor/main/cmd/say", boom, qos=1)
                error = await next_json(newsroom.messages, "anchor/main/events", "error")
                assert error["command"] == json.loads(boom)["id"]
                assert error["error"] == "the anchor failed to carry it out: RuntimeError"
                await newsroom.publish("anchor/main/cmd/mute", command(muted=True), qos=1)
                assert (await next_json(newsroom.messages, "anchor/main/events", "accepted"))[
                    "result"
                ] == "muted"
                assert control.connects == 1
        finally:
            await control.stop()
    async with client(broker, "newsroom") as newsroom:
        await newsroom.subscribe("anchor/main/status", qos=1)
        status = await next_json(newsroom.messages, "anchor/main/status")
    assert status["state"] == "offline", "a clean stop leaves the retained status offline"


async def test_the_newsroom_runs_the_news_desk_over_mqtt(broker: Broker, tmp_path: Path) -> None:
    async with (
        controlled_session(broker, tmp_path / "news.db") as (session, _),
        client(broker, "newsroom") as room,
    ):
        await room.subscribe([("anchor/main/events", 1), ("anchor/main/status", 1)])
        await room.publish("anchor/main/cmd/news/air", command(on_air=False), qos=1)
        assert (await next_json(room.messages, "anchor/main/events", "accepted"))["result"] == "off air"
        story = command(title="Rates", body="The bank held rates. More at six.", priority=1)
        await room.publish("anchor/main/cmd/news/enqueue", story, qos=1)
        item = (await next_json(room.messages, "anchor/main/events", "accepted"))["result"]
        assert item.startswith("n-")
        await room.publish(
            "anchor/main/cmd/news/enqueue",
            command(title="Rates", body="The bank held rates. More at six."),
            qos=1,
        )
        again = await next_json(room.messages, "anchor/main/events", "accepted")
        assert again["result"] == f"{item} (already queued)"
        for name, payload, message in [
            ("news/skip", command(), "no news item is being read"),
            ("news/cue", command(item="n-unknown"), "news item 'n-unknown' cannot be cued: it is unknown"),
            ("responder", command(answer="gpt"), "unknown responder 'gpt'; choose one of off"),
            (
                "news/enqueue",
                command(title="t", body="b", priority=11),
                "priority: Input should be less than or equal to 10",
            ),
        ]:
            await room.publish(f"anchor/main/cmd/{name}", payload, qos=1)
            error = await next_json(room.messages, "anchor/main/events", "error")
            assert message in error["error"], (name, error)
        await room.publish("anchor/main/cmd/news/air", command(on_air=True), qos=1)
        read = [
            (await next_json(room.messages, "anchor/main/events", "utterance_started"))["detail"]
            for _ in range(3)
        ]
        assert read == ["Rates.", "The bank held rates.", "More at six."]
        status = await next_json(room.messages, "anchor/main/status")
        assert status["news"]["on_air"] is True
    assert not session.utterances.live()


async def test_acl_keeps_other_users_out(broker: Broker) -> None:
    async with controlled_session(broker) as (session, _), client(broker, "intruder") as intruder:
        await intruder.subscribe("anchor/main/#", qos=1)
        await intruder.publish("anchor/main/cmd/say", command(text="hijack"), qos=1)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(aiter(intruder.messages)), 1.5)
        assert not session.utterances.live()


async def test_control_survives_a_broker_restart(broker: Broker) -> None:
    async with controlled_session(broker) as (_, control):
        broker.stop()
        async with asyncio.timeout(10):
            await control.down.wait()  # the client notices the loss on its own
        assert not control.connected.is_set()
        broker.start()
        async with asyncio.timeout(20):
            await control.connected.wait()
        assert control.connects == 2
        async with client(broker, "newsroom") as newsroom:
            await newsroom.subscribe("anchor/main/events", qos=1)
            await newsroom.publish("anchor/main/cmd/say", command(text="back on air"), qos=1)
            accepted = await next_json(newsroom.messages, "anchor/main/events", "accepted")
            assert accepted["result"].startswith("main/")


def test_parse_command_is_precise_without_a_broker() -> None:
    now = time.time()
    ok = parse_message("interrupt", command(reason="breaking news"), 1024, now)
    assert ok.id.startswith("c")
    with pytest.raises(ValueError, match=r"id: String should match pattern"):
        parse_message(
            "interrupt", json.dumps({"id": "bad id!", "sent_at": now, "ttl_s": 5}).encode(), 1024, now
        )
    with pytest.raises(ValueError, match=r"ttl_s: Input should be less than or equal to 3600"):
        parse_message("interrupt", json.dumps({"id": "a", "sent_at": now, "ttl_s": 7200}).encode(), 1024, now)


def self_signed(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test ca")).issuer_name(name("test ca"))
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    server = (
        x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(2)
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


async def test_tls_with_a_password_connects_and_a_wrong_ca_is_refused(broker: Broker) -> None:
    ca, cert, key = self_signed(broker.directory)
    tls_port = free_port()
    conf = broker.directory / "mosquitto.conf"
    conf.write_text(
        conf.read_text() + f"listener {tls_port} 127.0.0.1\ncafile {ca}\ncertfile {cert}\nkeyfile {key}\n"
    )
    broker.stop()
    broker.start()
    tts = FakeTTS("tts", ms_per_word=40)
    graph = Graph().chain(SayResponder(), tts).link(tts, AUDIO_OUT)
    url = f"mqtts://anchor:anchor-pass@127.0.0.1:{tls_port}"
    async with Runtime(AnchorSettings(media={"width": 32, "height": 32})) as rt:  # type: ignore[arg-type]
        session = await rt.open_session(graph, session_id="main")
        control = MqttControl(MqttSettings(url=url, ca_file=str(ca)), SessionControl(session))
        control.start()
        try:
            async with asyncio.timeout(10):
                await control.connected.wait()
        finally:
            await control.stop()
        stranger = MqttControl(
            MqttSettings(url=url, reconnect_min_s=0.1, reconnect_max_s=0.2), SessionControl(session)
        )
        stranger.start()
        try:
            async with asyncio.timeout(10):
                await stranger.down.wait()
            assert stranger.connects == 0, "a server certificate from an unknown CA is refused"
            assert "certificate" in stranger.last_error.lower(), stranger.last_error
        finally:
            await stranger.stop()
