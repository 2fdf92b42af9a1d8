"""What a viewer or an operator may ask of a session, whatever carries it (an HTTP body, an MQTT message).

One schema per command, with its limits, so that every transport accepts and
refuses exactly the same things with the same words. A transport adds only
its own envelope: MQTT a command ``id``, ``sent_at`` and ``ttl_s``
(``streams.mqtt``), HTTP the ``session`` (``streams.server``). A refusal is a
``CommandError`` naming each bad field.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

MAX_TEXT_CHARS = 2000
MAX_NEWS_TITLE_CHARS = 200
MAX_NEWS_BODY_CHARS = 20_000


class CommandError(ValueError):
    """A command that is malformed, or well-formed but cannot be carried out (now)."""


def _not_blank(text: str) -> str:
    if not text.strip():
        raise ValueError("must not be blank")
    return text


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]
NewsTitle = Annotated[str, Field(min_length=1, max_length=MAX_NEWS_TITLE_CHARS), AfterValidator(_not_blank)]
NewsBody = Annotated[str, Field(min_length=1, max_length=MAX_NEWS_BODY_CHARS), AfterValidator(_not_blank)]


class Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Say(Command):
    text: Text
    uninterruptible: bool = False


class Interrupt(Command):
    reason: str | None = Field(None, min_length=1, max_length=200, description="None: the transport's name")


class Mute(Command):
    muted: bool


class Ask(Command):
    text: Text


class ResponderSwitch(Command):
    answer: str = Field(pattern=r"^[a-z0-9_-]{1,32}$")


class NewsEnqueue(Command):
    title: NewsTitle
    body: NewsBody
    priority: int = Field(0, ge=0, le=10, strict=True)


class NewsCue(Command):
    item: str = Field(min_length=1, max_length=64)


class NewsSkip(Command):
    pass


class NewsAir(Command):
    on_air: bool


class AvatarSwitch(Command):
    avatar: str = Field(min_length=1, max_length=200)


class VoiceSwitch(Command):
    voice: str = Field(min_length=1, max_length=200)


COMMANDS: dict[str, type[Command]] = {
    "say": Say,
    "interrupt": Interrupt,
    "mute": Mute,
    "ask": Ask,
    "responder": ResponderSwitch,
    "news/enqueue": NewsEnqueue,
    "news/cue": NewsCue,
    "news/skip": NewsSkip,
    "news/air": NewsAir,
    "avatar": AvatarSwitch,
    "voice": VoiceSwitch,
}


def decode_object(raw: bytes, what: str = "body") -> dict[str, Any]:
    """A JSON object from ``raw``, or ``CommandError`` saying why not (nesting too deep included)."""
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CommandError(f"{what} is not JSON: {exc}") from None
    except RecursionError:
        raise CommandError(f"{what} nests JSON too deeply") from None
    if not isinstance(data, dict):
        raise CommandError(f"{what} must be a JSON object, got {type(data).__name__}")
    return data


def describe(error: ValidationError) -> str:
    """Every problem of ``error`` as ``field: message``, in one line."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in error.errors())


C = TypeVar("C", bound=Command)


def build(schema: type[C], fields: dict[str, Any]) -> C:
    """``schema`` from ``fields``, or ``CommandError`` naming the command and each bad field."""
    try:
        return schema.model_validate(fields)
    except ValidationError as exc:
        name = next(key for key, value in COMMANDS.items() if value is schema)
        raise CommandError(f"invalid {name} command: {describe(exc)}") from None


def parse_command(name: str, fields: dict[str, Any]) -> Command:
    """The command ``name`` with ``fields``, or ``CommandError`` naming each bad field."""
    schema = COMMANDS.get(name)
    if schema is None:
        raise CommandError(f"unknown command {name!r}; known: {sorted(COMMANDS)}")
    return build(schema, fields)
