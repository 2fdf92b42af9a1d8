"""Typed settings of the runtime and its stages, and how a file, the environment and overrides combine.

Every setting an operator may change lives here (the network edges' in
``streams.settings``, joined by ``anchor.app.settings``); tuning constants that
are not settings stay beside the code they tune (``anchor.speech.vocoder``,
``anchor.listen.recognizer``, ``anchor.core.pacer``).

Precedence, highest first: keyword overrides, ``ANCHOR_*`` environment
variables (nested with ``__``, e.g. ``ANCHOR_MEDIA__FPS=30``), the TOML file.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from anchor.core.redaction import redact_message, shown
from engines.settings import EngineSettings


class ConfigError(ValueError):
    """The configuration is invalid; the message names every offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MediaSettings(_Section):
    sample_rate: int = Field(48000, description="Output audio rate (Hz); WebRTC Opus wants 48000.")
    audio_frame_ms: int = Field(20, description="Audio frame length released by the pacer.")
    fps: int = Field(25, ge=1, le=120, description="Video frames per second.")
    width: int = Field(512, ge=16, le=4096)
    height: int = Field(512, ge=16, le=4096)
    pacer_lead_ms: float = Field(
        20.0, ge=0, le=500, description="How far ahead of wall time the pacer may release media."
    )
    fade_ms: float = Field(5.0, ge=0, le=100, description="Fade-out applied when speech is cut.")
    video_wait_ms: float = Field(
        500.0,
        ge=0,
        le=2000,
        description=(
            "In a session with a face, how long an utterance's first audio may wait for its first video "
            "frame, so the mouth moves from the first syllable (a face with lookahead, such as the GAN's "
            "210 ms mel window, is otherwise late for the first frames); 0 never waits."
        ),
    )

    @model_validator(mode="after")
    def _frame_fits_rate(self) -> MediaSettings:
        if self.sample_rate not in (8000, 16000, 22050, 24000, 32000, 44100, 48000):
            raise ValueError(f"sample_rate {self.sample_rate} is not a supported audio rate")
        if self.audio_frame_ms not in (10, 20, 40, 60):
            raise ValueError(f"audio_frame_ms must be 10, 20, 40 or 60, got {self.audio_frame_ms}")
        if self.sample_rate * self.audio_frame_ms % 1000:
            raise ValueError(
                f"audio_frame_ms {self.audio_frame_ms} is not a whole number of samples "
                f"at {self.sample_rate} Hz"
            )
        return self

    @property
    def audio_frame_samples(self) -> int:
        return self.sample_rate * self.audio_frame_ms // 1000


class GraphSettings(_Section):
    audio_channel_ms: float = Field(
        400.0, gt=0, description="Audio buffered between stages before the producer blocks."
    )
    video_channel_ms: float = Field(
        1200.0,
        gt=0,
        description=(
            "Video (and a video stage's audio input) buffered before the oldest frame drops. "
            "Video is rendered from audio ahead of playout, so this must exceed audio_channel_ms."
        ),
    )
    text_channel_items: int = Field(256, ge=1, description="Bound for frames without duration.")
    max_live_utterances: int = Field(
        16,
        ge=1,
        description=(
            "Utterances a session holds at once (speaking or waiting); past that, new lines from viewers "
            "and operators (HTTP, MQTT) are refused until some end. The news desk reads one at a time."
        ),
    )
    stage_timeout_s: float = Field(
        30.0, gt=0, description="Longest a stage may take to produce its next output."
    )
    cancel_timeout_s: float = Field(
        2.0, gt=0, description="Longest a cancelled task may take to finish before it is reported."
    )

    @model_validator(mode="after")
    def _video_covers_audio_lookahead(self) -> GraphSettings:
        if self.video_channel_ms <= self.audio_channel_ms:
            raise ValueError(
                f"video_channel_ms ({self.video_channel_ms:g}) must exceed audio_channel_ms "
                f"({self.audio_channel_ms:g}): frames rendered for buffered audio would be dropped "
                "before they are due"
            )
        return self


class FaceSettings(_Section):
    driver: Literal["gan", "animator"] = Field(
        "gan",
        description=(
            "What moves the portrait's own mouth (the landmark rig): our mouth GAN (shipped weights, "
            "the mouth shape from the sound) or the weightless animator (the sound's level and spectrum)."
        ),
    )


VoiceName = Literal["piper", "mel"]
VocoderName = Literal["waveglow", "hifigan"]


class VoiceSettings(_Section):
    name: VoiceName = Field(
        "piper",
        description=(
            "The anchor's voice: Piper (en_US-joe-medium, whole phrases; the default, as the best-sounding "
            "voice by `anchor train gate`), or our acoustic model (distilled from Piper, streams mel chunks "
            "as soon as durations are known) followed by `vocoder`."
        ),
    )
    vocoder: VocoderName = Field(
        "waveglow",
        description="For the `mel` voice: our trained WaveGlow (shipped weights) or the packaged HiFi-GAN.",
    )


