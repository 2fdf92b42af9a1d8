"""The cluster: workers and a gateway over a real Mosquitto (MQTT v5) and a real PostgreSQL.

On loopback (in this process): a session is started through the gateway and
relayed to the worker; refusals are precise (no room, bad token, bad body)
and start nothing; a worker's retained status and last will. In network
namespaces (root; CI runs as root): three workers, each its own host, on
fake models; one killed with SIGKILL, one cut off; every session comes back
elsewhere with no news sentence lost or read twice, and the cut-off worker
does not run its session again once its link is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from playwright.async_api import async_playwright

from anchor.app.gateway import Gateway
from anchor.app.settings import AppSettings
from anchor.app.worker import Programme, Worker
from anchor.bench.cluster import Audience, cluster_rig, measure_cluster
from anchor.bench.cluster_worker import fake_programme
from anchor.bench.netns import netns_available
from anchor.core.aio import cancel_and_wait
from anchor.news.database import open_database
from anchor.news.registry import SessionRegistry
from anchor.testing.postgres import postgres_bin
from streams.auth import TokenAuthority
from streams.server import WebRtcServer
from tests.helpers import free_port, port_opens, until

SECRET = "cluster-test-secret-" + "x" * 32
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def _missing() -> str | None:
    if MOSQUITTO is None:
        return "mosquitto is not installed"
    if postgres_bin() is None:
        return "PostgreSQL is not installed"
    return None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[int]:
    if (why := _missing()) is not None:
        if os.environ.get("ANCHOR_TEST_REQUIRE_CLUSTER"):
            pytest.fail(why)
        pytest.skip(why)
    assert MOSQUITTO is not None
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    process = subprocess.Popen(
        [MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        assert port_opens(port), "mosquitto did not start"
        yield port
    finally:
        process.kill()
        process.wait(timeout=10)


def cluster_settings(broker: int, database: str, **cluster: Any) -> AppSettings:
    return AppSettings.model_validate(
        {
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker}"},
            "news": {"database": database, "resume_after_s": 0.3},
            "webrtc": {"port": 0, "jwt_secret": SECRET, "dev_open": False},
            "media": {"width": 256, "height": 256, "fps": 15},
            "cluster": {"capacity": 1, "worker_id": "w-test", **cluster},
        }
    )


def token(session: str, grants: set[str] | None = None) -> dict[str, str]:
    issued = TokenAuthority(SECRET.encode()).issue("tester", session, grants or {"watch", "talk", "control"})  # type: ignore[arg-type]
    return {"Authorization": f"Bearer {issued}"}


@contextlib.asynccontextmanager
async def running_worker(settings: AppSettings) -> AsyncIterator[Worker]:
    async with running_given(Worker(settings, fake_programme(256))) as worker:
        yield worker


@contextlib.asynccontextmanager
async def running_given(worker: Worker) -> AsyncIterator[Worker]:
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.get_running_loop().create_task(worker.run(lambda _: started.set(), stop))
    try:
        async with asyncio.timeout(30):
            await asyncio.wait(
                [task, asyncio.ensure_future(started.wait())], return_when=asyncio.FIRST_COMPLETED
            )
        if task.done():
            task.result()
        yield worker
    finally:
        stop.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(20):
                await asyncio.shield(task)
        await cancel_and_wait([task], 5.0)


@contextlib.asynccontextmanager
async def gateway_for(settings: AppSettings) -> AsyncIterator[Gateway]:
    gateway = Gateway(settings)
    await gateway.start()
    try:
        for _ in range(200):  # until the workers' retained status has come (10 s at most)
            if gateway.room() > 0:
                break
            await asyncio.sleep(0.05)
        yield gateway
    finally:
        await gateway.close()


async def test_a_session_starts_through_the_gateway_and_refusals_are_precise(
    broker: int, clean_postgres: str
) -> None:
    settings = cluster_settings(broker, clean_postgres)
    async with (
        running_worker(settings) as worker,
        gateway_for(settings) as gateway,
        aiohttp.ClientSession() as http,
    ):
        news = {"session": "desk-1", "title": "Storm", "body": "Winds rise. Stay in."}
        async with http.post(f"{gateway.url}/news", json=news) as response:
            assert response.status == 401, "no token, no session"
        async with http.post(
            f"{gateway.url}/news", json=news, headers=token("desk-1", {"watch"})
        ) as response:
            assert response.status == 403, await response.text()
        async with http.post(f"{gateway.url}/news", data=b"{not json", headers=token("desk-1")) as response:
            assert response.status == 400
        db = open_database(clean_postgres)
        await db.open()
        try:
            assert await SessionRegistry(db).lookup("desk-1") is None, "a refused request started nothing"
            async with http.post(f"{gateway.url}/news", json=news, headers=token("desk-1")) as response:
                assert response.status == 201, await response.text()
            holding = await SessionRegistry(db).lookup("desk-1")
        finally:
            await db.aclose()
        assert holding is not None
        assert (holding.holder, holding.url, holding.live) == (worker.holder, worker.url, True)
        assert "desk-1" in worker.state.hosted
        async with http.get(f"{gateway.url}/news?session=desk-1", headers=token("desk-1")) as response:
            listing = await response.json()
        assert [i["title"] for i in listing["pending"] + listing["recent"]] == ["Storm"]
        other = {**news, "session": "desk-2"}
        async with http.post(f"{gateway.url}/news", json=other, headers=token("desk-2")) as response:
            assert response.status == 503
            assert response.headers["Retry-After"]
            assert "no worker has room for session 'desk-2'" in (await response.json())["error"]
        async with http.delete(f"{gateway.url}/whep/desk-1/nobody", headers=token("desk-1")) as response:
            assert response.status == 404, "the worker's own answer comes back through the relay"
        async with http.get(f"{gateway.url}/metrics") as response:
            metrics = await response.text()
        assert 'anchor_gateway_requests_total{route="news-submit",status="201"} 1.0' in metrics
        assert "anchor_cluster_workers 1.0" in metrics


async def test_a_worker_announces_itself_retained_and_its_last_will_says_offline(
    broker: int, clean_postgres: str
) -> None:
    settings = cluster_settings(broker, clean_postgres, worker_id="w-status")
    topic = "anchor/cluster/workers/w-status/status"

    async def retained() -> dict[str, Any]:
        async with aiomqtt.Client("127.0.0.1", broker, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic, qos=1)
            async with asyncio.timeout(5):
                async for message in client.messages:
                    return dict(json.loads(bytes(message.payload)))  # type: ignore[arg-type]
        raise AssertionError("no retained status")

    async with running_worker(settings) as worker:
        async with asyncio.timeout(10):
            await worker.bus.connected.wait()
        status = await retained()
        assert (status["state"], status["capacity"], status["url"]) == ("online", 1, worker.url)
        assert status["incarnation"] == worker.incarnation
    status = await retained()
    assert (status["state"], status["incarnation"]) == ("offline", worker.incarnation), "a clean stop says so"


async def test_a_malformed_start_request_is_ignored_and_the_worker_keeps_serving(
    broker: int, clean_postgres: str
) -> None:
    settings = cluster_settings(broker, clean_postgres, worker_id="w-bad")
    async with (
        running_worker(settings) as worker,
        gateway_for(settings) as gateway,
        aiohttp.ClientSession() as http,
    ):
        async with aiomqtt.Client("127.0.0.1", broker, protocol=aiomqtt.ProtocolVersion.V5) as client:
            for payload in (
                b"not json",
                b'{"session": "../etc"}',
                b'{"session": "a", "extra": 1}',
                b"[" * 5000,
            ):
                await client.publish("anchor/cluster/sessions/start", payload, qos=1)
        await asyncio.sleep(0.3)
        assert worker.state.hosted == {}
        news = {"session": "desk-3", "title": "After", "body": "Still here."}
        async with http.post(f"{gateway.url}/news", json=news, headers=token("desk-3")) as response:
            assert response.status == 201, await response.text()


async def test_a_worker_stops_a_session_that_moved_to_another_worker(
    broker: int, clean_postgres: str
) -> None:
    """Fencing from the worker's side: once the registry gives its session a newer epoch (another worker
    took it), its next renewal fails and it stops the session here; its reading position stays put."""
    settings = cluster_settings(broker, clean_postgres, worker_id="w-moved", capacity=2)
    async with (
        running_worker(settings) as worker,
        gateway_for(settings) as gateway,
        aiohttp.ClientSession() as http,
    ):
        body = " ".join(f"Sentence {n} is long enough." for n in range(30))
        news = {"session": "m-1", "title": "Moving", "body": body}
        async with http.post(f"{gateway.url}/news", json=news, headers=token("m-1")) as response:
            assert response.status == 201
        db = open_database(clean_postgres)
        await db.open()
        try:
            await until(lambda: worker.state.hosted["m-1"].desk.current is not None, 10, "reading begins")
            await db.execute(
                "UPDATE anchor_sessions SET epoch = epoch + 1, holder = 'elsewhere/1', lease_until = lease_until + 60 "
                "WHERE id = 'm-1'"
            )
            position = await db.fetchone("SELECT sentence FROM news_items WHERE session = 'm-1'")
            await until(lambda: "m-1" not in worker.state.hosted, 5, "the worker stops the moved session")
            await asyncio.sleep(settings.cluster.renew_s * 2)
            assert await db.fetchone("SELECT sentence FROM news_items WHERE session = 'm-1'") == position
        finally:
            await db.aclose()


async def test_a_session_slower_to_open_than_its_lease_keeps_it(broker: int, clean_postgres: str) -> None:
    """Real models take seconds to load (TensorRT builds, minutes): the lease is renewed from the claim on,
    so the watchdog does not take a session for lost while it opens. (It did: a real worker stopped
    every session it started, its lease stale from the claim.)"""
    settings = cluster_settings(broker, clean_postgres, worker_id="w-slow", lease_s=1.0, renew_s=0.25)
    fake = fake_programme(256)

    def slow() -> Programme:
        time.sleep(2.5)  # in the worker's thread, as a model load would be
        return fake()

    worker = Worker(settings, slow)
    async with running_given(worker), gateway_for(settings) as gateway, aiohttp.ClientSession() as http:
        news = {"session": "slow-1", "title": "Slow", "body": "It opens slowly. Then it reads."}
        async with http.post(f"{gateway.url}/news", json=news, headers=token("slow-1")) as response:
            assert response.status == 201, await response.text()
        await asyncio.sleep(2.0)  # two leases on
        assert "slow-1" in worker.state.hosted and not worker.state.hosted["slow-1"].lease.lost
        db = open_database(clean_postgres)
        await db.open()
        holding = await SessionRegistry(db).lookup("slow-1")
        await db.aclose()
        assert holding is not None and holding.live and holding.holder == worker.holder


async def test_a_draining_worker_hands_its_session_over_and_the_news_goes_on(
    broker: int, clean_postgres: str
) -> None:
    """SIGTERM's drain (here: the worker's stop event) finishes the line, releases the session, and another
    worker starts it at once: every sentence is read once, across the two."""
    first = cluster_settings(broker, clean_postgres, worker_id="w-old")
    second = cluster_settings(broker, clean_postgres, worker_id="w-new")
    audience = Audience()
    connected = asyncio.Event()
    listener = asyncio.get_running_loop().create_task(audience.listen("127.0.0.1", connected, port=broker))
    try:
        async with contextlib.AsyncExitStack() as stack, aiohttp.ClientSession() as http:
            old = await stack.enter_async_context(running_worker(first))
            gateway = await stack.enter_async_context(gateway_for(first))
            await asyncio.wait_for(connected.wait(), 10)
            body = " ".join(f"Sentence {n} goes on." for n in range(12))
            news = {"session": "h-1", "title": "Handover", "body": body}
            async with http.post(f"{gateway.url}/news", json=news, headers=token("h-1")) as response:
                assert response.status == 201
            async with running_worker(second) as new:
                await until(lambda: "w-new" in gateway.workers, 10, "the new worker is online")
                await asyncio.sleep(3.0)  # a few sentences on the old worker
                await stack.aclose()  # the old worker drains and stops
                assert "h-1" not in old.state.hosted
                await until(lambda: "h-1" in new.state.hosted, 5, "the new worker takes the session over")
                db = open_database(clean_postgres)
                await db.open()
                holding = await SessionRegistry(db).lookup("h-1")
                await db.aclose()
                assert holding is not None and holding.holder == new.holder and holding.epoch == 2
                await until(
                    lambda: new.state.hosted["h-1"].desk.current is None, 40, "the item is read to its end"
                )
    finally:
        await cancel_and_wait([listener], 5.0)
    readings = audience.finished("h-1")
    expected = ["Handover.", *(f"Sentence {n} goes on." for n in range(12))]
    assert {text: len(readings.get(text, [])) for text in expected} == dict.fromkeys(expected, 1), readings
    assert {e["worker"] for e in audience.events if e["session"] == "h-1"} == {"w-old", "w-new"}


@pytest.mark.timeout(300)
async def test_sessions_come_back_elsewhere_after_a_kill_and_a_cut_link_with_no_news_lost_or_read_twice(
    tmp_path: Path,
) -> None:
    """Three worker hosts (network namespaces), three sessions reading news, one audio viewer each through
    the gateway. Liveness bounds only (20 s, 30 s): the targets are the bench's (``anchor bench cluster``)."""
    why = netns_available() or _missing()
    if why is not None:
        if os.environ.get("ANCHOR_TEST_REQUIRE_CLUSTER"):
            pytest.fail(why)
        pytest.skip(why)
    with cluster_rig(logs=tmp_path) as rig:
        result = await measure_cluster(rig, sessions=3, items=2, sentences=6)
    assert result["failover_sigkill_s"] is not None, "the killed worker's session never spoke again"
    assert result["failover_cut_link_s"] is not None, "the cut-off worker's session never spoke again"
    assert result["cut_worker_after_restore"]["still_speaking"] == [], (
        "a duplicate ran after the link came back"
    )
    assert result["news"] == {"sentences": 3 * 2 * 7, "lost": 0, "repeated": 0, "all_read": True}, result.get(
        "news_detail"
    )
    assert result["session_start_s"]["n"] == 3 + 4
    assert result["offer_ms"]["gateway"]["n"] == 20


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AUDIO_ENERGY = """async () => {
  if (!window.anchorPeer) return 0;
  let energy = 0;
  (await window.anchorPeer.getStats()).forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "audio") energy = r.totalAudioEnergy || 0;
  });
  return energy;
}"""


