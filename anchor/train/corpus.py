"""The text the teacher voice reads: English prose that covers every phoneme the voice knows.

Source: the docstrings of CPython's standard library and its language
reference (``pydoc_data``), which ship with every Python (PSF-2.0 licence).
Sentences are kept when they are plain prose (letters and simple
punctuation, 5-30 words), phonemized with the voice's own espeak-ng front
end, and ordered greedily so that each next sentence adds the most phoneme
pairs not yet seen; the corpus is that order cut at the wanted length.
Held-out evaluation sentences (``HELD_OUT``) are never part of it.
"""

from __future__ import annotations

import ast
import heapq
import itertools
import json
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from engines.voices.piper import PiperVoice

SOURCE = "CPython standard library docstrings and pydoc_data topics"
LICENCE = "PSF-2.0"
#: Seconds of teacher speech per phoneme id (pads included), measured on this corpus.
SECONDS_PER_ID = 0.026

#: News sentences never trained on: the quality gates speak these.
HELD_OUT = (
    "Good evening, here is the news at nine.",
    "The central bank raised interest rates by a quarter point on Tuesday, surprising markets.",
    "Heavy snow closed the mountain roads for a second day.",
    "The city council approved a new budget for public transport.",
    "Scientists reported a breakthrough in battery research this week.",
    "Shares in technology companies fell sharply in early trading.",
    "The national football team won its opening match of the tournament.",
    "Firefighters brought the blaze under control before dawn.",
    "A new bridge across the river will open to traffic next month.",
    "The weather service expects strong winds along the coast tonight.",
    "Thousands of people gathered in the square to celebrate the festival.",
    "The health ministry announced free vaccinations for children.",
    "Voters will choose a new mayor in the election on Sunday.",
    "The museum has returned the stolen paintings to their owners.",
    "Farmers are worried that the dry summer will hurt the harvest.",
    "The airline cancelled dozens of flights because of the strike.",
)

_PLAIN = re.compile(r"[A-Z][a-z ,;'-]+[a-z][.!?]")


@dataclass(frozen=True)
class Sentence:
    key: str
    text: str
    ids: list[int]


def prose_sentences() -> list[str]:
    """Plain-prose sentences from the standard library's docstrings and language reference, sorted."""
    import pydoc_data.topics

    docs: list[str] = list(pydoc_data.topics.topics.values())
    lib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(lib.rglob("*.py")):
        if {"test", "tests", "site-packages", "idlelib"} & set(path.relative_to(lib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                doc = ast.get_docstring(node)
                if doc:
                    docs.append(doc)
    text = re.sub(r"\s+", " ", " ".join(docs))
    held = {s.lower() for s in HELD_OUT}
    found = {
        s
        for s in re.split(r"(?<=[.!?])\s+", text)
        if _PLAIN.fullmatch(s) and 5 <= len(s.split()) <= 30 and s.lower() not in held
    }
    return sorted(found)


def _pairs(ids: list[int]) -> set[tuple[int, int]]:
    core = [i for i in ids if i > 3]  # pad, bos, eos and space carry no phoneme
    return set(itertools.pairwise(core)) | {(i, i) for i in core}


def select(sentences: list[Sentence], seconds: float) -> list[Sentence]:
    """Greedy coverage: each next sentence adds the most unseen phonemes and phoneme pairs per id.

    Lazy evaluation: a sentence's gain only shrinks as more is seen, so a
    stale gain on top of the heap is recomputed and pushed back, not rescanned.
    """
    chosen: list[Sentence] = []
    seen: set[tuple[int, int]] = set()
    pairs = {s.key: _pairs(s.ids) for s in sentences}
    heap = [(-len(pairs[s.key]) / len(s.ids), s.key, n) for n, s in enumerate(sentences)]
    heapq.heapify(heap)
    budget = seconds
    with tqdm(total=round(seconds), desc="corpus", unit="s") as bar:
        while heap and budget > 0:
            _, key, n = heapq.heappop(heap)
            sentence = sentences[n]
            gain = -len(pairs[key] - seen) / len(sentence.ids)
            if heap and gain > heap[0][0]:
                heapq.heappush(heap, (gain, key, n))
                continue
            seen |= pairs[key]
            chosen.append(sentence)
            spent = len(sentence.ids) * SECONDS_PER_ID
            budget -= spent
            bar.update(round(spent))
    return chosen


def build_corpus(out: Path, *, hours: float, seed: int, voice: PiperVoice) -> Path:
    """Write ``corpus.jsonl`` (key, text, Piper ids) and ``corpus.json`` (source, coverage) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    texts = prose_sentences()
    random.Random(seed).shuffle(texts)
    sentences = []
    for n, text in enumerate(tqdm(texts, desc="phonemize", unit="sentence")):
        for ids in voice.phoneme_ids(text)[:1]:
            sentences.append(Sentence(f"s{n:06d}", text, ids))
    chosen = select(sentences, hours * 3600)
    used = {i for s in chosen for i in s.ids}
    known = {i for ids in voice.config.phoneme_id_map.values() for i in ids}
    every = {i for s in sentences for i in s.ids}
    path = out / "corpus.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for s in chosen:
            f.write(json.dumps({"key": s.key, "text": s.text, "ids": s.ids}) + "\n")
    tmp.replace(path)
    names = {i: p for p, ids in voice.config.phoneme_id_map.items() for i in ids}
    meta = {
        "source": SOURCE,
        "licence": LICENCE,
        "seed": seed,
        "sentences": len(chosen),
        "estimated_hours": round(sum(len(s.ids) for s in chosen) * SECONDS_PER_ID / 3600, 2),
        "phonemes_used": len(used),
        "phonemes_spoken_by_english_espeak": len(every),
        "phonemes_in_voice": len(known),
        "english_phonemes_missing": sorted(names[i] for i in every - used),
        "held_out": list(HELD_OUT),
    }
    (out / "corpus.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return path


def read_corpus(data: Path) -> Iterator[Sentence]:
    path = data / "corpus.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no corpus at {path}: run `anchor train data corpus --out {data}` first")
    with path.open(encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            yield Sentence(row["key"], row["text"], [int(i) for i in row["ids"]])
