"""``faq``: answers from a question/answer file by semantic retrieval (all-MiniLM-L6-v2).

Every question (and its alternative wordings) is embedded once; a viewer's
question is answered with the entry whose wording is closest by cosine
similarity, when that similarity reaches the threshold, and with the
fallback line otherwise.

File formats (UTF-8):

- ``.toml``: ``[[faq]]`` tables with ``question``, ``answer`` and optional
  ``alternatives`` (a list of other wordings);
- ``.json``: a list of such objects;
- ``.csv``: a header with ``question`` and ``answer`` columns.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tomllib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchor.core.stage import StageContext
from anchor.responders.answer import Turn
from engines.text.embedder import SentenceEmbedder

log = logging.getLogger(__name__)

EMBEDDER = "sentence-embedder:all-MiniLM-L6-v2"
MAX_ENTRIES = 5000


class FaqError(ValueError):
    """A question/answer file that cannot be used; the message names the file, entry and field."""


@dataclass(frozen=True, slots=True)
class FaqEntry:
    question: str
    answer: str
    alternatives: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FaqMatch:
    entry: FaqEntry
    wording: str
    score: float


def default_faq_text() -> str:
    return resources.files("anchor.responders").joinpath("faq.toml").read_text(encoding="utf-8")


def load_faq(path: Path | None) -> list[FaqEntry]:
    """The entries of ``path`` (``None``: the anchor's own FAQ), or ``FaqError``."""
    if path is None:
        return parse_faq("faq.toml", default_faq_text())
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise FaqError(f"FAQ file {path} cannot be read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise FaqError(f"FAQ file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_faq(path.name, text)


def parse_faq(name: str, text: str) -> list[FaqEntry]:
    suffix = Path(name).suffix.lower()
    raw: list[Any]
    if suffix == ".toml":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise FaqError(f"{name}: not valid TOML: {exc}") from None
        unknown = set(data) - {"faq"}
        if unknown:
            raise FaqError(f"{name}: unknown top-level keys {sorted(unknown)}; entries go in [[faq]] tables")
        raw = data.get("faq", [])
    elif suffix == ".json":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FaqError(f"{name}: not valid JSON: {exc}") from None
        if not isinstance(raw, list):
            raise FaqError(f"{name}: expected a list of {{question, answer}} objects")
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = {"question", "answer"} - set(reader.fieldnames or ())
        if missing:
            raise FaqError(f"{name}: the CSV header lacks {sorted(missing)}")
        raw = [{"question": row["question"], "answer": row["answer"]} for row in reader]
    else:
        raise FaqError(f"{name}: unknown FAQ format {suffix or '(none)'}; use .toml, .json or .csv")
    entries = [_entry(name, n, item) for n, item in enumerate(raw)]
    if not entries:
        raise FaqError(f"{name}: no questions")
    if len(entries) > MAX_ENTRIES:
        raise FaqError(f"{name}: {len(entries)} entries; at most {MAX_ENTRIES}")
    return entries


def _entry(name: str, n: int, item: object) -> FaqEntry:
    where = f"{name}: entry {n + 1}"
    if not isinstance(item, dict):
        raise FaqError(f"{where}: expected a table with question and answer")
    unknown = set(item) - {"question", "answer", "alternatives"}
    if unknown:
        raise FaqError(f"{where}: unknown fields {sorted(unknown)}")
    question, answer = item.get("question"), item.get("answer")
    alternatives = item.get("alternatives", [])
    for field, value in (("question", question), ("answer", answer)):
        if not isinstance(value, str) or not value.strip():
            raise FaqError(f"{where}: {field} must be non-empty text")
    if not isinstance(alternatives, list) or not all(isinstance(a, str) and a.strip() for a in alternatives):
        raise FaqError(f"{where}: alternatives must be a list of non-empty texts")
    assert isinstance(question, str) and isinstance(answer, str)
    return FaqEntry(question.strip(), answer.strip(), tuple(a.strip() for a in alternatives))


class FaqIndex:
    """Every wording of every entry, embedded; ``match`` finds the closest to a question."""

    def __init__(
        self, entries: Sequence[FaqEntry], embed: Callable[[Sequence[str]], npt.NDArray[np.float32]]
    ) -> None:
        self.entries = list(entries)
        self._owner: list[int] = []
        wordings: list[str] = []
        for n, entry in enumerate(self.entries):
            for wording in (entry.question, *entry.alternatives):
                wordings.append(wording)
                self._owner.append(n)
        self.wordings = wordings
        self._embed = embed
        self.vectors = embed(wordings)

    def match(self, question: str) -> FaqMatch:
        query = self._embed([question])[0]
        scores = self.vectors @ query
        best = int(np.argmax(scores))
        return FaqMatch(self.entries[self._owner[best]], self.wordings[best], float(scores[best]))


class FaqAnswerer:
    def __init__(self, index: FaqIndex, ctx: StageContext, *, threshold: float, fallback: str) -> None:
        self.index = index
        self.ctx = ctx
        self.threshold = threshold
        self.fallback = fallback

    async def answer(self, question: str, history: Sequence[Turn]) -> AsyncIterator[str]:
        found = await self.ctx.run_blocking(self.index.match, question)
        if found.score >= self.threshold:
            log.info("faq: %r -> %r (%.2f)", question, found.wording, found.score)
            yield found.entry.answer
        else:
            log.info("faq: %r has no answer (best %r, %.2f)", question, found.wording, found.score)
            yield self.fallback

    async def aclose(self) -> None:
        """Nothing to release: the embedder is the process's, shared by every session."""


async def faq_answerer(ctx: StageContext) -> FaqAnswerer:
    """The ``faq`` answerer of ``ctx``'s settings: its file embedded with the shared embedder."""
    settings = ctx.settings.responder.faq
    entries = await ctx.run_blocking(load_faq, settings.path)
    embedder = await ctx.engines.resource(EMBEDDER, SentenceEmbedder)
    index = await ctx.run_blocking(FaqIndex, entries, embedder.embed)
    return FaqAnswerer(index, ctx, threshold=settings.threshold, fallback=settings.fallback)
