"""Choosing the voice: one setting, the same stages for live sessions, the soak bench, demos and ``say``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from anchor.config import AnchorSettings, VocoderName, VoiceName
from anchor.stage import Stage


@dataclass(frozen=True)
class Voice:
    """A resolved voice: ``stages()`` builds a fresh chain for each graph without reading any file."""

    name: VoiceName
    vocoder: VocoderName = "waveglow"
    sigma: float = 0.0
    tacotron: Path | None = None

    @property
    def label(self) -> str:
        """``piper``, ``mel+waveglow`` or ``mel+hifigan``."""
        return self.name if self.name == "piper" else f"{self.name}+{self.vocoder}"

    def stages(self) -> list[Stage]:
        """Text in, ``AudioChunk``s out of the last stage."""
        if self.name == "piper":
            from anchor.speech.tts import PiperTTS

            return [PiperTTS()]
        from anchor.speech.acoustic import AcousticTTS
        from anchor.speech.tacotron import Tacotron2TTS
        from anchor.speech.vocoder import VocoderStage, waveglow_stage

        acoustic: Stage = Tacotron2TTS(self.tacotron) if self.tacotron else AcousticTTS()
        if self.vocoder == "waveglow":
            return [acoustic, waveglow_stage(self.sigma)]
        return [acoustic, VocoderStage(engine="hifigan")]


def resolve_voice(
    settings: AnchorSettings, *, sigma: float | None = None, tacotron: Path | None = None
) -> Voice:
    """``settings.voice`` made concrete. Blocking: WaveGlow's noise scale is read from its weights
    unless ``sigma`` is given. ``tacotron``: a Tacotron 2 checkpoint instead of our acoustic model."""
    voice = settings.voice
    if voice.name == "mel" and voice.vocoder == "waveglow" and sigma is None:
        from anchor.speech.vocoder import waveglow_sigma

        sigma = waveglow_sigma(settings)
    return Voice(voice.name, voice.vocoder, sigma or 0.0, tacotron)