async def hears_speech(page: Any, timeout_s: float) -> None:
    """Until the page's current connection has received speech (audio energy, not silence)."""
    async with asyncio.timeout(timeout_s):
        while await page.evaluate(AUDIO_ENERGY) <= 0.01:  # noqa: ASYNC110 - polls the browser
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def worker_processes(
    broker: int, database: str, count: int, logs: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """``count`` fake-model workers on loopback, each its own process (so one can be killed)."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in range(count):
            env = {
                **os.environ,
                "ANCHOR_MQTT__URL": f"mqtt://127.0.0.1:{broker}",
                "ANCHOR_NEWS__DATABASE": database,
                "ANCHOR_WEBRTC__PORT": str(free_port()),
                "ANCHOR_CLUSTER__WORKER_ID": f"w{n}",
                "ANCHOR_CLUSTER__CAPACITY": "1",
            }
            with open(logs / f"w{n}.log", "wb") as log:
                processes[f"w{n}"] = subprocess.Popen(
                    [sys.executable, "-m", "anchor.bench.cluster_worker"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        yield processes
    finally:
        for process in processes.values():
            process.kill()
            process.wait(timeout=10)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (CI installs it)")
@pytest.mark.timeout(180)
async def test_the_page_follows_its_session_to_another_worker_after_a_sigkill(
    broker: int, clean_postgres: str, tmp_path: Path
) -> None:
    """Chromium watches a session through the gateway; its worker is killed; the page joins again by itself
    and hears the news go on from the worker that took the session over."""
    assert CHROMIUM is not None
    settings = AppSettings.model_validate(
        {
            "mqtt": {"url": f"mqtt://127.0.0.1:{broker}"},
            "news": {"database": clean_postgres},
            "webrtc": {"port": 0},
        }
    )
    with worker_processes(broker, clean_postgres, 2, tmp_path) as workers:
        async with (
            gateway_for(settings) as gateway,
            aiohttp.ClientSession() as http,
            async_playwright() as pw,
        ):
            for _ in range(300):  # both workers online (their start-up loads the face: seconds)
                if gateway.room() == 2:
                    break
                await asyncio.sleep(0.1)
            body = " ".join(f"Sentence {n} of the story goes on." for n in range(40))
            news = {"session": "live-1", "title": "A long story", "body": body}
            async with http.post(f"{gateway.url}/news", json=news) as response:
                assert response.status == 201, await response.text()
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"]
            )
            try:
                page = await browser.new_page()
                await page.goto(f"{gateway.url}/?autostart&session=live-1")
                await hears_speech(page, 30)
                await page.evaluate("window.firstPeer = window.anchorPeer")
                db = open_database(clean_postgres)
                await db.open()
                holding = await SessionRegistry(db).lookup("live-1")
                await db.aclose()
                assert holding is not None
                victim = holding.holder.split("/")[0]
                workers[victim].kill()
                killed = asyncio.get_running_loop().time()
                await page.wait_for_function(
                    "window.anchorPeer && window.anchorPeer !== window.firstPeer", timeout=60_000, polling=200
                )
                await hears_speech(page, 30)
                back_after_s = asyncio.get_running_loop().time() - killed
                status = await page.locator("#status").inner_text()
            finally:
                await browser.close()
    assert status == "connected", status
    print(f"chromium hears the session again {back_after_s:.1f} s after its worker was killed")


async def test_a_gateway_without_its_broker_is_not_ready_and_says_why(clean_postgres: str) -> None:
    settings = AppSettings.model_validate(
        {
            "mqtt": {"url": f"mqtt://127.0.0.1:{free_port()}"},
            "news": {"database": clean_postgres},
            "webrtc": {"port": 0},
        }
    )
    gateway = Gateway(settings)
    await gateway.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{gateway.url}/readyz") as response:
                assert response.status == 503
                assert (await response.json())["broker"] is False
            news = {"session": "nowhere", "title": "t", "body": "b."}
            async with http.post(f"{gateway.url}/news", json=news) as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "2"
                assert (await response.json())[
                    "error"
                ] == "the gateway is not connected to the cluster's broker"
    finally:
        await gateway.close()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["worker"], "anchor worker needs mqtt.url"),
        (
            ["gateway", "--mqtt", "mqtt://127.0.0.1:1", "--database", "postgresql://anchor@127.0.0.1:1/x"],
            "cannot be reached",
        ),
    ],
)
def test_the_cluster_commands_refuse_a_missing_broker_or_database_clearly(
    argv: list[str], message: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "anchor", *argv], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_the_gateway_serves_every_route_of_the_anchor_it_relays_to() -> None:
    """The page and API through a gateway are the anchor's: a route added to one and not the other fails
    here (fan-out and drain are a worker's own: Janus per worker, preStop on its pod)."""
    settings = AppSettings.model_validate({"mqtt": {"url": "mqtt://127.0.0.1:1883"}})
    served = {
        (r.method, r.resource.canonical)
        for r in WebRtcServer(settings.webrtc, {}, default_session="main").app.router.routes()
    }
    relayed = {(r.method, r.resource.canonical) for r in Gateway(settings).app.router.routes()}
    own = {route for route in served if route[1].startswith(("/fanout", "/drain"))}
    assert served - own == relayed
