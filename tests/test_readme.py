"""The README's ``anchor ...`` commands stay runnable: each names a real subcommand, and each flag exists."""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

from anchor.app.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "engines" / "weights" / "MODEL_CARD.md"]


def _commands() -> list[tuple[str, str]]:
    """``(document, command)`` for every ``anchor ...`` in inline code or a shell block."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        blocks = re.findall(r"```(?:sh|bash|console)?\n(.*?)```", text, flags=re.S)
        lines = [line.strip() for block in blocks for line in block.splitlines()]
        inline = re.findall(r"`(anchor [^`]+)`", text)
        for command in [*inline, *(line for line in lines if line.startswith("anchor "))]:
            found += [(doc.name, variant) for variant in _variants(command.split("#")[0].strip())]
    return sorted(set(found))


def _variants(command: str) -> list[str]:
    """``anchor run|demo say`` -> ``anchor run say``, ``anchor demo say`` (alternatives before any flag)."""
    tokens = command.replace("\\|", "|").split()  # a table cell escapes its pipes
    for i, token in enumerate(tokens):
        if token.startswith(("-", "[")):
            break
        if "|" in token:
            return [
                v
                for alt in token.split("|")
                for v in _variants(" ".join([*tokens[:i], alt, *tokens[i + 1 :]]))
            ]
    return [command]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public way to walk its subcommands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


COMMANDS = _commands()


def test_the_readme_shows_commands() -> None:
    assert len(COMMANDS) > 30, COMMANDS


@pytest.mark.parametrize(("doc", "command"), COMMANDS)
def test_readme_command_names_real_subcommands_and_flags(doc: str, command: str) -> None:
    parser = build_parser()
    path: list[str] = []
    tokens = command.split()[1:]
    options = set(parser._option_string_actions)
    for token in tokens:
        choices = _subparsers(parser)
        if token in choices:
            parser = choices[token]
            path.append(token)
            options |= set(parser._option_string_actions)
    # A command may name a group (`anchor train data`) or only global options (`anchor --config F`).
    assert path or tokens[0].startswith("-"), f"{doc}: `{command}` names no subcommand of `anchor`"
    flags = {re.sub(r"[^\w-].*$", "", t.lstrip("[")) for t in tokens if t.lstrip("[").startswith("-")}
    unknown = sorted(flag for flag in flags if flag and flag not in options)
    assert not unknown, f"{doc}: `{command}`: no such option {unknown} for `anchor {' '.join(path)}`"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as done:
        build_parser().parse_args([*path, "--help"])
    assert done.value.code == 0 and "usage: anchor" in out.getvalue()
