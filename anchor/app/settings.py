"""The whole process's settings: the runtime's (``anchor.core.config``) and the network edges'.

The runtime and its stages read ``AnchorSettings``; only the application knows
the edges, so only it adds their sections (WebRTC, fan-out, MQTT, cluster) and reads the
operator's file, the ``ANCHOR_*`` environment and overrides into one object.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anchor.core.config import AnchorSettings
from anchor.core.config import load_settings as load_schema
from streams.settings import ClusterSettings, FanoutSettings, MqttSettings, WebRtcSettings


class AppSettings(AnchorSettings):
    webrtc: WebRtcSettings = WebRtcSettings()
    fanout: FanoutSettings = FanoutSettings()
    mqtt: MqttSettings = MqttSettings()
    cluster: ClusterSettings = ClusterSettings()


def load_settings(path: Path | None = None, **overrides: Any) -> AppSettings:
    """Validated settings from ``path`` (TOML), the environment and ``overrides``; ``ConfigError`` if bad."""
    return load_schema(path, schema=AppSettings, **overrides)
