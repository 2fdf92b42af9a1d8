"""Loopback ICE: let aiortc offer 127.0.0.1 as a host candidate.

aioice leaves the loopback address out of its host candidates, so a peer
that can only reach this machine over loopback (a browser on the same host
in a sandbox without a network, a test) never connects. A loopback-bound
server turns this on for its process. It is a process-wide switch on
aioice's module, made once and idempotent.
"""

from __future__ import annotations

from aioice import ice

_original = ice.get_host_addresses


def _with_loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    addresses = _original(use_ipv4, use_ipv6)
    return [*addresses, "127.0.0.1"] if use_ipv4 and "127.0.0.1" not in addresses else addresses


def allow_loopback_candidates() -> None:
    ice.get_host_addresses = _with_loopback
