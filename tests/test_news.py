"""The news queue and desk: durable SQLite items, sentence-by-sentence reading on real sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from anchor.bench.processes import free_port
from anchor.core.frames import SpeechStarted
from anchor.core.graph import AUDIO_OUT, Graph
from anchor.core.runtime import Runtime
from anchor.core.session import EventStream, Session, SessionEvent
from anchor.news.database import DatabaseError, DatabaseUnavailable, PostgresDatabase, open_database
from anchor.news.desk import DeskTiming, NewsDesk, script_sentences
from anchor.news.registry import SessionRegistry
from anchor.news.scripts import ScriptFeed, parse_script
from anchor.news.store import Fenced, NewsError, NewsItem, NewsQueue, NewsStore
from anchor.responders import SayResponder
from anchor.testing.fakes import FakeTTS
from tests.helpers import FAST

FIVE = "One is first. Two comes next. Three is here. Four is late. Five ends it."


def item(title: str, body: str = FIVE, priority: int = 0) -> NewsItem:
    return NewsItem(title, body, priority)


# -- the store (on SQLite and on PostgreSQL) ---------------------------------------------------------


@contextlib.asynccontextmanager
async def opened(database: Path | str) -> AsyncIterator[NewsStore]:
    db = open_database(database)
    await db.open()
    try:
        yield NewsStore(db)
    finally:
        await db.aclose()


async def test_items_rank_by_cue_then_priority_then_arrival(news_database: Path | str) -> None:
    async with opened(news_database) as store:
        for title, priority in (("a", 0), ("b", 3), ("c", 0), ("d", 3)):
            assert await store.add("s", item(title, priority=priority))
        assert not await store.add("s", item("a")), "the same script is queued once"
        assert await store.add("other", item("x", priority=9))
        assert await store.add("other", item("a")), "another session queues the same script as its own"
        assert [i.title for i in await store.pending("s")] == ["b", "d", "a", "c"]
        c = next(i for i in await store.pending("s") if i.title == "c")
        await store.cue("s", c.id)
        assert [i.title for i in await store.pending("s")] == ["c", "b", "d", "a"]
        await store.finish("s", c.id, "skipped")
        with pytest.raises(NewsError, match="cannot be cued: it is skipped"):
            await store.cue("s", c.id)
        with pytest.raises(NewsError, match="cannot be cued: it is unknown"):
            await store.cue("s", "n-nope")
        assert [i.title for i in await store.recent("s")] == ["c"]
        assert [i.title for i in await store.pending("other")] == ["x", "a"]


async def test_the_reading_position_survives_a_restart(news_database: Path | str) -> None:
    async with opened(news_database) as store:
        await store.add("s", item("a"))
        a = await store.next("s")
        assert a is not None
        await store.begin("s", a.id)
        await store.advance("s", a.id, 3)
        await store.advance("s", a.id, 2)  # a late, older position never moves it back
    async with opened(news_database) as again:
        resumed = await again.next("s")
        assert resumed is not None
        assert (resumed.id, resumed.state, resumed.sentence) == (a.id, "reading", 3)


async def test_finished_items_are_forgotten_beyond_the_newest_kept(news_database: Path | str) -> None:
    async with opened(news_database) as store:
        for n in range(5):
            await store.add("s", item(f"t{n}"))
            done = await store.next("s")
            assert done is not None
            assert await store.finish("s", done.id, "done")
        assert await store.forget_finished("s", 2) == 3
        assert [i.title for i in await store.recent("s")] == ["t4", "t3"]


async def test_a_lease_fences_the_reading_position(news_database: Path | str) -> None:
    """Only the worker holding the session's current epoch moves its reading; one that lost it to
    another (cut off, then back) is refused in the same statement, and the position stays."""
    async with opened(news_database) as store:
        registry = SessionRegistry(store.db)
        first = await registry.claim("s", "w1/a", "http://w1", 30.0)
        assert (await registry.claim("s", "w2/b", "http://w2", 30.0)).holder == "w1/a", "a live lease holds"
        assert await registry.expire("w1/a") == 1
        assert [o.session for o in await registry.orphans()] == ["s"]
        second = await registry.claim("s", "w2/b", "http://w2", 30.0, epoch=first.epoch)
        assert (second.holder, second.epoch) == ("w2/b", first.epoch + 1)
        late = await registry.claim("s", "w3/c", "http://w3", 30.0, epoch=first.epoch)
        assert late.holder == "w2/b", "a restart asked for an older epoch is carried out once"
        old, new = NewsQueue(store.db, "s", epoch=first.epoch), NewsQueue(store.db, "s", epoch=second.epoch)
        item_id, _ = await new.add(item("a"))
        await new.begin(item_id)
        await new.advance(item_id, 2)
        with pytest.raises(Fenced, match=r"session 's' moved on \(this worker held epoch 1, now epoch 2\)"):
            await old.advance(item_id, 4)
        with pytest.raises(Fenced):
            await old.finish(item_id, "done")
        stored = await new.get(item_id)
        assert stored is not None
        assert (stored.state, stored.sentence) == ("reading", 2)
        assert not await registry.renew("s", first.epoch, 30.0)
        assert await registry.renew("s", second.epoch, 30.0)
        assert await registry.orphans() == []
        await registry.release("s", second.epoch, wanted=False)
        assert await registry.orphans() == [], "a session no one wants is not restarted"


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (NewsItem(" ", "body"), "empty title"),
        (NewsItem("t", "\n"), "empty body"),
        (NewsItem("t" * 201, "body"), "title is 201 characters; at most 200"),
        (NewsItem("t", "b" * 20_001), "body is 20001 characters; at most 20000"),
        (NewsItem("t", "body", 11), "priority must be 0..10, got 11"),
        (NewsItem("t", "body", id="x" * 65), "id is 65 characters"),
    ],
)
async def test_a_bad_item_is_refused_with_the_reason(
    news_database: Path | str, bad: NewsItem, message: str
) -> None:
    async with opened(news_database) as store:
        with pytest.raises(NewsError, match=message):
            await store.add("s", bad)
        assert await store.pending("s") == []


async def test_a_database_of_another_schema_version_is_refused(tmp_path: Path) -> None:
    async with opened(tmp_path / "news.db"):
        pass
    with sqlite3.connect(tmp_path / "news.db") as db:
        db.execute("PRAGMA user_version = 7")
    with pytest.raises(DatabaseError, match="has schema version 7; this anchor reads 2"):
        async with opened(tmp_path / "news.db"):
            pass


async def test_a_postgres_database_of_another_schema_version_is_refused(postgres_url: str) -> None:
    async with opened(postgres_url) as store:
        await store.db.execute("UPDATE anchor_schema SET version = 9")
    try:
        with pytest.raises(DatabaseError, match="has schema version 9; this anchor reads 2"):
            async with opened(postgres_url):
                pass
    finally:  # put the version back without opening (opening checks it)
        raw = PostgresDatabase(postgres_url)
        await raw.execute("UPDATE anchor_schema SET version = 2")
        await raw.aclose()


async def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "news.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match=r"news database .*news\.db cannot be used"):
        async with opened(path):
            pass


async def test_an_unreachable_postgres_is_a_clear_error_in_bounded_time() -> None:
    db = open_database(f"postgresql://anchor@127.0.0.1:{free_port()}/anchor", timeout_s=2.0)
    with pytest.raises(DatabaseUnavailable, match="cannot be reached"):
        await db.open()
    await db.aclose()


async def test_a_script_is_read_as_its_title_then_its_sentences(tmp_path: Path) -> None:
    (parsed,) = parse_script(
        "a.txt", "\n# Storm warning\npriority: 4\nDr. Lee said winds reach 90 km/h.\nStay in.\n"
    )
    assert (parsed.title, parsed.priority) == ("Storm warning", 4)
    async with opened(":memory:") as store:
        await store.add("s", parsed)
        stored = await store.next("s")
    assert stored is not None
    assert script_sentences(stored) == ["Storm warning.", "Dr. Lee said winds reach 90 km/h.", "Stay in."]


# -- the desk on a real session ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def desk_on_air(database: Path | str) -> AsyncIterator[tuple[Session, NewsDesk, EventStream]]:
    tts = FakeTTS("tts", ms_per_word=150)
    graph = Graph().chain(SayResponder(), tts).link(tts, AUDIO_OUT)
    async with Runtime(FAST) as rt:
        session = await rt.open_session(graph)
        queue = NewsQueue(database, session.id)
        await queue.open()
        desk = NewsDesk(session, queue, DeskTiming(resume_after_s=0.3, listen_hold_s=1.0))
        events = session.events()
        task = asyncio.get_running_loop().create_task(desk.run())
        try:
            yield session, desk, events
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await queue.aclose()


class Reading:
    """What the desk reads, from the session's events: sentences started and finished, items done."""

    def __init__(self, events: EventStream) -> None:
        self.events = events
        self.texts: dict[str, str] = {}
        self.items_done: list[str] = []

    async def _next(self) -> SessionEvent:
        event = await self.events.next()
        assert event is not None, "the session closed"
        if event.kind == "utterance_started":
            self.texts[event.utterance_id] = event.detail
        elif event.kind == "news" and event.detail.startswith("done "):
            self.items_done.append(event.detail.removeprefix("done "))
        return event

    async def started(self, timeout_s: float = 20) -> str:
        """The text of the next sentence that starts."""
        async with asyncio.timeout(timeout_s):
            while (event := await self._next()).kind != "utterance_started":
                pass
        return event.detail

    async def finished(self, count: int, timeout_s: float = 20) -> list[tuple[str, str]]:
        """The next ``count`` sentences that finished, as (text, outcome), in order."""
        out: list[tuple[str, str]] = []
        async with asyncio.timeout(timeout_s):
            while len(out) < count:
                event = await self._next()
                if event.kind == "utterance_finished" and event.utterance_id in self.texts:
                    out.append((self.texts.pop(event.utterance_id), event.detail))
        return out

    async def item_done(self, item_id: str, timeout_s: float = 20) -> None:
        async with asyncio.timeout(timeout_s):
            while item_id not in self.items_done:
                await self._next()


