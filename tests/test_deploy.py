"""deploy/: the Dockerfile, compose.yaml, the Kubernetes manifests and the broker's ACLs, checked as CI can.

Linters we did not write judge the files (hadolint, yamllint, kubernetes-validate
on what kustomize renders); then what the files say of the anchor is checked
against the anchor itself: every command line parses with its CLI, every
``ANCHOR_*`` variable and config file names real settings, every probe is a
route the server serves. The Mosquitto config runs in a real broker, whose ACLs
are tried user by user. No container runtime is needed (CI has none).
"""

from __future__ import annotations

import asyncio
import getpass
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from anchor.app.cli import build_parser
from anchor.app.gateway import Gateway
from anchor.app.settings import AppSettings, load_settings
from anchor.core.metrics import Metrics
from streams.server import WebRtcServer
from tests.helpers import free_port, port_opens

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin")


def tool(name: str) -> str:
    """A linter installed beside this interpreter (`make install`; kustomize: `make test`)."""
    path = shutil.which(name, path=str(BIN))
    assert path is not None, f"{name} is not installed in {BIN}: run make install / make test"
    return path


def run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def rendered(overlay: str) -> list[dict[str, Any]]:
    return [
        doc for doc in yaml.safe_load_all(run(tool("kustomize"), "build", f"deploy/k8s/{overlay}")) if doc
    ]


def setting_exists(env_name: str) -> bool:
    """Whether ``ANCHOR_A__B`` names the field ``a.b`` of the application's settings."""
    model: Any = AppSettings
    for part in env_name.removeprefix("ANCHOR_").lower().split("__"):
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return False
        model = fields[part].annotation
    return True


def parses(argv: list[str]) -> None:
    """``argv`` (after ``anchor``) is a command line our CLI accepts."""
    build_parser().parse_args(argv)


@pytest.mark.parametrize("dockerfile", ["deploy/Dockerfile", "deploy/janus/Dockerfile"])
def test_the_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    run(tool("hadolint"), "--config", ".hadolint.yaml", dockerfile)


def test_every_yaml_file_passes_yamllint() -> None:
    run(tool("yamllint"), "--strict", "-c", ".yamllint.yaml", "deploy/")


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu", "cluster"])
def test_the_rendered_manifests_are_valid_kubernetes(overlay: str, tmp_path: Path) -> None:
    manifests = tmp_path / "manifests.yaml"
    manifests.write_text(run(tool("kustomize"), "build", f"deploy/k8s/{overlay}"))
    run(tool("kubernetes-validate"), "--strict", "--quiet", str(manifests))


