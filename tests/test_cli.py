from __future__ import annotations

import json
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from anchor.app.cli import main


def test_help_lists_the_subcommands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "anchor", "--help"], check=True, capture_output=True, text=True
    ).stdout
    for command in ("config", "demo", "bench"):
        assert command in out


def test_bench_graph_prints_percentiles_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "graph", "--json", "--rounds", "5", "--warmup", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("overhead_first_audio_ms", "interrupt_to_silence_ms"):
        stats = result[key]
        assert stats["n"] == 5
        assert 0 <= stats["p50"] <= stats["p95"] <= stats["max"]
    assert {"responder", "tts"} <= set(result["stage_ms"])


def test_demo_records_paced_speech(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wav = tmp_path / "demo.wav"
    assert main(["demo", "one two three", "four five", "-o", str(wav), "--tail", "0.1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["outcome"] for s in result["spans"]] == ["done", "done"]
    with wave.open(str(wav)) as w:
        assert w.getframerate() == 48000 and w.getnchannels() == 1
        seconds = w.getnframes() / w.getframerate()
    # five words of 120 ms each, plus the idle tail: the recording is the paced program.
    assert seconds >= 0.6
    assert result["recorded_frames"] == w.getnframes() // 960


def test_config_errors_exit_2_with_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[graph]\nstage_timeout_s = -1\n")
    assert main(["--config", str(cfg), "config"]) == 2
    err = capsys.readouterr().err
    assert "graph.stage_timeout_s: Input should be greater than 0 (got -1)" in err


def test_config_prints_effective_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config"]) == 0
    assert json.loads(capsys.readouterr().out)["media"]["fps"] == 25


def test_vocode_rejects_a_mel_of_the_wrong_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((2, 40, 9), np.float32))
    assert main(["vocode", str(bad), "-o", str(tmp_path / "o.wav")]) == 2
    assert "must be shaped [80, T] or [1, 80, T], got [2, 40, 9]" in capsys.readouterr().err
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((80, 5), np.nan, np.float32))
    assert main(["vocode", str(nan), "-o", str(tmp_path / "o.wav")]) == 2
    assert "must hold finite floats" in capsys.readouterr().err
    assert not (tmp_path / "o.wav").exists()


def test_say_with_the_mel_voice_uses_our_acoustic_model_and_refuses_a_bad_checkpoint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.wav"
    assert main(["say", "Hello there.", "--voice", "mel", "-o", str(out)]) == 0
    assert out.stat().st_size > 10_000
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    assert (
        main(["say", "Hello", "--voice", "mel", "--checkpoint", str(bad), "-o", str(tmp_path / "b.wav")]) == 2
    )
    assert "bad.pt" in capsys.readouterr().err
    assert not (tmp_path / "b.wav").exists()


def test_transcribe_reads_any_pcm_wav_and_refuses_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from anchor.app.offline import read_wav

    path = tmp_path / "stereo24.wav"
    t = np.arange(4410) / 44100
    left = (np.sin(2 * np.pi * 440 * t) * 0.5 * 2**23).astype("<i4")
    frames = np.stack([left, -left], 1).reshape(-1)
    raw = b"".join(int(v & 0xFFFFFF).to_bytes(3, "little") for v in frames)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(3)
        w.setframerate(44100)
        w.writeframes(raw)
    audio, rate = read_wav(path)
    assert rate == 44100 and audio.shape == (4410, 2)
    assert abs(float(audio[:, 0].max()) - 0.5) < 1e-3 and abs(float(audio[:, 1].min()) + 0.5) < 1e-3
    text = tmp_path / "notes.wav"
    text.write_text("not audio")
    assert main(["transcribe", str(text)]) == 2
    assert "is not a readable PCM WAV file" in capsys.readouterr().err


PASSWORD = "hunter2-broker-password"
SECRET = "a-jwt-secret-of-more-than-32-bytes-0123456789"


def test_secrets_never_reach_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANCHOR_MQTT__URL", f"mqtt://anchor:{PASSWORD}@broker.example:1883")
    monkeypatch.setenv("ANCHOR_WEBRTC__JWT_SECRET", SECRET)
    assert main(["config"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["mqtt"]["url"] == "mqtt://anchor:***@broker.example:1883"
    assert shown["webrtc"]["jwt_secret"] in ("***", "**********")
    monkeypatch.setenv("ANCHOR_WEBRTC__JWT_SECRET", SECRET[:20])  # too short: refused
    assert main(["config"]) == 2
    refused = capsys.readouterr().err
    assert "jwt_secret must be at least 32 bytes" in refused
    monkeypatch.delenv("ANCHOR_WEBRTC__JWT_SECRET")
    monkeypatch.delenv("ANCHOR_MQTT__URL")
    assert main(["run", "--port", "0", "--mqtt", f"ftp://anchor:{PASSWORD}@broker.example"]) == 2
    refused += capsys.readouterr().err
    assert "mqtt://host[:port]" in refused and "ftp://anchor:***@broker.example" in refused
    assert PASSWORD not in refused and SECRET[:20] not in refused, refused


def test_token_issues_what_the_server_accepts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.auth import AuthError, TokenAuthority

    monkeypatch.delenv("ANCHOR_WEBRTC__JWT_SECRET", raising=False)
    assert main(["token"]) == 2
    assert "no webrtc.jwt_secret is configured" in capsys.readouterr().err
    monkeypatch.setenv("ANCHOR_WEBRTC__JWT_SECRET", SECRET)
    assert (
        main(["token", "--grants", "watch,talk", "--session", "studio", "--subject", "ana", "--ttl", "5m"])
        == 0
    )
    token = capsys.readouterr().out.strip()
    authority = TokenAuthority(SECRET.encode())
    claims = authority.verify(f"Bearer {token}", session="studio", need="talk")
    assert claims.subject == "ana" and claims.grants == {"watch", "talk"}
    assert 290 <= claims.expires_at - time.time() <= 300
    with pytest.raises(AuthError, match="does not grant 'control'"):
        authority.verify(f"Bearer {token}", session="studio", need="control")
    for bad, message in (
        (["--ttl", "11m"], "token lifetime must be 1..600 s"),
        (["--grants", "root"], "--grants takes"),
    ):
        assert main(["token", *bad]) == 2
        assert message in capsys.readouterr().err