async def spoken(events: EventStream, count: int, timeout_s: float = 20) -> list[tuple[str, str]]:
    """The next ``count`` sentences that finished, as (text, outcome), in order."""
    return await Reading(events).finished(count, timeout_s)


async def test_the_desk_reads_items_in_order_one_sentence_at_a_time(tmp_path: Path) -> None:
    async with desk_on_air(tmp_path / "news.db") as (_, desk, events):
        reading = Reading(events)
        await desk.enqueue(item("First story", "Alpha one. Alpha two."))
        second, _ = await desk.enqueue(item("Second story", "Beta one."))
        said = await reading.finished(5)
        await reading.item_done(second)  # the last sentence ended; the desk marks the item done
        listing = await desk.listing()
    assert said == [
        ("First story.", "done"),
        ("Alpha one.", "done"),
        ("Alpha two.", "done"),
        ("Second story.", "done"),
        ("Beta one.", "done"),
    ]
    assert listing["pending"] == []
    assert {i["title"] for i in listing["recent"]} == {"First story", "Second story"}  # type: ignore[union-attr]


async def test_a_breaking_item_takes_over_at_a_sentence_boundary_and_the_story_resumes(
    tmp_path: Path,
) -> None:
    async with desk_on_air(tmp_path / "news.db") as (_, desk, events):
        await desk.enqueue(item("Weather"))
        first = await spoken(events, 2)
        await desk.enqueue(item("Breaking", "Markets halted.", priority=9))
        rest = await spoken(events, 6)
    said = [text for text, outcome in first + rest if outcome == "done"]
    assert all(outcome == "done" for _, outcome in first + rest), "nothing is cut: it waits for the boundary"
    breaking = said.index("Breaking.")
    assert said[breaking : breaking + 2] == ["Breaking.", "Markets halted."]
    weather = [s for s in said if s not in ("Breaking.", "Markets halted.")]
    assert weather == script_sentences_of("Weather"), "the story resumes: nothing lost, nothing twice"
    assert breaking in (2, 3), f"breaking news waited too long: {said}"