@pytest.fixture
def deployed_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the Secret (Kubernetes) or the environment (compose) gives the anchor."""
    monkeypatch.setenv("ANCHOR_WEBRTC__JWT_SECRET", "a-secret-of-at-least-32-bytes-for-tests")


@pytest.mark.parametrize("overlay", ["base", "overlays/gpu"])
@pytest.mark.usefixtures("deployed_secrets")
def test_the_manifests_say_what_the_anchor_does(overlay: str, tmp_path: Path) -> None:
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered(overlay)}
    pod = docs[("Deployment", "anchor")]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    parses(container["args"])
    prestop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert prestop[0] == "anchor"
    parses(prestop[1:])
    routes = {r.resource.canonical for r in served_routes() if r.method == "GET"}
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes
    for env in container["env"]:
        if env["name"].startswith("ANCHOR_"):
            assert setting_exists(env["name"]), f"{env['name']} is no setting"
    config = tmp_path / "anchor.toml"
    config.write_text(docs[("ConfigMap", "anchor-config")]["data"]["anchor.toml"])
    settings = load_settings(config)
    assert settings.webrtc.drain_grace_s < pod["terminationGracePeriodSeconds"], (
        "a drain ends before the kill"
    )
    if overlay == "overlays/gpu":
        assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
        assert container["image"].endswith(":cuda")


@pytest.mark.usefixtures("deployed_secrets")
def test_the_cluster_manifests_say_what_the_worker_and_the_gateway_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers and gateways as deploy/k8s/cluster runs them: their commands parse, their probes are routes
    each serves, their variables are settings, the HPA scales workers on a metric they export."""
    docs = {(d["kind"], d["metadata"]["name"]): d for d in rendered("cluster")}
    config = tmp_path / "anchor.toml"
    config.write_text(docs[("ConfigMap", "anchor-cluster-config")]["data"]["anchor.toml"])
    monkeypatch.setenv("ANCHOR_MQTT__URL", "mqtt://broker:1883")
    monkeypatch.setenv("ANCHOR_NEWS__DATABASE", "postgresql://anchor@db/anchor")  # not connected to here
    settings = load_settings(config)
    routes = {
        "worker": {r.resource.canonical for r in served_routes() if r.method == "GET"},
        "gateway": {r.resource.canonical for r in Gateway(settings).app.router.routes() if r.method == "GET"},
    }
    for role in ("worker", "gateway"):
        pod = docs[("Deployment", f"anchor-{role}")]["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        parses(container["args"])
        assert container["args"][-1] == role
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in routes[role]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in routes[role]
        names = {env["name"] for env in container["env"]}
        assert {"ANCHOR_MQTT__URL", "ANCHOR_NEWS__DATABASE", "ANCHOR_WEBRTC__JWT_SECRET"} <= names
        for name in names - {"HOME", "POD_IP", "POD_NAME"}:
            assert setting_exists(name), f"{name} is no setting"
    worker = docs[("Deployment", "anchor-worker")]["spec"]["template"]["spec"]
    (container,) = worker["containers"]
    parses(container["lifecycle"]["preStop"]["exec"]["command"][1:])
    assert settings.webrtc.drain_grace_s < worker["terminationGracePeriodSeconds"]
    hpa = docs[("HorizontalPodAutoscaler", "anchor-worker")]["spec"]
    (metric,) = hpa["metrics"]
    assert metric["pods"]["metric"]["name"] == "anchor_sessions"
    target = float(metric["pods"]["target"]["averageValue"].removesuffix("m")) / 1000
    assert 0 < target < settings.cluster.capacity, "workers are added before they are full"
    assert "\nanchor_sessions " in Metrics(10).prometheus_text(), "every runtime (a worker's too) exports it"


def served_routes() -> list[Any]:
    server = WebRtcServer(
        AppSettings().webrtc, {}, default_session="main", load=lambda: 0.0, drops=lambda: 0.0
    )
    return list(server.app.router.routes())


@pytest.mark.usefixtures("deployed_secrets")
def test_compose_runs_the_anchor_as_its_files_say() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) >= {"anchor", "mosquitto", "coturn", "prometheus", "janus"}
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"compose mounts {source}, which deploy/ does not hold"
    anchor = services["anchor"]
    parses(anchor["command"])
    for name in anchor["environment"]:
        assert setting_exists(name), f"{name} is no setting"
    settings = load_settings(DEPLOY / "anchor.toml")
    assert settings.webrtc.drain_grace_s < int(anchor["stop_grace_period"].removesuffix("s"))
    janus_http = (DEPLOY / "janus" / "janus.transport.http.jcfg").read_text()
    assert settings.fanout.mode == "janus"
    assert settings.fanout.janus_url == "http://127.0.0.1:8088/janus" and "port = 8088" in janus_http
    assert 'ip = "127.0.0.1"' in janus_http, "Janus's API is for the anchor only"
    assert (DEPLOY / services["janus"]["build"]["context"] / "Dockerfile").exists()
    scrape = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = scrape["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [
        f"host.docker.internal:{settings.webrtc.port}"
    ]


