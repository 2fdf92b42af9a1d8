from __future__ import annotations

from pathlib import Path

import pytest

from anchor.app.settings import AppSettings, load_settings
from anchor.core.config import ConfigError


def test_defaults_live_in_one_place() -> None:
    s = load_settings()
    assert s == AppSettings()
    assert s.media.sample_rate == 48000 and s.media.audio_frame_samples == 960


def test_toml_then_environment_then_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "anchor.toml"
    cfg.write_text("[media]\nfps = 30\nwidth = 640\n[graph]\naudio_channel_ms = 300\n")
    monkeypatch.setenv("ANCHOR_MEDIA__FPS", "50")
    s = load_settings(cfg)
    assert (s.media.fps, s.media.width, s.graph.audio_channel_ms) == (50, 640, 300)
    s = load_settings(cfg, runtime={"worker_threads": 2})
    assert s.runtime.worker_threads == 2


def test_precise_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[media]\nfps = 0\nfsp = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    text = str(err.value)
    assert str(cfg) in text
    assert "media.fps: Input should be greater than or equal to 1 (got 0)" in text
    assert "media.fsp: Extra inputs are not permitted" in text

    with pytest.raises(ConfigError, match=r"config file not found: .*missing\.toml"):
        load_settings(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[media\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        load_settings(broken)

    monkeypatch.setenv("ANCHOR_MEDIA__SAMPLE_RATE", "12345")
    with pytest.raises(ConfigError, match="sample_rate 12345 is not a supported audio rate"):
        load_settings()


def test_video_budget_must_cover_audio_lookahead() -> None:
    with pytest.raises(ConfigError, match=r"video_channel_ms \(300\) must exceed audio_channel_ms \(400\)"):
        load_settings(graph={"video_channel_ms": 300})


def test_the_face_driver_is_gan_by_default_and_checked() -> None:
    assert load_settings().face.driver == "gan"
    assert load_settings(face={"driver": "animator"}).face.driver == "animator"
    with pytest.raises(ConfigError, match=r"face\.driver: Input should be 'gan' or 'animator'"):
        load_settings(face={"driver": "puppet"})