def script_sentences_of(title: str) -> list[str]:
    return [
        f"{title}.",
        "One is first.",
        "Two comes next.",
        "Three is here.",
        "Four is late.",
        "Five ends it.",
    ]


async def test_a_restart_resumes_the_item_at_its_current_sentence(news_database: Path | str) -> None:
    database = news_database
    async with desk_on_air(database) as (_, desk, events):
        await desk.enqueue(item("Weather"))
        reading = Reading(events)
        before = await reading.finished(3)
        assert await reading.started() == "Three is here.", "the process stops while it is read"
    async with desk_on_air(database) as (_, _desk, events):
        after = await spoken(events, 3)
    expected = script_sentences_of("Weather")
    assert [t for t, _ in before] == expected[:3]
    assert [t for t, _ in after] == expected[3:], "nothing lost, nothing read twice"


async def test_a_viewer_who_speaks_cuts_the_sentence_and_reading_resumes_with_it(tmp_path: Path) -> None:
    async with desk_on_air(tmp_path / "news.db") as (session, desk, events):
        await desk.enqueue(item("Weather"))
        reading = Reading(events)
        await reading.finished(1)
        assert await reading.started() == "One is first."
        await session.push(SpeechStarted())
        cut = await reading.finished(1)
        began = asyncio.get_running_loop().time()
        resumed = await reading.finished(1)
        waited = asyncio.get_running_loop().time() - began
    assert cut == [("One is first.", "interrupted")]
    assert resumed == [("One is first.", "done")]
    assert waited >= 0.3, "the desk holds while the viewer may still be talking"


