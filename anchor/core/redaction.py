"""Keeping secrets out of what the anchor prints: errors, logs and ``anchor config``."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

#: Settings fields whose values are secrets wherever they appear (pydantic ``SecretStr`` fields).
SECRET_FIELDS = frozenset({"jwt_secret", "password", "credential", "api_key"})
HIDDEN = "***"


def redact_url(url: str) -> str:
    """``url`` with the password of its user info replaced by ``***`` (anything else is kept)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url
    if not password:
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{user}:{HIDDEN}@{host}"))


_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")


def redact_message(message: str) -> str:
    """``message`` with the password of every URL in it hidden."""
    return _URL.sub(lambda m: redact_url(m.group(0)), message)


def shown(field: str, value: Any) -> str:
    """How an offending ``value`` of ``field`` may be echoed in an error message."""
    if field in SECRET_FIELDS:
        return "a value that is not shown"
    return repr(redacted(value))


def redacted(data: Any) -> Any:
    """A JSON-like structure with every URL's password hidden (``SecretStr`` values are already masked)."""
    if isinstance(data, dict):
        return {k: HIDDEN if k in SECRET_FIELDS and data[k] else redacted(v) for k, v in data.items()}
    if isinstance(data, list):
        return [redacted(v) for v in data]
    if isinstance(data, str) and "://" in data:
        return redact_url(data)
    return data
