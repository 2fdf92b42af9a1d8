"""The anchor runtime: frames, graph and stages, media clock, pacing, sessions, metrics."""

from anchor.config import AnchorSettings, ConfigError, load_settings
from anchor.frames import (
    AudioChunk,
    DataFrame,
    EndOfUtterance,
    ErrorEvent,
    Frame,
    Interrupt,
    MelChunk,
    Say,
    SpeechStarted,
    SystemFrame,
    TextDelta,
    Transcript,
    VideoFrame,
    WordTiming,
)
from anchor.graph import AUDIO_OUT, VIDEO_OUT, Graph
from anchor.runtime import Runtime
from anchor.session import Session, SessionClosed, SessionEvent
from anchor.stage import Stage, StageContext

__all__ = [
    "AUDIO_OUT",
    "VIDEO_OUT",
    "AnchorSettings",
    "AudioChunk",
    "ConfigError",
    "DataFrame",
    "EndOfUtterance",
    "ErrorEvent",
    "Frame",
    "Graph",
    "Interrupt",
    "MelChunk",
    "Runtime",
    "Say",
    "Session",
    "SessionClosed",
    "SessionEvent",
    "SpeechStarted",
    "Stage",
    "StageContext",
    "SystemFrame",
    "TextDelta",
    "Transcript",
    "VideoFrame",
    "WordTiming",
    "load_settings",
]
