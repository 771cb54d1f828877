"""Shared fixtures: real gateways on loopback, and one scaled time limit."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from nbchat import Chat
from nbchat.gateway import EmbeddedGateway, Gateway
from nbchat.local_models import MODELS

from redis_server import RedisServer
from replay_server import Replay

# A fixed budget in CI. For a long run (about 4 minutes):
#   HYPOTHESIS_PROFILE=long .venv/bin/pytest --timeout=0 tests/test_fuzz.py
settings.register_profile("ci", max_examples=300, deadline=None, derandomize=True)
settings.register_profile("long", max_examples=50_000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def forget_registered_models() -> Iterator[None]:
    """The registry of Python functions as models is the process's: what a test
    registers (Chat(model=fn) does) goes with it, so no other test sees it offered."""
    before = set(MODELS.names())
    yield
    for name in set(MODELS.names()) - before:
        MODELS.remove(name)


@pytest.fixture
def replay() -> Iterator[Replay]:
    """The replay server of recorded provider streams (tests/replay_server.py)."""
    server = Replay().start()
    yield server
    server.close()


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own (tests/redis_server.py); skipped without the
    binary, which NBCHAT_REQUIRE_ALL (CI) turns into a failure."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def embedded() -> Iterator[EmbeddedGateway]:
    """A fresh gateway of its own on a free loopback port, with a token."""
    gateway = EmbeddedGateway(Gateway(token="test-token")).start()
    yield gateway
    gateway.close()


@pytest.fixture
def chat(embedded: EmbeddedGateway) -> Iterator[Chat]:
    """A Chat on its own gateway, streaming fast."""
    with Chat(url=embedded.url, token=embedded.token, tokens_per_s=0) as chat:
        yield chat


@pytest.fixture
async def gateway() -> AsyncIterator[Gateway]:
    """A gateway running on the test's own event loop, for raw WebSocket tests."""
    gateway = Gateway()
    await gateway.start("127.0.0.1", 0)
    yield gateway
    await gateway.close()


REQUIRE_ALL = os.environ.get("NBCHAT_REQUIRE_ALL") == "1"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI (NBCHAT_REQUIRE_ALL=1, set by .ci/run) a test that cannot run fails instead
    of skipping, so a missing browser or Redis never passes silently."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_ALL and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but NBCHAT_REQUIRE_ALL=1 forbids skips: {report.longrepr}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Browser tests last: they are the slowest, and Playwright's sync API keeps an event
    # loop running on the main thread while its fixtures live, which asyncio tests
    # collected after them could not share.
    items.sort(key=lambda item: item.get_closest_marker("browser") is not None)
