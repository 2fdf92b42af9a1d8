"""Settings of the network edges: the WebRTC server (ICE servers, access rules), fan-out, MQTT control and
the cluster (workers and gateways over the broker)."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from anchor.core.redaction import redact_url

MIN_SECRET_BYTES = 32


class IceServer(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    urls: list[str] = Field(min_length=1, description="stun:/turn:/turns: URLs")
    username: str | None = None
    credential: SecretStr | None = None

    @model_validator(mode="after")
    def _turn_needs_credentials(self) -> IceServer:
        for url in self.urls:
            if not url.startswith(("stun:", "turn:", "turns:")):
                raise ValueError(f"ICE server URL {url!r} must start with stun:, turn: or turns:")
            if url.startswith("turn") and (self.username is None or self.credential is None):
                raise ValueError(f"TURN server {url!r} needs a username and a credential")
        return self

    def public(self) -> dict[str, object]:
        """The form a browser's ``RTCPeerConnection`` takes."""
        out: dict[str, object] = {"urls": self.urls}
        if self.username is not None and self.credential is not None:
            out |= {"username": self.username, "credential": self.credential.get_secret_value()}
        return out


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class FanoutSettings(BaseModel):
    """How viewers who only watch get the program: direct (an encode each, here) or through Janus."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["direct", "janus"] = Field(
        "direct",
        description=(
            "direct: every viewer is a peer of this process; janus: the program is published once into a "
            "Janus VideoRoom and watching viewers subscribe there (talking viewers stay direct)."
        ),
    )
    janus_url: str = Field(
        "http://127.0.0.1:8088/janus", description="Janus's HTTP API (keep it on a private address)."
    )
    janus_admin_key: SecretStr | None = Field(
        None, description="The VideoRoom's admin_key, when Janus requires one to create rooms."
    )
    connect_timeout_s: float = Field(10.0, gt=0, le=120, description="The program's connection to Janus.")
    republish_min_s: float = Field(0.2, gt=0, description="First retry after losing Janus (full jitter).")
    republish_max_s: float = Field(5.0, gt=0, le=300, description="Longest wait between retries.")


class WebRtcSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(8080, ge=0, le=65535, description="0 picks a free port.")
    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers for peers; none on loopback."
    )
    jwt_secret: SecretStr | None = Field(
        None, description=f"HS256 secret for offer tokens (>= {MIN_SECRET_BYTES} bytes); needed off loopback."
    )
    dev_open: bool = Field(
        True,
        description=(
            "Loopback only: accept requests without a token (watch, talk and control), from pages on a "
            "loopback name (127.0.0.1, [::1], localhost) or one of open_hosts; any other Host or Origin "
            "needs a token, so a page on a name that resolves to 127.0.0.1 cannot drive the anchor."
        ),
    )
    show_questions: bool = Field(
        False,
        description=(
            "Show viewers' questions and what the recognizer heard to every viewer of the session; off, "
            "they reach only the viewer who asked (or, for a microphone, the viewers who may talk) and MQTT."
        ),
    )
    open_hosts: list[str] = Field(
        default_factory=list,
        description="Further host names the open dev server trusts (e.g. a local alias).",
    )
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=1024 * 1024)
    offers_per_minute: int = Field(
        30,
        ge=1,
        description="Admitted POSTs per minute per client address and token subject (bad ones are free).",
    )
    max_peers: int = Field(64, ge=1, description="Live peer connections at most, over all sessions.")
    max_fanout_viewers: int = Field(
        10000,
        ge=1,
        description="Subscriptions this server relays into the SFU at most (fanout.mode = janus).",
    )
    max_cpu_load: float = Field(
        0.8,
        gt=0,
        le=1,
        description=(
            "Admit a new viewer only while the CPU load (the larger of this process's share of its CPUs and "
            "the machine's busy share, 5 s average) plus that viewer's predicted cost stays below this: each "
            "viewer is an encode here, and past saturation every viewer drops frames (anchor bench streams: "
            "viewers held 25 fps without audio gaps up to a load of 0.79 and gapped at 0.85)."
        ),
    )
    admit_max_drops_per_s: float = Field(
        1.0,
        ge=0,
        description=(
            "Admit a new viewer only while the viewers here drop fewer video frames than this per second "
            "together (5 s average): a viewer below 24 of 25 fps drops one a second."
        ),
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A new connection must have sent its request headers by then."
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=300, description="A request body must arrive in full this long after its headers."
    )
    drain_grace_s: float = Field(
        30.0,
        ge=0,
        le=3600,
        description=(
            "On SIGTERM: new viewers and lines are refused at once, and the line being spoken may finish "
            "for up to this long before the viewers are closed (keep it below the supervisor's kill timeout)."
        ),
    )
    keepalive_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="An idle keep-alive connection is closed after this long."
    )
    connect_timeout_s: float = Field(
        15.0, gt=0, le=120, description="An answered offer whose connection is not up by then is closed."
    )
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to post offers.")
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list,
        description=(
            "Addresses or networks (10.0.0.0/8) whose X-Forwarded-For header names the client (a cluster's "
            "gateways): the rate limit then counts each viewer, not the gateway."
        ),
    )
    video_frames_buffered: int = Field(
        4, ge=1, le=100, description="Per viewer, before the oldest is dropped."
    )
    audio_ms_buffered: float = Field(200.0, ge=40.0, le=5000.0, description="Per viewer audio backlog.")

    @model_validator(mode="after")
    def _secret_off_loopback(self) -> WebRtcSettings:
        secret = self.jwt_secret.get_secret_value().encode() if self.jwt_secret else b""
        if secret and len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"jwt_secret must be at least {MIN_SECRET_BYTES} bytes, got {len(secret)}")
        if not is_loopback(self.host) and not secret:
            raise ValueError(
                f"host {self.host!r} is not loopback: set jwt_secret (>= {MIN_SECRET_BYTES} bytes); "
                "open access is only for a loopback-only dev server"
            )
        return self

    @property
    def open_access(self) -> bool:
        """Offers without a token are accepted: loopback only, and only when asked for."""
        return self.dev_open and is_loopback(self.host)


class MqttSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str | None = Field(None, description="mqtt://[user:pass@]host[:port] or mqtts://…; None: MQTT off")
    username: str | None = None
    password: SecretStr | None = None
    ca_file: str | None = Field(None, description="CA bundle for mqtts (default: the system's)")
    anchor_id: str = Field("main", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    client_id: str | None = None
    max_payload_bytes: int = Field(16 * 1024, ge=256, le=1024 * 1024)
    keepalive_s: int = Field(30, ge=5, le=600)
    reconnect_min_s: float = Field(
        0.5, gt=0, description="Backoff after the first failure: a delay drawn from [0, this)."
    )
    reconnect_max_s: float = Field(30.0, gt=0, description="Backoff ceiling: the delay is never longer.")
    status_every_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _url(self) -> MqttSettings:
        if self.reconnect_min_s > self.reconnect_max_s:
            raise ValueError(
                f"reconnect_min_s ({self.reconnect_min_s:g}) must not exceed reconnect_max_s "
                f"({self.reconnect_max_s:g})"
            )
        if self.url is not None:
            parts = urlsplit(self.url)
            if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
                shown = redact_url(self.url)
                raise ValueError(f"MQTT url must be mqtt://host[:port] or mqtts://host[:port], got {shown!r}")
        return self

    def endpoint(self) -> tuple[str, int, bool, str | None, str | None]:
        """``(host, port, tls, username, password)``; credentials in the URL win."""
        assert self.url is not None
        parts = urlsplit(self.url)
        tls = parts.scheme == "mqtts"
        user = unquote(parts.username) if parts.username else self.username
        password = (
            unquote(parts.password)
            if parts.password
            else (self.password.get_secret_value() if self.password else None)
        )
        return str(parts.hostname), parts.port or (8883 if tls else 1883), tls, user, password


class ClusterSettings(BaseModel):
    """``anchor worker`` and ``anchor gateway``: sessions spread over workers through the MQTT broker
    (``mqtt.url``), their registry and news in ``news.database`` (a ``postgresql://`` URL)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    topic: str = Field(
        "anchor/cluster", pattern=r"^[A-Za-z0-9_/-]{1,100}$", description="Prefix of the cluster's topics."
    )
    group: str = Field(
        "anchor-workers",
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="The workers' MQTT v5 shared-subscription group: the broker gives each request to one.",
    )
    worker_id: str | None = Field(
        None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="This worker's name (default: the host name)."
    )
    capacity: int = Field(
        2,
        ge=1,
        le=1000,
        description=(
            "Sessions this worker runs at most: the number it holds at its targets on its hardware "
            "(anchor bench soak --sessions N: no audio gaps, 25 fps)."
        ),
    )
    advertise_url: str | None = Field(
        None,
        description="The URL gateways relay this worker's signalling to (default: http://<webrtc.host>:<port>).",
    )
    lease_s: float = Field(
        4.0, gt=0.5, le=600, description="A session's lease; another worker may take it once it runs out."
    )
    renew_s: float = Field(1.0, gt=0, le=300, description="How often a worker renews its leases.")
    sweep_s: float = Field(
        1.0, gt=0, le=300, description="How often a worker looks for sessions whose lease ran out."
    )
    keepalive_s: int = Field(
        2,
        ge=1,
        le=600,
        description="MQTT keepalive: a worker cut off is declared dead (its last will) after 1.5 times this.",
    )
    start_timeout_s: float = Field(
        10.0, gt=0, le=120, description="A gateway waits this long for a worker to start a session."
    )
    relay_timeout_s: float = Field(15.0, gt=0, le=120, description="A relayed request's whole round trip.")
    database_timeout_s: float = Field(
        2.0, gt=0, le=60, description="A registry or news call that takes longer counts as unreachable."
    )
    max_hops: int = Field(
        8, ge=1, le=100, description="A start request refused this many times is answered 'no room'."
    )

    @model_validator(mode="after")
    def _renew_within_lease(self) -> ClusterSettings:
        if self.renew_s * 2 > self.lease_s:
            raise ValueError(f"renew_s ({self.renew_s:g}) must be at most half of lease_s ({self.lease_s:g})")
        return self
