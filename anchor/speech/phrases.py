"""Cutting streamed text into phrases a voice can speak as soon as they are complete.

A phrase ends at a sentence end (``.!?`` then whitespace, not after an
abbreviation, an initial or inside a number) or, once it has a few words,
at a clause mark (``,;:`` or a dash). The first phrase of an utterance is
kept short (``first_words``) so speech starts early; no phrase exceeds
``max_chars``, so memory stays bounded however long the text.
"""

from __future__ import annotations

import re

_ABBREVIATIONS = {
    "mr",
    "mrs",
    "ms",
    "dr",
    "prof",
    "gov",
    "sen",
    "rep",
    "gen",
    "lt",
    "col",
    "sgt",
    "capt",
    "jr",
    "sr",
    "st",
    "inc",
    "ltd",
    "corp",
    "co",
    "vs",
    "etc",
    "no",
    "approx",
    "dept",
    "est",
    "ave",
    "jan",
    "feb",
    "mar",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "e.g",
    "i.e",
}
_SENTENCE_END = re.compile(r"[.!?…]+[\"')\]]*(?=\s)")
_CLAUSE_END = re.compile(r"(?:[,;:]|\s[—–-]\s?)(?=\s)")


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the ``.`` at ``dot`` closes an abbreviation, an initial or a dotted acronym."""
    word = text[:dot].rsplit(maxsplit=1)[-1] if text[:dot].strip() else ""
    word = word.lstrip("(\"'")
    if not word:
        return False
    if word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isalpha() and word.isupper()):
        return True
    return bool(re.fullmatch(r"(?:[A-Za-z]\.)+[A-Za-z]", word))


def sentences(text: str) -> list[str]:
    """``text`` cut at every sentence end (the same rule as the splitter: not after abbreviations)."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        if m[0].startswith(".") and _is_abbreviation(text, m.start()):
            continue
        if piece := text[start : m.end()].strip():
            out.append(piece)
        start = m.end()
    if rest := text[start:].strip():
        out.append(rest)
    return out


class PhraseSplitter:
    def __init__(self, *, first_words: int = 6, min_clause_words: int = 4, max_chars: int = 400) -> None:
        self.first_words = first_words
        self.min_clause_words = min_clause_words
        self.max_chars = max_chars
        self._buffer = ""
        self._emitted = 0

    @property
    def buffered_chars(self) -> int:
        """Text received and not yet cut into a phrase."""
        return len(self._buffer)

    def feed(self, text: str) -> list[str]:
        """Add streamed text; return the phrases it completed."""
        self._buffer += text
        phrases = []
        while (cut := self._next_cut()) is not None:
            phrase, self._buffer = self._buffer[:cut].strip(), self._buffer[cut:]
            if phrase:
                phrases.append(phrase)
                self._emitted += 1
        return phrases

    def flush(self) -> list[str]:
        """The rest of the text, at the end of the utterance."""
        rest, self._buffer = self._buffer.strip(), ""
        return [rest] if rest else []

    def _next_cut(self) -> int | None:
        """The earliest place the buffered text may be cut, by any rule."""
        text = self._buffer
        first = self._emitted == 0
        cuts = []
        for m in _SENTENCE_END.finditer(text):
            if not (m[0].startswith(".") and _is_abbreviation(text, m.start())):
                cuts.append(m.end())
                break
        for m in _CLAUSE_END.finditer(text):
            if len(text[: m.start()].split()) >= (2 if first else self.min_clause_words):
                cuts.append(m.end())
                break
        if first:
            # A word is complete once a space follows it: cut after the N-th word.
            spaces = [m.start() for m in re.finditer(r"\s(?=\S)", text)]
            if len(spaces) >= self.first_words and spaces[self.first_words - 1] > 0:
                cuts.append(spaces[self.first_words - 1])
        if len(text) > self.max_chars:
            space = text.rfind(" ", 0, self.max_chars)
            cuts.append(space if space > 0 else self.max_chars)
        return min(cuts) if cuts else None
