from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from anchor.bench.processes import free_port
from anchor.news.database import open_database
from anchor.testing.postgres import postgres_bin, running_postgres

ENGINE_CACHE = "ANCHOR_ENGINES__CACHE_DIR"
_OWN_CACHE = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="run benchmarks and soak tests")


def pytest_configure(config: pytest.Config) -> None:
    """One engine cache for the run (set before collection, so module-level settings see it too): each
    model is exported once, by the first test that needs it, never read from an older run's cache and
    never written into the user's. A cache given in the environment is used as it is."""
    if ENGINE_CACHE not in os.environ:
        os.environ[ENGINE_CACHE] = tempfile.mkdtemp(prefix="anchor-test-engines-")
        config.stash[_OWN_CACHE] = Path(os.environ[ENGINE_CACHE])


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_CACHE, None)
    if own is not None:
        shutil.rmtree(own, ignore_errors=True)
        del os.environ[ENGINE_CACHE]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip = pytest.mark.skip(reason="slow: pass --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def engine_cache() -> Path:
    """The run's engine cache (ONNX exports, backend choices), for settings built without the environment."""
    return Path(os.environ[ENGINE_CACHE])


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail any test that leaves a task running on its event loop."""
    yield
    await asyncio.sleep(0)
    current = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    if leftover:
        for task in leftover:
            task.cancel()
        pytest.fail(f"test leaked {len(leftover)} task(s): {sorted(t.get_name() for t in leftover)}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server of this test process's own (Debian's package; CI installs it and sets
    ``ANCHOR_TEST_REQUIRE_CLUSTER`` so that a missing server fails instead of skipping)."""
    if postgres_bin() is None:
        if os.environ.get("ANCHOR_TEST_REQUIRE_CLUSTER"):
            pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with running_postgres(port=free_port()) as url:
        yield url


async def _empty(url: str) -> None:
    db = open_database(url)
    await db.open()
    for table in ("news_items", "news_files", "anchor_sessions"):
        await db.execute(f"DELETE FROM {table}")
    await db.aclose()


@pytest.fixture
async def clean_postgres(postgres_url: str) -> AsyncIterator[str]:
    """The test server's PostgreSQL with no news and no sessions (a session another test left wanted
    would be restarted by this test's workers)."""
    await _empty(postgres_url)
    yield postgres_url
    await _empty(postgres_url)


@pytest.fixture(params=["sqlite", "postgresql"])
async def news_database(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Path | str]:
    """The news database, on each backend: a fresh SQLite file, or the test server's PostgreSQL emptied
    after the test."""
    if request.param == "sqlite":
        yield tmp_path / "news.db"
        return
    url: str = request.getfixturevalue("postgres_url")
    await _empty(url)
    yield url
    await _empty(url)
