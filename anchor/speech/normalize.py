"""Text normalisation for news: what a newsreader says for what is written.

Numbers, ordinals, years, currency, percentages, dates, times, common
abbreviations, acronyms and symbols become words; characters the voice
cannot say (emoji, control characters, other scripts) are dropped with a
warning. Never raises on any input.
"""

from __future__ import annotations

import logging
import re
import unicodedata

from anchor.speech.numbers import cardinal, decimal, ordinal, year

log = logging.getLogger(__name__)

_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
_MONTH_ABBR = {m[:3].lower(): m for m in _MONTHS} | {"sept": "September"}
_CURRENCY = {
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
    "¥": ("yen", "yen", "sen", "sen"),
}
_SCALE = {
    "k": "thousand",
    "thousand": "thousand",
    "m": "million",
    "mn": "million",
    "million": "million",
    "b": "billion",
    "bn": "billion",
    "billion": "billion",
    "t": "trillion",
    "tn": "trillion",
    "trillion": "trillion",
}
_ABBREVIATIONS = {
    "mr": "Mister",
    "mrs": "Missus",
    "ms": "Miz",
    "dr": "Doctor",
    "prof": "Professor",
    "gov": "Governor",
    "sen": "Senator",
    "rep": "Representative",
    "gen": "General",
    "lt": "Lieutenant",
    "col": "Colonel",
    "sgt": "Sergeant",
    "capt": "Captain",
    "jr": "Junior",
    "sr": "Senior",
    "inc": "Incorporated",
    "ltd": "Limited",
    "corp": "Corporation",
    "co": "Company",
    "vs": "versus",
    "etc": "et cetera",
    "approx": "approximately",
    "dept": "Department",
    "est": "established",
    "ave": "Avenue",
}
_UNITS = {
    "km": "kilometers",
    "kg": "kilograms",
    "mph": "miles per hour",
    "km/h": "kilometers per hour",
    "cm": "centimeters",
    "mm": "millimeters",
    "ft": "feet",
    "lb": "pounds",
    "lbs": "pounds",
    "ml": "milliliters",
    "gb": "gigabytes",
    "mb": "megabytes",
    "tb": "terabytes",
}
_WORD_ACRONYMS = {
    "NASA",
    "NATO",
    "UNESCO",
    "UNICEF",
    "OPEC",
    "FIFA",
    "COVID",
    "AIDS",
    "ASEAN",
    "OK",
    "LASER",
    "RADAR",
    "SCUBA",
    "INTERPOL",
    "OFCOM",
    "NAFTA",
}
_SYMBOLS = {
    "&": " and ",
    "@": " at ",
    "+": " plus ",
    "=": " equals ",
    "#": " number ",
    "%": " percent ",
    "°": " degrees ",
    "/": " slash ",
    "×": " times ",
    "~": " about ",
}
_KEEP_PUNCT = set(".,;:!?'\"-()")

# A number: thousands separators only as ",ddd" groups, an optional decimal part.
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_MONTH_RE = "|".join([*_MONTHS, *[f"{k.title()}\\.?" for k in _MONTH_ABBR]])
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{2})-(\d{2})\b")
_MONTH_DAY_YEAR = re.compile(rf"\b({_MONTH_RE})\s+(\d{{1,2}})(?:st|nd|rd|th)?(?:,?\s+(\d{{4}}))?\b")
_DAY_MONTH_YEAR = re.compile(rf"\b(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_RE})(?:,?\s+(\d{{4}}))?\b")
# "p.m." keeps its last dot when that dot also ends the sentence.
_TIME = re.compile(r"\b(\d{1,2}):(\d{2})(?:\s*([ap])\.?\s?m\b(?:\.(?=\s+[a-z0-9]))?)?", re.IGNORECASE)
_MONEY = re.compile(
    rf"([$£€¥])\s?({_NUM})(?:\s?(thousand|million|billion|trillion|bn|mn|[kmbt])\b)?", re.IGNORECASE
)
_PERCENT = re.compile(rf"({_NUM})\s?(%|percent\b|per cent\b)")
_ORDINAL = re.compile(r"\b(\d+)(st|nd|rd|th)\b", re.IGNORECASE)
_YEAR_RANGE = re.compile(r"\b(1[5-9]\d\d|20\d\d)\s?[-–]\s?(1[5-9]\d\d|20\d\d)\b")
_NUMBER_RANGE = re.compile(r"\b(\d+)\s?[–-]\s?(\d+)\b")
_YEAR = re.compile(r"\b(1[5-9]\d\d|20\d\d)(s?)\b")
_UNIT = re.compile(
    rf"\b({_NUM})(?:\s?[–-]\s?({_NUM}))?\s?(" + "|".join(re.escape(u) for u in _UNITS) + r")\b",
    re.IGNORECASE,
)
_NUMBER = re.compile(rf"(?<![\w.])-?{_NUM}")
_ABBREV = re.compile(r"\b(" + "|".join(_ABBREVIATIONS) + r")\.", re.IGNORECASE)
_ST = re.compile(r"\bSt\.\s+(?=[A-Z])")
_DOTTED = re.compile(r"\b(?:[A-Za-z]\.){2,}")
_CAPS = re.compile(r"\b[A-Z]{2,6}s?\b")
_NO = re.compile(r"\bNo\.\s?(?=\d)")
_EG_IE = (
    (re.compile(r"\be\.g\.", re.IGNORECASE), "for example"),
    (re.compile(r"\bi\.e\.", re.IGNORECASE), "that is"),
)


def _month(name: str) -> str:
    key = name.rstrip(".").lower()
    return _MONTH_ABBR.get(key[:4] if key.startswith("sept") else key[:3], name)


