"""Test hosts on one machine: Linux network namespaces joined by veth pairs to a bridge.

Each host is a namespace with its own address on a private /24 (the bridge
holds ``.1``, so this process reaches every host); ``cut`` takes a host's
link down (its traffic is dropped, as when a cable is pulled) and
``restore`` brings it back. Needs root (CAP_NET_ADMIN) and iproute2. Names
carry a random run id, so two runs never collide; ``close`` removes every
namespace, link and process it made, and so does leaving the ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class NetnsUnavailable(RuntimeError):
    """This machine cannot make test hosts (not root, or no iproute2)."""


def netns_available() -> str | None:
    """None when test hosts can be made here, else why not."""
    if shutil.which("ip") is None:
        return "iproute2's ip is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {done.stderr.strip()}")


@dataclass
class Host:
    name: str
    namespace: str
    address: str
    link: str  # the bridge side of its veth pair
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def prefix(self) -> list[str]:
        """Run a command on this host."""
        return ["ip", "netns", "exec", self.namespace]

    def start(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, log: Path | None = None
    ) -> subprocess.Popen[bytes]:
        """A process on this host (killed on ``close``); its output goes to ``log``."""
        out: IO[bytes] | int = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            process = subprocess.Popen(
                [*self.prefix, *argv], env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )
        finally:
            if not isinstance(out, int):
                out.close()
        self.processes.append(process)
        return process


class TestNetwork:
    """A bridge and hosts on it; use as a context manager."""

    __test__ = False  # not a pytest class

    def __init__(self) -> None:
        if (why := netns_available()) is not None:
            raise NetnsUnavailable(why)
        self.run_id = secrets.token_hex(2)
        self.subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        self.bridge = f"anbr{self.run_id}"
        self.gateway_address = f"{self.subnet}.1"
        self.hosts: dict[str, Host] = {}

    def __enter__(self) -> TestNetwork:
        _ip("link", "add", self.bridge, "type", "bridge")
        try:
            _ip("addr", "add", f"{self.gateway_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        except NetnsUnavailable:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> Host:
        index = len(self.hosts)
        namespace = f"an{self.run_id}-{name}"
        link = f"anv{self.run_id}{index}"
        host = Host(name, namespace, f"{self.subnet}.{index + 2}", link)
        self.hosts[name] = host
        _ip("netns", "add", namespace)
        _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", namespace)
        _ip("link", "set", link, "master", self.bridge)
        _ip("link", "set", link, "up")
        _ip("-n", namespace, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        return host

    def cut(self, name: str) -> None:
        """Pull ``name``'s cable: nothing in or out, and no one is told."""
        _ip("link", "set", self.hosts[name].link, "down")

    def restore(self, name: str) -> None:
        _ip("link", "set", self.hosts[name].link, "up")

    def close(self) -> None:
        for host in self.hosts.values():
            for process in host.processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGKILL)
                    process.wait(timeout=10)
            for pid in _pids_in(host.namespace):
                _kill(pid)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True, timeout=10)
            subprocess.run(["ip", "link", "del", host.link], capture_output=True, timeout=10)
        self.hosts.clear()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True, timeout=10)


def _pids_in(namespace: str) -> list[int]:
    """Processes still in ``namespace`` (daemons such as PostgreSQL's, which left their parent)."""
    done = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True, timeout=10)
    return [int(p) for p in done.stdout.split()]


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
