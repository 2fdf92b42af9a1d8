from __future__ import annotations

import logging

import pytest

from anchor.speech.normalize import normalize
from anchor.speech.numbers import cardinal, ordinal, year
from anchor.speech.phrases import PhraseSplitter


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety-nine"),
        (101, "one hundred one"),
        (1234567, "one million two hundred thirty-four thousand five hundred sixty-seven"),
        (-7, "minus seven"),
        (2_000_000_000, "two billion"),
    ],
)
def test_cardinals(number: int, words: str) -> None:
    assert cardinal(number) == words


def test_ordinals_and_years() -> None:
    assert [ordinal(n) for n in (1, 2, 3, 5, 12, 20, 21, 100, 103)] == [
        "first",
        "second",
        "third",
        "fifth",
        "twelfth",
        "twentieth",
        "twenty-first",
        "one hundredth",
        "one hundred third",
    ]
    assert [year(y) for y in (1999, 1905, 1900, 2000, 2005, 2010, 2024)] == [
        "nineteen ninety-nine",
        "nineteen oh five",
        "nineteen hundred",
        "two thousand",
        "two thousand five",
        "twenty ten",
        "twenty twenty-four",
    ]


@pytest.mark.parametrize(
    ("text", "spoken"),
    [
        (
            "The economy grew 3.5% in 2023.",
            "The economy grew three point five percent in twenty twenty-three.",
        ),
        ("It cost $5.30, not $1.", "It cost five dollars and thirty cents, not one dollar."),
        (
            "A $2.5 billion deal and £3bn more.",
            "A two point five billion dollars deal and three billion pounds more.",
        ),
        (
            "On January 5, 2024 and on 2024-03-01.",
            "On January fifth, twenty twenty-four and on March first, twenty twenty-four.",
        ),
        ("Polls close at 8:00 p.m. on Friday.", "Polls close at eight p m on Friday."),
        ("We meet at 9:05 am.", "We meet at nine oh five a m."),
        ("Mr. Smith and Dr. Jones of St. Louis", "Mister Smith and Doctor Jones of Saint Louis"),
        ("The FBI, NASA and the U.S. agreed.", "The F B I, Nasa and the U S agreed."),
        ("the 21st century and the 1990s", "the twenty-first century and the nineteen nineties"),
        ("10-12 km at 100 mph; No. 5", "ten to twelve kilometers at one hundred miles per hour; number five"),
        ("1,234 people, 3,4 and 5", "one thousand two hundred thirty-four people, three, four and five"),
    ],
)
def test_news_normalisation(text: str, spoken: str) -> None:
    assert normalize(text) == spoken


def test_unsayable_characters_are_dropped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert normalize("Markets rose 😀 today\x07 中文 — again ✅") == "Markets rose today, again"
    assert "dropped 5 character(s)" in caplog.text
    assert normalize("") == ""
    assert normalize("\x00\x01\x02") == ""
    assert normalize("Ünïcödé café") == "Ünïcödé café"


def test_first_phrase_is_short_then_sentences_and_clauses() -> None:
    s = PhraseSplitter(first_words=4)
    text = "The president said on Tuesday that talks, which began in May, would continue. Mr. Lee agreed. "
    phrases = []
    for i in range(0, len(text), 7):  # streamed in small deltas
        phrases += s.feed(text[i : i + 7])
    phrases += s.flush()
    assert phrases == [
        "The president said on",
        "Tuesday that talks, which began in May,",
        "would continue.",
        "Mr. Lee agreed.",
    ]


def test_decimals_initials_and_acronyms_do_not_end_sentences() -> None:
    s = PhraseSplitter(first_words=50)
    out = s.feed("Growth was 3.5 percent, said J. K. Smith of the U.S. Treasury. Next ") + s.flush()
    assert out == ["Growth was 3.5 percent,", "said J. K. Smith of the U.S. Treasury.", "Next"]


def test_unpunctuated_text_is_bounded() -> None:
    s = PhraseSplitter(first_words=5, max_chars=100)
    phrases = []
    for _ in range(2000):
        phrases += s.feed("word ")
        assert s.buffered_chars <= 100 + 5
    assert all(len(p) <= 100 for p in phrases)
    assert sum(len(p.split()) for p in phrases + s.flush()) == 2000