def _number_words(text: str) -> str:
    clean = text.replace(",", "")
    return decimal(clean) if "." in clean else cardinal(int(clean))


def _money(m: re.Match[str]) -> str:
    one, many, sub_one, sub_many = _CURRENCY[m[1]]
    amount, scale = m[2].replace(",", ""), m[3]
    if scale:
        return f" {_number_words(amount)} {_SCALE[scale.lower()]} {many} "
    whole_text, _, cents_text = amount.partition(".")
    whole, cents = int(whole_text or 0), int((cents_text + "00")[:2])
    parts = []
    if whole or not cents:
        parts.append(f"{cardinal(whole)} {one if whole == 1 else many}")
    if cents:
        parts.append(f"{cardinal(cents)} {sub_one if cents == 1 else sub_many}")
    return f" {' and '.join(parts)} "


def _unit(m: re.Match[str]) -> str:
    span = _number_words(m[1]) + (f" to {_number_words(m[2])}" if m[2] else "")
    return f"{span} {_UNITS[m[3].lower()]}"


def _time(m: re.Match[str]) -> str:
    hour, minute, half = int(m[1]), int(m[2]), m[3]
    if hour > 23 or minute > 59:
        return m[0]
    words = cardinal(hour)
    if minute:
        words += f" oh {cardinal(minute)}" if minute < 10 else f" {cardinal(minute)}"
    elif not half:
        words += " hundred" if hour > 12 else " o'clock"
    if half:
        words += f" {half.lower()} m"
    return words


def _date(month: str, day: str, year_text: str | None) -> str:
    words = f"{_month(month)} {ordinal(int(day))}"
    return words + (f", {year(int(year_text))}" if year_text else "")


def _plural(words: str) -> str:
    """``nineteen ninety`` -> ``nineteen nineties``."""
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _spell(letters: str) -> str:
    return " ".join(letters.upper())


def _acronym(m: re.Match[str]) -> str:
    token = m[0]
    plural = token.endswith("s") and not token.isupper()
    core = token[:-1] if plural else token
    if core in _WORD_ACRONYMS:
        return core.title() + ("s" if plural else "")
    return _spell(core) + ("'s" if plural else "")


def _drop_unspeakable(text: str) -> str:
    kept, dropped = [], []
    for ch in unicodedata.normalize("NFC", text):
        cat = unicodedata.category(ch)
        if ch.isspace():
            kept.append(" ")
        elif cat.startswith("L") and "LATIN" not in unicodedata.name(ch, ""):
            dropped.append(ch)
        elif cat.startswith(("L", "N")) or ch in _KEEP_PUNCT:
            kept.append(ch)
        elif ch in "—–":
            kept.append(", ")
        elif ch in "‘’":
            kept.append("'")
        elif ch in "“”":
            kept.append('"')
        elif ch == "…":
            kept.append("...")
        else:
            dropped.append(ch)
    if dropped:
        shown = "".join(sorted(set(dropped)))[:40]
        log.warning("normalize: dropped %d character(s) the voice cannot say: %r", len(dropped), shown)
    return "".join(kept)


def normalize(text: str) -> str:
    """Speakable English for ``text`` (any input; never raises)."""
    t = text
    for pattern, words in _EG_IE:
        t = pattern.sub(words, t)
    t = _ISO_DATE.sub(
        lambda m: (
            _date(_MONTHS[int(m[2]) - 1], m[3], m[1])
            if 1 <= int(m[2]) <= 12 and 1 <= int(m[3]) <= 31
            else m[0]
        ),
        t,
    )
    t = _MONTH_DAY_YEAR.sub(lambda m: _date(m[1], m[2], m[3]) if 1 <= int(m[2]) <= 31 else m[0], t)
    t = _DAY_MONTH_YEAR.sub(
        lambda m: (
            f"the {ordinal(int(m[1]))} of {_month(m[2])}" + (f", {year(int(m[3]))}" if m[3] else "")
            if 1 <= int(m[1]) <= 31
            else m[0]
        ),
        t,
    )
    t = _TIME.sub(_time, t)
    t = _MONEY.sub(_money, t)
    t = _PERCENT.sub(lambda m: f"{_number_words(m[1])} percent", t)
    t = _UNIT.sub(_unit, t)
    t = _ORDINAL.sub(lambda m: ordinal(int(m[1])), t)
    t = _YEAR_RANGE.sub(lambda m: f"{year(int(m[1]))} to {year(int(m[2]))}", t)
    t = _YEAR.sub(lambda m: _plural(year(int(m[1]))) if m[2] else year(int(m[1])), t)
    t = _NUMBER_RANGE.sub(lambda m: f"{_number_words(m[1])} to {_number_words(m[2])}", t)
    t = _NO.sub("number ", t)
    t = _ST.sub("Saint ", t)
    t = _ABBREV.sub(lambda m: _ABBREVIATIONS[m[1].lower()], t)
    t = _DOTTED.sub(lambda m: _spell(m[0].replace(".", "")) + " ", t)
    t = _NUMBER.sub(
        lambda m: (
            _number_words(m[0].lstrip("-"))
            if not m[0].startswith("-")
            else "minus " + _number_words(m[0][1:])
        ),
        t,
    )
    t = _CAPS.sub(_acronym, t)
    for symbol, words in _SYMBOLS.items():
        t = t.replace(symbol, words)
    t = _drop_unspeakable(t)
    t = re.sub(r"\s+([.,;:!?])", r"\1", t)
    t = re.sub(r"([,;:])(?=\S)", r"\1 ", t)
    return re.sub(r"\s+", " ", t).strip()