async def test_skip_ends_the_item_and_the_next_one_is_read(tmp_path: Path) -> None:
    async with desk_on_air(tmp_path / "news.db") as (_, desk, events):
        await desk.enqueue(item("Weather"))
        await desk.enqueue(item("Sport", "Goal."))
        reading = Reading(events)
        await reading.finished(1)
        assert await reading.started() == "One is first."
        skipped = await desk.skip()
        rest = await reading.finished(3)
        weather = await desk.queue.get(skipped)
    assert rest == [("One is first.", "interrupted"), ("Sport.", "done"), ("Goal.", "done")]
    assert weather is not None and weather.state == "skipped"


async def test_off_air_reads_nothing_until_back_on(tmp_path: Path) -> None:
    async with desk_on_air(tmp_path / "news.db") as (_, desk, events):
        desk.set_on_air(False)
        await desk.enqueue(item("Sport", "Goal."))
        with pytest.raises(TimeoutError):
            await spoken(events, 1, timeout_s=0.5)
        desk.set_on_air(True)
        assert await spoken(events, 2) == [("Sport.", "done"), ("Goal.", "done")]


async def test_a_scripts_folder_is_imported_once_per_content(tmp_path: Path) -> None:
    folder = tmp_path / "scripts"
    folder.mkdir()
    (folder / "a.txt").write_text("Rates\nThe bank held rates.\n")
    (folder / "b.json").write_text(json.dumps([{"title": "Sport", "body": "Goal.", "priority": 2}]))
    (folder / "bad.json").write_text(json.dumps({"title": "x", "body": "y", "colour": "red"}))
    (folder / "notes.csv").write_text("ignored")
    async with desk_on_air(tmp_path / "news.db") as (_, desk, events):
        desk.set_on_air(False)
        feed = ScriptFeed(desk, folder)
        assert await feed.scan() == 2
        assert await feed.scan() == 0, "an unchanged file is not queued again"
        (folder / "a.txt").write_text("Rates\nThe bank cut rates.\n")
        assert await feed.scan() == 1, "an edited file queues its new text"
        titles = [i["title"] for i in (await desk.listing())["pending"]]  # type: ignore[index]
        errors = []
        while (event := await asyncio.wait_for(events.next(), 1)) is not None:
            if event.kind == "error":
                errors.append(event.detail)
                break
    assert titles == ["Sport", "Rates", "Rates"]
    assert errors == ["news script skipped: bad.json: unknown fields ['colour']"]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.txt", "\n\n", "a.txt: the script is empty"),
        ("a.txt", "Title only\n", "a.txt: news item 'Title only' has an empty body"),
        ("a.json", "{", "a.json: not valid JSON"),
        ("a.json", "[1]", r"a.json\[0\]: expected an object with title and body, got int"),
        ("a.json", '{"title": "t", "body": "b", "priority": "high"}', "priority must be an integer"),
    ],
)
def test_a_bad_script_names_the_file_and_the_problem(name: str, text: str, message: str) -> None:
    with pytest.raises(NewsError, match=message):
        parse_script(name, text)
