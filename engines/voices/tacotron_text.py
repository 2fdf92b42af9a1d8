"""Text -> symbol ids for Tacotron 2 checkpoints trained with NVIDIA's 148-symbol table.

The table is pad, '-', punctuation, letters, then 84 ARPAbet phones written
'@AH0' etc. Text in ``{curly braces}`` is read as ARPAbet. English cleaning
is our news normaliser followed by lower-casing.
"""

from __future__ import annotations

import re

_VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
_CONSONANTS = [
    "B",
    "CH",
    "D",
    "DH",
    "F",
    "G",
    "HH",
    "JH",
    "K",
    "L",
    "M",
    "N",
    "NG",
    "P",
    "R",
    "S",
    "SH",
    "T",
    "TH",
    "V",
    "W",
    "Y",
    "Z",
    "ZH",
]
ARPABET = sorted([v + s for v in _VOWELS for s in ("", "0", "1", "2")] + _CONSONANTS)
SYMBOLS = [
    "_",
    "-",
    *"!'(),.:;? ",
    *"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
    *[f"@{p}" for p in ARPABET],
]
_ID = {s: i for i, s in enumerate(SYMBOLS)}
_CURLY = re.compile(r"(.*?)\{(.+?)\}(.*)")


def text_to_ids(text: str) -> list[int]:
    """Symbol ids for ``text`` (already normalised); unknown characters are skipped."""
    ids: list[int] = []
    rest = text
    while rest:
        m = _CURLY.match(rest)
        if m is None:
            ids += [_ID[ch] for ch in rest.lower() if ch in _ID and ch != "_"]
            break
        ids += [_ID[ch] for ch in m[1].lower() if ch in _ID and ch != "_"]
        ids += [_ID[f"@{p}"] for p in m[2].split() if f"@{p}" in _ID]
        rest = m[3]
    return ids