class RuntimeSettings(_Section):
    worker_threads: int = Field(4, ge=1, le=64, description="Threads for blocking model calls.")
    event_queue: int = Field(1024, ge=16, description="Per-subscriber session event buffer.")


class MetricsSettings(_Section):
    spans_kept: int = Field(2000, ge=1, description="Finished utterance spans kept in memory.")


class FaqSettings(_Section):
    path: Path | None = Field(
        None, description="Question/answer file (.toml, .json or .csv); unset: the anchor's own FAQ."
    )
    threshold: float = Field(
        0.55, ge=-1, le=1, description="Least cosine similarity to the best question for its answer."
    )
    fallback: str = Field(
        "I'm sorry, I don't have an answer to that yet.",
        min_length=1,
        max_length=500,
        description="Said when no question is close enough.",
    )


class LlmSettings(_Section):
    base_url: str = Field(
        "http://127.0.0.1:8000/v1",
        pattern=r"^https?://",
        description="OpenAI-compatible API root (vLLM, llama.cpp server, Ollama's /v1).",
    )
    model: str = Field("default", min_length=1)
    api_key: SecretStr | None = None
    system_prompt: str = Field(
        "You are a live TV news anchor talking with a viewer. Answer in one to three short spoken "
        "sentences: no lists, no markup, no emoji.",
        max_length=8000,
    )
    max_tokens: int = Field(200, ge=1, le=8192)
    temperature: float = Field(0.7, ge=0, le=2)
    connect_timeout_s: float = Field(5.0, gt=0)
    first_token_timeout_s: float = Field(15.0, gt=0, description="Request sent -> first token.")
    token_timeout_s: float = Field(10.0, gt=0, description="Longest wait between two tokens.")
    retries: int = Field(2, ge=0, le=10, description="Retries before the first token (never after).")
    memory_turns: int = Field(6, ge=0, le=100, description="Question/answer pairs kept per session.")


class ResponderSettings(_Section):
    answer: Literal["faq", "llm", "off"] = Field("faq", description="Who answers viewers' questions.")
    faq: FaqSettings = FaqSettings()
    llm: LlmSettings = LlmSettings()


class NewsSettings(_Section):
    database: Path | str = Field(
        default_factory=lambda: _state_home() / "virtual-anchor" / "news.sqlite3",
        description=(
            "The durable news queue and session registry: a SQLite file on one machine, or a "
            "postgresql:// URL shared by a cluster's workers."
        ),
    )
    scripts: Path | None = Field(None, description="A script file, or a folder watched for scripts.")
    poll_s: float = Field(2.0, gt=0, description="How often the scripts folder is scanned.")
    resume_after_s: float = Field(2.0, ge=0, description="Quiet after a conversation before reading goes on.")
    on_air: bool = Field(True, description="Read the queue from the start.")

    @field_validator("database", mode="before")
    @classmethod
    def _path_unless_url(cls, value: object) -> object:
        if isinstance(value, str) and not value.startswith(("postgresql://", "postgres://")):
            return Path(value)
        return value


def _state_home() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")


class AnchorSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ANCHOR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    media: MediaSettings = MediaSettings()
    graph: GraphSettings = GraphSettings()
    face: FaceSettings = FaceSettings()
    voice: VoiceSettings = VoiceSettings()
    runtime: RuntimeSettings = RuntimeSettings()
    metrics: MetricsSettings = MetricsSettings()
    engines: EngineSettings = EngineSettings()
    responder: ResponderSettings = ResponderSettings()
    news: NewsSettings = NewsSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


def describe(error: ValidationError, origin: str) -> str:
    """Each bad field of ``error`` with what was wrong and what was given (secrets and passwords hidden)."""
    lines = [f"invalid configuration ({origin}):"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "<root>"
        field = str(item["loc"][-1]) if item["loc"] else ""
        got = f" (got {shown(field, item['input'])})" if item["type"] != "missing" else ""
        lines.append(f"  {where}: {redact_message(item['msg'])}{got}")
    return "\n".join(lines)


Settings = TypeVar("Settings", bound="AnchorSettings")


def load_settings(path: Path | None = None, *, schema: type[Settings], **overrides: Any) -> Settings:
    """Validated ``schema`` from ``path`` (TOML), the environment and ``overrides``.

    Raises ``ConfigError`` naming the file and each bad field.
    """
    cls: type[Settings] = schema
    origin = "defaults and ANCHOR_* environment"
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from exc
        cls = type(
            f"{schema.__name__}FromFile",
            (schema,),
            {"model_config": SettingsConfigDict(**{**schema.model_config, "toml_file": path})},
        )
        origin = f"{path}, ANCHOR_* environment"
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(describe(exc, origin)) from None
