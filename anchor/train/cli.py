"""``anchor train ...``: make the data set, train each model, and export the shipped weights."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from anchor.core.config import ConfigError

if TYPE_CHECKING:
    from anchor.train.loop import Budget

DEFAULT_DATA = Path("~/.cache/virtual-anchor/train-data")
DEFAULT_RUNS = Path("~/.cache/virtual-anchor/train-runs")


def _data_corpus(args: argparse.Namespace) -> int:
    from anchor.train.corpus import build_corpus
    from engines.voices.piper import JOE_MODEL, PiperVoice

    voice = PiperVoice.for_model(args.voice_model or JOE_MODEL.resolve())
    path = build_corpus(args.out.expanduser(), hours=args.hours, seed=args.seed, voice=voice)
    print((path.parent / "corpus.json").read_text())
    return 0


def _data_speech(args: argparse.Namespace) -> int:
    from anchor.train.speech_data import synthesize
    from engines.voices.piper import JOE_MODEL

    try:
        shards = synthesize(
            args.out.expanduser(),
            args.voice_model or JOE_MODEL.resolve(),
            workers=args.workers,
            limit=args.shards,
        )
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    print(f"{len(shards)} speech shards in {args.out / 'speech'}")
    return 0


def _data_vocoded(args: argparse.Namespace) -> int:
    from anchor.train.vocoded import vocode

    try:
        files = vocode(args.out.expanduser(), limit=args.shards)
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from None
    print(f"{len(files)} vocoded shards in {args.out / 'vocoded'}")
    return 0


def _budget(args: argparse.Namespace) -> Budget:
    from anchor.train.loop import Budget

    return Budget(
        steps=args.steps, minutes=args.minutes, save_every=args.save_every, log_every=args.log_every
    )


def _train(args: argparse.Namespace) -> int:
    from anchor.train.acoustic_trainer import train_acoustic
    from anchor.train.loop import TrainJob
    from anchor.train.mouth_gan_trainer import train_mouth
    from anchor.train.pitch_trainer import train_pitch
    from anchor.train.waveglow_trainer import train_waveglow

    trainers: dict[str, Callable[..., Path]] = {
        "acoustic": train_acoustic,
        "waveglow": train_waveglow,
        "mouth": train_mouth,
        "pitch": train_pitch,
    }
    extra: dict[str, object] = {}
    if getattr(args, "init", None) is not None:
        extra["init"] = args.init.expanduser()
    for option in ("target", "wave_weight"):
        if getattr(args, option, None) is not None:
            extra[option] = getattr(args, option)
    if getattr(args, "pitch", None) is not None:
        extra["pitch"] = args.pitch.expanduser()
    try:
        job = TrainJob(
            args.data.expanduser(), args.out.expanduser(), _budget(args), device=args.device, batch=args.batch
        )
        path = trainers[args.model](job, **extra)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {path}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from anchor.train.ship_weights import export_weights

    written = export_weights(args.runs.expanduser(), args.to)
    print(json.dumps({k: str(v) for k, v in written.items()}, indent=2))
    return 0


def _gate(args: argparse.Namespace) -> int:
    from anchor.app.settings import load_settings
    from anchor.train.gates import DIAGNOSTIC_PATHS, MOS_MARGIN, PITCH_CORRELATION, WER_GATE, listening_gate

    paths = tuple(dict.fromkeys(["piper", *(args.path or ["mel+hifigan", "mel+waveglow"])]))
    if args.diagnose:
        paths += DIAGNOSTIC_PATHS
    try:
        scores = listening_gate(paths, acoustic=args.acoustic, waveglow=args.waveglow)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    piper = scores["piper"]
    voice = load_settings().voice
    default = voice.name if voice.name == "piper" else f"{voice.name}+{voice.vocoder}"
    worthy = scores[default].default_worthy(piper) if default in scores else None
    if args.json:
        print(
            json.dumps(
                {
                    "default_voice": default,
                    "default_worthy": worthy,
                    "paths": [s.summary(piper) for s in scores.values()],
                },
                indent=2,
            )
        )
    else:
        print(
            f"default-worthy: DistillMOS within {MOS_MARGIN} of Piper ({piper.mos_mean:.2f}), pitch "
            f"correlation >= {PITCH_CORRELATION}, WER <= {100 * WER_GATE:.0f} %"
        )
        for s in scores.values():
            verdict = "default-worthy" if s.default_worthy(piper) else "not default-worthy"
            print(
                f"{s.path:>22}: DistillMOS {s.mos_mean:.2f} (min {s.mos_min:.2f}), WER {100 * s.wer:.1f} %, "
                f"pitch r {s.pitch_correlation:.2f}, GPE {100 * s.gross_pitch_error:.0f} %, "
                f"F0 std {s.f0_std_hz:.1f} Hz -> {verdict}"
            )
        if worthy is not None:
            print(f"the configured default voice ({default}) {'passes' if worthy else 'FAILS'} the gate")
    return 0 if worthy in (True, None) else 1


def add_train_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="make training data, train our own models, export their weights")
    kinds = train.add_subparsers(dest="train", required=True, metavar="WHAT")

    data = kinds.add_parser("data", help="make the training data (deterministic, resumable)")
    parts = data.add_subparsers(dest="part", required=True, metavar="PART")
    p = parts.add_parser("corpus", help="choose and phonemize the sentences the teacher voice reads")
    p.add_argument("--hours", type=float, default=3.0, help="speech to aim for (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_data_corpus)
    p = parts.add_parser("speech", help="Piper reads the corpus: audio, its durations, mels")
    p.add_argument("--shards", type=int, default=None, help="only the first N shards (100 sentences each)")
    p.set_defaults(func=_data_speech)
    p = parts.add_parser("vocoded", help="HiFi-GAN vocodes the speech's mels: WaveGlow's waveform targets")
    p.add_argument("--shards", type=int, default=None, help="only the first N speech shards")
    p.set_defaults(func=_data_vocoded)
    for part, p in parts.choices.items():
        p.add_argument("--out", type=Path, default=DEFAULT_DATA, help=f"data folder (default {DEFAULT_DATA})")
        if part not in ("corpus", "vocoded"):
            p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
        if part in ("corpus", "speech"):
            p.add_argument("--voice-model", type=Path, default=None, help="the teacher's Piper ONNX file")

    for name, what in (
        ("acoustic", "the FastSpeech-style acoustic model, distilled from Piper"),
        ("waveglow", "a small WaveGlow on the teacher's audio"),
        ("mouth", "the mouth GAN (mel window -> mouth shape; phoneme teacher, temporal critic)"),
        (
            "pitch",
            "the pitch head (mel -> F0 and voicing, on Praat's pitch of the teacher): WaveGlow's source",
        ),
    ):
        p = kinds.add_parser(name, help=f"train {what}")
        p.add_argument("--data", type=Path, default=DEFAULT_DATA)
        p.add_argument("--out", type=Path, default=DEFAULT_RUNS, help="checkpoints, loss log and chart")
        p.add_argument("--steps", type=int, default=100_000)
        p.add_argument("--minutes", type=float, default=60.0, help="stop after this long (resumable)")
        p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
        p.add_argument("--batch", type=int, default=None)
        p.add_argument("--save-every", type=int, default=500)
        p.add_argument("--log-every", type=int, default=50)
        if name == "waveglow":
            p.add_argument(
                "--init", type=Path, default=None, help="start a new run from these weights (e.g. shipped)"
            )
            p.add_argument(
                "--target",
                choices=("vocoded", "teacher"),
                default=None,
                help="audio to learn: the teacher's mels vocoded by HiFi-GAN (default) or the teacher's own",
            )
            p.add_argument(
                "--pitch",
                type=Path,
                default=None,
                help="a pitch head (pitch-final.pt): a source-filter flow, z = the excitation at its F0",
            )
            p.add_argument("--wave-weight", type=float, default=None, help="waveform L1 weight (default 10)")
        p.set_defaults(func=_train, model=name)

    p = kinds.add_parser(
        "gate",
        help="each voice path on held-out news: DistillMOS, Whisper base WER, pitch against the teacher",
    )
    p.add_argument(
        "--path",
        action="append",
        choices=("mel+hifigan", "mel+waveglow"),
        help="our paths to judge beside Piper (default: both)",
    )
    p.add_argument("--diagnose", action="store_true", help="also the teacher's own mels through each vocoder")
    p.add_argument("--acoustic", type=Path, default=None, help="acoustic weights (default: shipped)")
    p.add_argument("--waveglow", type=Path, default=None, help="WaveGlow weights (default: shipped)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_gate)

    p = kinds.add_parser("export", help="trained runs -> the fp16 weights shipped in engines/weights")
    p.add_argument("--runs", type=Path, default=DEFAULT_RUNS)
    p.add_argument("--to", type=Path, default=None, help="folder (default: the package's engines/weights)")
    p.set_defaults(func=_export)
