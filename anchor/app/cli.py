"""The ``anchor`` command line.

argparse stops at this edge: arguments become typed settings and plain
values before anything else runs.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from pydantic import ValidationError

from anchor.app.settings import AppSettings, load_settings
from anchor.core.config import ConfigError, describe
from anchor.core.redaction import redacted

if TYPE_CHECKING:
    from engines.spec import EngineSpec
from anchor.bench.cli import add_bench_parser
from anchor.train.cli import add_train_parser
from engines.errors import WeightsError


def _settings(args: argparse.Namespace) -> AppSettings:
    path: Path | None = args.config
    return load_settings(path)


def _cmd_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(redacted(settings.model_dump(mode="json")), indent=2))
    return 0


def _duration_s(text: str) -> int:
    """``90``, ``90s``, ``10m`` or ``1h`` -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text and text[-1] in units else (text, "s")
    try:
        return round(float(number) * units[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"a duration is N, Ns, Nm or Nh, got {text!r}") from None


def _cmd_token(args: argparse.Namespace) -> int:
    from streams.auth import GRANTS, TokenAuthority

    secret = _settings(args).webrtc.jwt_secret
    if secret is None:
        raise ConfigError(
            "no webrtc.jwt_secret is configured (ANCHOR_WEBRTC__JWT_SECRET or [webrtc] in the config file): "
            "tokens are signed with the secret the server checks them with"
        )
    grants = {g.strip() for g in args.grants.split(",") if g.strip()}
    if not grants <= GRANTS:
        raise ConfigError(f"--grants takes {', '.join(sorted(GRANTS))}, got {args.grants!r}")
    try:
        token = TokenAuthority(secret.get_secret_value().encode()).issue(
            args.subject,
            args.session,
            grants,
            ttl_s=args.ttl,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    print(token)
    return 0


def _cmd_drain(args: argparse.Namespace) -> int:
    """Ask the anchor on this machine to drain; with ``--wait``, return once its lines are spoken."""
    import urllib.error
    import urllib.request

    base = f"http://{args.host}:{args.port}"

    def call(method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(f"{base}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return dict(json.load(response))
        except urllib.error.HTTPError as exc:
            raise ConfigError(
                f"{method} {base}{path} answered {exc.code}: {exc.read().decode()[:200]}"
            ) from None
        except OSError as exc:
            raise ConfigError(f"no anchor answers at {base}: {exc}") from None

    state = call("POST", "/drain")
    deadline = time.monotonic() + args.timeout
    while args.wait and state["live_lines"] and time.monotonic() < deadline:
        time.sleep(0.5)
        state = call("GET", "/healthz")
    print(json.dumps(state))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from anchor.app.demo import run_demo

    texts = args.text or [
        "Good evening. This is your virtual anchor, speaking in real time.",
        "On Tuesday, the central bank raised rates by 0.25%, to 4.5%.",
    ]
    settings = _section(_settings(args), "voice", "--voice/--vocoder", name=args.voice, vocoder=args.vocoder)
    result = asyncio.run(run_demo(settings, texts, args.out, tail_s=args.tail))
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "prometheus"}, indent=2))
        return 0
    print(f"wrote {result['wav']} ({result['recorded_frames']} audio frames)")
    for span in result["spans"]:
        marks = ", ".join(f"{k} {v:.1f}" for k, v in span.items() if k.endswith("_ms") and v is not None)
        print(f"  {span['utterance']}: {span['outcome']}; {marks}")
    if args.metrics:
        print(result["prometheus"])
    return 0


def _engine_specs(settings: AppSettings, only: list[str] | None = None) -> dict[str, EngineSpec]:
    from engines.registry import catalog

    specs = catalog(settings.engines)
    unknown = sorted(set(only or []) - set(specs))
    if unknown:
        raise ConfigError(f"unknown engine(s) {unknown}; known: {sorted(specs)}")
    return {k: v for k, v in specs.items() if not only or k in only}


def _print(result: dict[str, Any] | list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for row in result if isinstance(result, list) else [result]:
        print("  ".join(f"{k}={v}" for k, v in row.items() if not isinstance(v, dict | list)))
        for k, v in row.items():
            if isinstance(v, dict | list):
                print(f"    {k}: {json.dumps(v)}")


def _cmd_engines_list(args: argparse.Namespace) -> int:
    from engines.tools import list_engines

    settings = _settings(args)
    _print(list_engines(_engine_specs(settings), settings.engines), args.json)
    return 0


def _cmd_engines_build(args: argparse.Namespace) -> int:
    from engines.tools import build_engines

    settings = _settings(args)
    report = build_engines(_engine_specs(settings, args.engine), settings.engines)
    _print(report, args.json)
    return 0 if all(r.get("status") == "ok" for r in report) else 1


def _cmd_engines_bench(args: argparse.Namespace) -> int:
    from anchor.bench.engines import bench_engine

    settings = _settings(args)
    spec = _engine_specs(settings, [args.name])[args.name]
    try:
        batches = [int(b) for b in args.batch.split(",")]
        sizes = dict(item.split("=", 1) for item in args.size)
        axis_sizes = {k: int(v) for k, v in sizes.items()}
    except ValueError:
        raise ConfigError(
            f"--batch takes integers like 1,4,16 and --size AXIS=N, got {args.batch!r} {args.size}"
        ) from None
    result = bench_engine(
        spec,
        settings.engines,
        batches=batches,
        backend=args.backend,
        iterations=args.iterations,
        warmup=args.warmup,
        **axis_sizes,
    )
    _print(result, args.json)
    return 0


def _with_weights(settings: AppSettings, engine: str, path: Path | None) -> AppSettings:
    if path is None:
        return settings
    weights = {**settings.engines.weights, engine: path}
    return settings.model_copy(update={"engines": settings.engines.model_copy(update={"weights": weights})})


def _cmd_say(args: argparse.Namespace) -> int:
    from anchor.app.offline import join_audio, render_text, write_wav
    from anchor.core.frames import AudioChunk
    from anchor.core.runtime import Runtime
    from anchor.speech.voices import resolve_voice

    settings = _section(_settings(args), "voice", "--voice/--vocoder", name=args.voice, vocoder=args.vocoder)
    settings = _with_weights(settings, settings.voice.vocoder, args.vocoder_checkpoint)
    settings = _with_weights(settings, "tacotron2", args.checkpoint)
    stages = resolve_voice(settings, sigma=args.sigma, tacotron=args.checkpoint is not None).stages()

    async def render() -> list[AudioChunk]:
        async with Runtime(settings) as runtime:
            return await render_text(runtime, args.text, stages)

    chunks = asyncio.run(render())
    audio = join_audio(chunks)
    rate = settings.media.sample_rate
    write_wav(args.out, audio, settings.media.sample_rate)
    print(f"wrote {args.out}: {len(audio) / rate:.2f} s at {rate} Hz")
    return 0


def read_mel(path: Path, n_mels: int = 80) -> npt.NDArray[np.float32]:
    """A log-mel ``.npy`` shaped ``[n_mels, T]`` or ``[1, n_mels, T]``, or ``ConfigError`` saying why not."""
    try:
        mel = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read mel {path}: {exc}") from None
    if mel.ndim == 3 and mel.shape[0] == 1:
        mel = mel[0]
    if mel.ndim != 2 or mel.shape[0] != n_mels:
        raise ConfigError(
            f"mel {path} must be shaped [{n_mels}, T] or [1, {n_mels}, T], got {list(mel.shape)}"
        )
    if not np.issubdtype(mel.dtype, np.floating) or not np.isfinite(mel).all():
        raise ConfigError(f"mel {path} must hold finite floats (log-mel), got {mel.dtype}")
    if mel.shape[1] < 1:
        raise ConfigError(f"mel {path} has no frames")
    return np.ascontiguousarray(mel, dtype=np.float32)


def _cmd_vocode(args: argparse.Namespace) -> int:
    from anchor.app.offline import join_audio, run_stages, write_wav
    from anchor.core.frames import AudioChunk, EndOfUtterance, MelChunk
    from anchor.core.runtime import Runtime
    from anchor.speech.voices import resolve_voice

    settings = _section(_settings(args), "voice", "--vocoder", name="mel", vocoder=args.vocoder)
    settings = _with_weights(settings, settings.voice.vocoder, args.checkpoint)
    mel = read_mel(args.mel)
    stage = resolve_voice(settings, sigma=args.sigma).stages()[-1]

    async def render() -> list[AudioChunk]:
        frames = [
            MelChunk(mel=mel, sample_rate=22050, hop_length=256, utterance_id="vocode"),
            EndOfUtterance(utterance_id="vocode"),
        ]
        async with Runtime(settings) as runtime:
            return [f async for f in run_stages(runtime, [stage], frames) if isinstance(f, AudioChunk)]

    audio = join_audio(asyncio.run(render()))
    rate = settings.media.sample_rate
    write_wav(args.out, audio, rate)
    print(f"wrote {args.out}: {len(audio) / rate:.2f} s at {rate} Hz from {mel.shape[1]} mel frames")
    return 0


def _cmd_transcribe(args: argparse.Namespace) -> int:
    from anchor.app.offline import read_wav
    from anchor.core.frames import AudioChunk, SpeechStarted, Transcript
    from anchor.core.realtime import RealTimeClock, paced_chunks
    from anchor.core.runtime import Runtime
    from anchor.core.stage import StageContext
    from anchor.listen.audio_in import InputConditioner
    from anchor.listen.recognizer import SpeechRecognizer
    from engines.asr.ct2_whisper import CT2Whisper

    try:
        audio, rate = read_wav(args.file)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    settings = _settings(args)
    if not args.stream:
        speech = InputConditioner(16000)(AudioChunk(pcm=np.ascontiguousarray(audio), sample_rate=rate))
        if args.backend == "ctranslate2":
            result = CT2Whisper().recognize(speech)
        else:
            from engines.asr.whisper_parts import WhisperGreedy

            whisper = WhisperGreedy(settings.engines, args.backend)
            try:
                result = whisper.recognize(speech[: 30 * 16000])
            finally:
                whisper.close()
        words = [
            {"word": w.text, "start_ms": round(1000 * w.start_s), "end_ms": round(1000 * w.end_s)}
            for w in result.words
        ]
        if args.json:
            report = {"text": result.text, "words": words, "no_speech_prob": result.no_speech_prob}
            print(json.dumps({**report, "backend": args.backend}, indent=2))
        else:
            print(result.text)
        return 0

    async def stream() -> None:
        async with Runtime(settings) as runtime:
            stage = SpeechRecognizer()
            await stage.start(StageContext("transcribe", settings, runtime.executor, runtime.engines))
            clock = RealTimeClock(rate)  # 20 ms chunks, released at real-time pace like a microphone
            try:
                async for chunk in paced_chunks(audio, rate, clock=clock):
                    async for frame in stage.process(chunk):
                        at = f"{clock.elapsed():7.2f}s"
                        if isinstance(frame, SpeechStarted):
                            print(f"{at} speech started")
                        elif isinstance(frame, Transcript) and args.json:
                            print(
                                json.dumps(
                                    {
                                        "at_s": round(clock.elapsed(), 3),
                                        "final": frame.final,
                                        "text": frame.text,
                                        "start_ms": frame.start_ms,
                                        "end_ms": frame.end_ms,
                                        "words": [
                                            [w.word, round(w.start_ms), round(w.end_ms)] for w in frame.words
                                        ],
                                    }
                                )
                            )
                        elif isinstance(frame, Transcript):
                            print(f"{at} {'final  ' if frame.final else 'partial'} {frame.text}")
            finally:
                await stage.stop()

    asyncio.run(stream())
    return 0


def _section(settings: AppSettings, name: str, flags: str, /, **update: object) -> AppSettings:
    """``settings`` with fields of section ``name`` replaced from command-line ``flags``, validated."""
    update = {k: v for k, v in update.items() if v is not None}
    if not update:
        return settings
    section = getattr(settings, name)
    try:
        changed = type(section).model_validate({**section.model_dump(), **update})
    except ValidationError as exc:
        raise ConfigError(describe(exc, flags)) from None
    return settings.model_copy(update={name: changed})


def _cmd_run(args: argparse.Namespace) -> int:
    from anchor.app.live import run_forever

    settings = _settings(args)
    settings = _section(settings, "mqtt", "--mqtt", url=args.mqtt)
    settings = _section(settings, "webrtc", "--host/--port", host=args.host, port=args.port)
    settings = _section(settings, "news", "--news/--news-db", scripts=args.news, database=args.news_db)
    settings = _section(settings, "face", "--face", driver=args.face)
    settings = _section(settings, "voice", "--voice/--vocoder", name=args.voice, vocoder=args.vocoder)
    answering = settings.responder.model_dump()
    for section, key, value in (
        ("faq", "path", args.faq),
        ("llm", "base_url", args.llm_url),
        ("llm", "model", args.llm_model),
    ):
        if value is not None:
            answering[section][key] = value
    flags = "--answer/--faq/--llm-url/--llm-model"
    settings = _section(settings, "responder", flags, **{**answering, "answer": args.answer})
    outputs: list[Path | str] = [*args.record, *args.rtmp]
    bad = [u for u in args.rtmp if not u.startswith(("rtmp://", "rtmps://"))]
    if bad:
        raise ConfigError(f"--rtmp takes rtmp:// or rtmps:// URLs, got {bad}")
    return run_forever(settings, outputs)


def _cluster_settings(args: argparse.Namespace) -> AppSettings:
    settings = _settings(args)
    settings = _section(settings, "mqtt", "--mqtt", url=args.mqtt)
    settings = _section(settings, "webrtc", "--host/--port", host=args.host, port=args.port)
    return _section(settings, "news", "--database", database=args.database)


def _cmd_worker(args: argparse.Namespace) -> int:
    from anchor.app.worker import run_worker

    settings = _cluster_settings(args)
    flags = "--capacity/--worker-id/--advertise-url"
    settings = _section(
        settings,
        "cluster",
        flags,
        capacity=args.capacity,
        worker_id=args.worker_id,
        advertise_url=args.advertise_url,
    )
    return run_worker(settings)


def _cmd_gateway(args: argparse.Namespace) -> int:
    from anchor.app.gateway import run_gateway

    return run_gateway(_cluster_settings(args), args.session)


def _cmd_lipsync(args: argparse.Namespace) -> int:
    from anchor.app.lipsync import lipsync
    from anchor.face.portrait import AvatarError

    settings = _with_weights(_settings(args), "wav2lip", args.checkpoint)
    settings = _section(settings, "face", "--face", driver=args.face)
    if args.contact_sheet is not None and importlib.util.find_spec("matplotlib") is None:
        raise ConfigError("--contact-sheet draws with matplotlib: pip install 'virtual-anchor[bench]'")
    try:
        result = asyncio.run(
            lipsync(
                settings,
                args.audio,
                args.out,
                avatar=args.avatar,
                driver_name="wav2lip" if args.checkpoint is not None else settings.face.driver,
                contact_sheet=args.contact_sheet,
            )
        )
    except (AvatarError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    print(
        f"wrote {args.out}: {result.frames} frames ({result.video_s:.2f} s video, "
        f"{result.audio_s:.2f} s audio) with the {result.driver} face"
        + (f"; contact sheet {args.contact_sheet}" if args.contact_sheet else "")
    )
    return 0


def _voice_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--voice", choices=("piper", "mel"), default=None, help="Piper, or our acoustic model + vocoder"
    )
    p.add_argument(
        "--vocoder", choices=("waveglow", "hifigan"), default=None, help="the vocoder of --voice mel"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchor", description="Streaming real-time virtual anchor.")
    parser.add_argument("--config", type=Path, default=None, help="TOML config file")
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("config", help="print the effective, validated configuration as JSON")
    p.set_defaults(func=_cmd_config)

    p = sub.add_parser(
        "token", help="issue a viewer or operator token (HS256, signed with webrtc.jwt_secret)"
    )
    p.add_argument("--grants", default="watch", help="comma-separated: watch, talk, control (default watch)")
    p.add_argument("--session", default="main", help="the session it admits to (default main)")
    p.add_argument("--subject", default="operator", help="who it is for: logged, and owns its viewers")
    p.add_argument("--ttl", type=_duration_s, default=600, help="lifetime: N[s|m|h], at most 10m (default)")
    p.set_defaults(func=_cmd_token)

    p = sub.add_parser(
        "drain", help="make a running anchor refuse newcomers and finish its line (a preStop hook)"
    )
    p.add_argument("--host", default="127.0.0.1", help="where the anchor listens (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="its port (default 8080)")
    p.add_argument("--wait", action="store_true", help="return only once its lines are spoken")
    p.add_argument("--timeout", type=float, default=60.0, help="--wait at most this long (default 60 s)")
    p.set_defaults(func=_cmd_drain)

    p = sub.add_parser("say", help="speak TEXT with the default voice into a WAV file")
    p.add_argument("text", help="what to say (news text is normalised: numbers, dates, ...)")
    p.add_argument("-o", "--out", type=Path, required=True, help="WAV file to write")
    _voice_flags(p)
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="Tacotron 2 checkpoint for --voice mel (default: our acoustic model)",
    )
    p.add_argument(
        "--vocoder-checkpoint",
        type=Path,
        default=None,
        help="vocoder weights (default: our WaveGlow, the packaged HiFi-GAN)",
    )
    p.add_argument(
        "--sigma", type=float, default=None, help="WaveGlow noise scale (default: the checkpoint's, else 0.6)"
    )
    p.set_defaults(func=_cmd_say)

    p = sub.add_parser("vocode", help="vocode a log-mel .npy ([80, T]) into a WAV file")
    p.add_argument("mel", type=Path, help="log-mel .npy: 22050 Hz, hop 256, 80 mels, ln(clamp(x, 1e-5))")
    p.add_argument(
        "--vocoder", choices=["hifigan", "waveglow"], default=None, help="default: the voice.vocoder setting"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="HiFi-GAN generator, or WaveGlow (NVIDIA .pt or DLE/NGC); default: the packaged HiFi-GAN",
    )
    p.add_argument(
        "--sigma",
        type=float,
        default=None,
        help="WaveGlow noise scale, 0 = deterministic (default: the checkpoint's, else 0.6)",
    )
    p.add_argument("-o", "--out", type=Path, required=True)
    p.set_defaults(func=_cmd_vocode)

    p = sub.add_parser("transcribe", help="transcribe a WAV file with Whisper tiny.en (word timings)")
    p.add_argument("file", type=Path, help="PCM WAV, any rate and channel count")
    p.add_argument(
        "--backend",
        choices=["ctranslate2", "torch", "onnxruntime", "tensorrt"],
        default="ctranslate2",
        help="ctranslate2 (faster-whisper, word timings) or the engine layer (greedy, first 30 s)",
    )
    p.add_argument("--stream", action="store_true", help="stream it at real-time pace: partials and finals")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_transcribe)

    p = sub.add_parser("run", help="the live anchor: a viewer page with voice and face over WebRTC")
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
    p.add_argument(
        "--mqtt", default=None, help="broker URL for newsroom control, e.g. mqtt://user:pass@host:1883"
    )
    p.add_argument("--record", type=Path, action="append", default=[], help="also record the program to MP4")
    p.add_argument("--rtmp", action="append", default=[], help="also push the program to an RTMP URL")
    p.add_argument("--news", type=Path, default=None, help="a news script file, or a folder to watch")
    p.add_argument(
        "--news-db", default=None, help="the durable news queue: a SQLite file or a postgresql:// URL"
    )
    p.add_argument("--answer", choices=("faq", "llm", "off"), default=None, help="who answers viewers")
    p.add_argument("--faq", type=Path, default=None, help="question/answer file (.toml, .json, .csv)")
    p.add_argument(
        "--llm-url", default=None, help="OpenAI-compatible API root, e.g. http://127.0.0.1:8000/v1"
    )
    p.add_argument("--llm-model", default=None, help="the model name the endpoint serves")
    p.add_argument(
        "--face",
        choices=("gan", "animator"),
        default=None,
        help="what moves the mouth: our mouth GAN or the weightless animator (default: gan)",
    )
    _voice_flags(p)
    p.set_defaults(func=_cmd_run)

    for name, help_text in (
        ("worker", "a cluster worker: runs the sessions the broker gives it, up to its capacity"),
        ("gateway", "the cluster's stateless front door: the page and API, relayed to the workers"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=None, help="port (default 8080; 0 picks a free one)")
        p.add_argument("--mqtt", default=None, help="the cluster's broker, e.g. mqtt://user:pass@host:1883")
        p.add_argument(
            "--database",
            default=None,
            help="news and session registry: postgresql://user@host/db (or a file)",
        )
        if name == "worker":
            p.add_argument("--capacity", type=int, default=None, help="sessions it runs at most (default 2)")
            p.add_argument("--worker-id", default=None, help="its name in the cluster (default: host name)")
            p.add_argument(
                "--advertise-url", default=None, help="where gateways reach it (default: bound URL)"
            )
            p.set_defaults(func=_cmd_worker)
        else:
            p.add_argument("--session", default="main", help="the session the page opens by default")
            p.set_defaults(func=_cmd_gateway)

    p = sub.add_parser("lipsync", help="a WAV file onto an avatar: a talking-head MP4 (H.264 + AAC)")
    p.add_argument("audio", type=Path, help="speech as a PCM WAV file (any rate, mono or stereo)")
    p.add_argument("-o", "--out", type=Path, required=True, help="MP4 file to write")
    p.add_argument(
        "--avatar", type=Path, default=None, help="portrait image or short video (default: bundled)"
    )
    p.add_argument(
        "--face",
        choices=("gan", "animator"),
        default=None,
        help="our mouth GAN moving the portrait's own lips (shipped weights), or the weightless animator "
        "(the same rig moved by the sound's level and spectrum; default: gan)",
    )
    p.add_argument("--checkpoint", type=Path, default=None, help="a Wav2Lip checkpoint (overrides --face)")
    p.add_argument(
        "--contact-sheet",
        type=Path,
        default=None,
        help="also write a PNG of mouth crops over time above the audio envelope",
    )
    p.set_defaults(func=_cmd_lipsync)

    p = sub.add_parser("demo", help="run a paced session end to end and record its audio")
    p.add_argument("text", nargs="*", help="sentences to speak (one utterance each)")
    p.add_argument("-o", "--out", type=Path, default=Path("anchor-demo.wav"), help="WAV to write")
    p.add_argument("--tail", type=float, default=0.5, help="seconds of idle to record at the end")
    p.add_argument("--json", action="store_true", help="print spans and summaries as JSON")
    p.add_argument("--metrics", action="store_true", help="print Prometheus metrics at the end")
    _voice_flags(p)
    p.set_defaults(func=_cmd_demo)

    engines = sub.add_parser("engines", help="neural engines: list, build (ONNX/TensorRT), bench")
    engines_sub = engines.add_subparsers(dest="engines", required=True, metavar="ACTION")
    p = engines_sub.add_parser("list", help="each engine, its backend, precision and weights")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines_list)
    p = engines_sub.add_parser("build", help="export and check ONNX, prove parity, build TensorRT plans")
    p.add_argument("engine", nargs="*", help="engines to build (default: all)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines_build)
    p = engines_sub.add_parser("bench", help="latency p50/p90/p99 and throughput per batch size")
    p.add_argument("name", help="engine name (see 'anchor engines list')")
    p.add_argument("--batch", default="1,4,16", help="comma-separated batch sizes")
    p.add_argument("--backend", choices=["torch", "onnxruntime", "tensorrt"], default=None)
    p.add_argument("--size", action="append", default=[], metavar="AXIS=N", help="e.g. frames=128")
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_engines_bench)

    add_train_parser(sub)

    add_bench_parser(sub, _settings, _print)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.func(args)
    except (ConfigError, WeightsError) as exc:
        print(f"anchor: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