@pytest.fixture
def acl_broker(tmp_path: Path) -> Iterator[int]:
    """The broker as compose runs it: deploy/mosquitto's config and ACLs, passwords written by its start.sh."""
    if MOSQUITTO is None:
        pytest.fail("needs Debian's mosquitto (CI installs it)")
    port = free_port()
    config = (DEPLOY / "mosquitto" / "mosquitto.conf").read_text()
    config = config.replace("/mosquitto/data/passwd", str(tmp_path / "passwd"))
    config = config.replace("/mosquitto/config/acl", str(DEPLOY / "mosquitto" / "acl"))
    config = config.replace("/mosquitto/data/", f"{tmp_path}/")
    config = re.sub(r"^listener 1883$", f"listener {port} 127.0.0.1", config, flags=re.M)
    config += f"user {getpass.getuser()}\n"  # as root it would switch to 'mosquitto' and lose the files
    (tmp_path / "mosquitto.conf").write_text(config)
    env = {
        **os.environ,
        "PATH": f"{os.environ['PATH']}:{Path(MOSQUITTO).parent}",
        "MQTT_ANCHOR_PASSWORD": "anchor-pw",
        "MQTT_NEWSROOM_PASSWORD": "newsroom-pw",
        "MQTT_MONITOR_PASSWORD": "monitor-pw",
        "MOSQUITTO_PASSWD_FILE": str(tmp_path / "passwd"),
        "MOSQUITTO_CONFIG": str(tmp_path / "mosquitto.conf"),
    }
    broker = subprocess.Popen(
        ["sh", str(DEPLOY / "mosquitto" / "start.sh")],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert port_opens(port), "the broker did not start"
        yield port
    finally:
        broker.terminate()
        broker.wait(10)


def client(port: int, user: str | None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1", port, username=user, password=f"{user}-pw" if user else None, timeout=5
    )


@pytest.fixture
async def anchor_inbox(acl_broker: int) -> AsyncIterator[tuple[int, asyncio.Queue[str]]]:
    """The anchor's login, subscribed to its commands; what reaches it lands in the queue."""
    got: asyncio.Queue[str] = asyncio.Queue()
    async with client(acl_broker, "anchor") as anchor:
        await anchor.subscribe("anchor/main/cmd/#", qos=1)

        async def read() -> None:
            async for message in anchor.messages:
                got.put_nowait(f"{message.topic} {bytes(message.payload or b'').decode()}")

        reader = asyncio.get_running_loop().create_task(read())
        try:
            yield acl_broker, got
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)


async def test_the_brokers_acls_keep_each_user_to_its_topics(
    anchor_inbox: tuple[int, asyncio.Queue[str]],
) -> None:
    port, inbox = anchor_inbox
    with pytest.raises(aiomqtt.MqttError):
        async with client(port, None):
            pass  # anonymous clients are refused
    async with client(port, "monitor") as monitor:  # may not command: the broker drops it
        await monitor.publish("anchor/main/cmd/say", b'{"text": "from the monitor"}', qos=1)
    async with client(port, "newsroom") as newsroom:
        await newsroom.publish("anchor/main/cmd/say", b'{"text": "from the newsroom"}', qos=1)
    async with asyncio.timeout(5):
        assert await inbox.get() == 'anchor/main/cmd/say {"text": "from the newsroom"}'
    assert inbox.empty(), "the monitor's command never reached the anchor"

    heard: dict[str, list[str]] = {"newsroom": [], "monitor": []}
    async with client(port, "newsroom") as newsroom, client(port, "monitor") as monitor:
        for listener in (newsroom, monitor):
            await listener.subscribe("anchor/main/events/#", qos=1)
            await listener.subscribe("anchor/main/events", qos=1)

        async def listen(name: str, listener: aiomqtt.Client) -> None:
            async for message in listener.messages:
                heard[name].append(str(message.topic))

        tasks = [
            asyncio.get_running_loop().create_task(listen(n, c))
            for n, c in (("newsroom", newsroom), ("monitor", monitor))
        ]
        async with client(port, "anchor") as anchor:
            await anchor.publish("anchor/main/events/private", b'{"kind": "question"}', qos=1)
            await anchor.publish("anchor/main/events", b'{"kind": "utterance_started"}', qos=1)
        async with asyncio.timeout(5):
            while len(heard["newsroom"]) < 2 or not heard["monitor"]:  # noqa: ASYNC110 - filled by listeners
                await asyncio.sleep(0.05)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    assert sorted(heard["newsroom"]) == ["anchor/main/events", "anchor/main/events/private"]
    assert heard["monitor"] == ["anchor/main/events"], "viewers' own words never reach a monitor"
