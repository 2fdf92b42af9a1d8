"""News scripts from files: one file, or a folder watched for new and edited files.

Formats (UTF-8):

- ``.txt`` / ``.md``: the first non-empty line is the title (a leading ``#``
  is dropped); an optional ``priority: N`` line may follow it; the rest is
  the body.
- ``.json``: an object ``{"title", "body", "priority"?, "id"?}`` or a list
  of them.

Each file is imported once per content: the database remembers what it took
from which path, so a restart does not queue a script again, and an edited
file queues its new text. A malformed file is reported (with the reason) and
skipped until it changes.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from pathlib import Path

from anchor.news.desk import NewsDesk
from anchor.news.store import NewsError, NewsItem

log = logging.getLogger(__name__)

SUFFIXES = (".txt", ".md", ".json")
MAX_FILE_BYTES = 256 * 1024
SETTLED_S = 2.0
_PRIORITY = re.compile(r"^\s*priority\s*:\s*(\d+)\s*$", re.IGNORECASE)


def parse_script(name: str, text: str) -> list[NewsItem]:
    """The items in one script file's text, or ``NewsError`` naming the file and the problem."""
    source = f"file:{name}"
    if name.endswith(".json"):
        return _parse_json(name, text, source)
    lines = text.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise NewsError(f"{name}: the script is empty")
    title = lines.pop(0).strip().lstrip("#").strip()
    priority = 0
    if lines and (m := _PRIORITY.match(lines[0])):
        priority = int(m[1])
        lines.pop(0)
    body = " ".join(line.strip() for line in lines if line.strip())
    try:
        return [NewsItem(title, body, priority, source=source).checked()]
    except NewsError as exc:
        raise NewsError(f"{name}: {exc}") from None


def _parse_json(name: str, text: str, source: str) -> list[NewsItem]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NewsError(f"{name}: not valid JSON: {exc}") from None
    entries = data if isinstance(data, list) else [data]
    items = []
    for n, entry in enumerate(entries):
        where = f"{name}[{n}]" if isinstance(data, list) else name
        if not isinstance(entry, dict):
            raise NewsError(f"{where}: expected an object with title and body, got {type(entry).__name__}")
        unknown = set(entry) - {"title", "body", "priority", "id"}
        if unknown:
            raise NewsError(f"{where}: unknown fields {sorted(unknown)}")
        title, body, priority, item_id = (
            entry.get("title"),
            entry.get("body"),
            entry.get("priority", 0),
            entry.get("id", ""),
        )
        if not isinstance(title, str) or not isinstance(body, str):
            raise NewsError(f"{where}: title and body must be strings")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise NewsError(f"{where}: priority must be an integer, got {priority!r}")
        if not isinstance(item_id, str):
            raise NewsError(f"{where}: id must be a string")
        try:
            items.append(NewsItem(title, body, priority, item_id, source).checked())
        except NewsError as exc:
            raise NewsError(f"{where}: {exc}") from None
    return items


def read_script(name: str, raw: bytes) -> list[NewsItem]:
    """The items of one script file's bytes; ``NewsError`` if it cannot be used."""
    if len(raw) > MAX_FILE_BYTES:
        raise NewsError(f"{name}: {len(raw)} bytes; a script file may have at most {MAX_FILE_BYTES}")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise NewsError(f"{name}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return parse_script(name, text)


def _read_signed(path: Path) -> tuple[bytes, str] | None:
    """At most one byte more than a script may have (read_script refuses more), and its hash."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:  # removed or unreadable between listing and reading: try at the next scan
        log.warning("news script %s cannot be read: %s", path, exc.strerror)
        return None
    return raw, hashlib.sha256(raw).hexdigest()


class ScriptFeed:
    """Queues the scripts of a file or folder on a desk, polling a folder every ``poll_s``."""

    def __init__(self, desk: NewsDesk, path: Path, poll_s: float = 2.0) -> None:
        self.desk = desk
        self.path = path
        self.poll_s = poll_s
        self._seen: dict[Path, tuple[int, int]] = {}  # (mtime_ns, size) of settled files: not read again

    def changed_files(self) -> list[Path]:
        """Script files that are new or touched since the last scan (blocking: stat calls)."""
        if self.path.is_dir():
            found = sorted(
                p for p in self.path.iterdir() if p.suffix.lower() in SUFFIXES and not p.name.startswith(".")
            )
        else:
            found = [self.path] if self.path.is_file() else []
        changed = []
        for path in found:
            try:
                stat = path.stat()
            except OSError:
                continue
            key = (stat.st_mtime_ns, stat.st_size)
            if self._seen.get(path) != key:
                changed.append(path)
                # A file touched in the last seconds may be written again within the same mtime tick
                # (coarse clocks on some filesystems): look at it again until it has settled.
                if time.time() - stat.st_mtime > SETTLED_S:
                    self._seen[path] = key
        return changed

    async def scan(self) -> int:
        """Import every new or changed file once; returns how many items were queued."""
        queued = 0
        queue = self.desk.queue
        for path in await asyncio.to_thread(self.changed_files):
            signed = await asyncio.to_thread(_read_signed, path)
            if signed is None:
                self._seen.pop(path, None)
                continue
            raw, signature = signed
            if await queue.file_signature(str(path)) == signature:
                continue
            try:
                items = read_script(path.name, raw)
            except NewsError as exc:
                log.error("news script skipped: %s", exc)
                self.desk.session.announce("error", f"news script skipped: {exc}")
                items = []
            for item in items:
                _, added = await self.desk.enqueue(item)
                queued += added
            await queue.remember_file(str(path), signature)
        return queued

    async def run(self) -> None:
        """Scan now, and keep scanning a folder until cancelled."""
        if not self.path.exists():
            raise NewsError(f"news scripts path {self.path} does not exist")
        while True:
            await self.scan()
            if not self.path.is_dir():
                return
            await asyncio.sleep(self.poll_s)
