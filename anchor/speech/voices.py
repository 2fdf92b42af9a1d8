"""Choosing the voice: one setting, the same stages for live sessions, the soak bench, demos and ``say``."""

from __future__ import annotations

from dataclasses import dataclass

from anchor.core.config import AnchorSettings, VocoderName, VoiceName
from anchor.core.stage import Stage


@dataclass(frozen=True)
class Voice:
    """A resolved voice: ``stages()`` builds a fresh chain for each graph without reading any file."""

    name: VoiceName
    vocoder: VocoderName = "waveglow"
    sigma: float = 0.0
    #: Tacotron 2 (the ``tacotron2`` engines' weights) instead of our acoustic model.
    tacotron: bool = False
    #: The WaveGlow weights carry a source (a pitch head): z is the excitation at its F0.
    source: bool = False

    @property
    def label(self) -> str:
        """``piper``, ``mel+waveglow`` or ``mel+hifigan``."""
        return self.name if self.name == "piper" else f"{self.name}+{self.vocoder}"

    def stages(self) -> list[Stage]:
        """Text in, ``AudioChunk``s out of the last stage."""
        if self.name == "piper":
            from anchor.speech.piper_stage import PiperTTS

            return [PiperTTS()]
        from anchor.speech.acoustic_stage import AcousticTTS
        from anchor.speech.tacotron_stage import Tacotron2TTS
        from anchor.speech.vocoder import VocoderStage, waveglow_stage

        acoustic: Stage = Tacotron2TTS() if self.tacotron else AcousticTTS()
        if self.vocoder == "waveglow":
            return [acoustic, waveglow_stage(self.sigma, source=self.source)]
        return [acoustic, VocoderStage(engine="hifigan")]


def resolve_voice(settings: AnchorSettings, *, sigma: float | None = None, tacotron: bool = False) -> Voice:
    """``settings.voice`` made concrete. Blocking: how WaveGlow is sampled is read from its weights
    (``sigma`` overrides its noise scale). ``tacotron``: Tacotron 2 (its weights set in
    ``settings.engines.weights['tacotron2']``) instead of our acoustic model."""
    voice = settings.voice
    source = False
    if voice.name == "mel" and voice.vocoder == "waveglow":
        from anchor.speech.vocoder import waveglow_declared

        declared = waveglow_declared(settings)
        sigma = declared.sigma if sigma is None else sigma
        source = declared.source
    return Voice(voice.name, voice.vocoder, sigma or 0.0, tacotron, source)
