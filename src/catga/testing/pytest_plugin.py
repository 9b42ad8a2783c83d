"""pytest plugin: fixtures giving tests real NATS JetStream, Redis and PostgreSQL servers on loopback.

Installing catga registers it with pytest (a ``pytest11`` entry point named after this module), so
the fixtures and markers are there in any project; ``pytest_plugins = ["catga.testing.pytest_plugin"]``
in a ``conftest.py`` (the way before the entry point) still works. ``-p no:catga.testing.pytest_plugin``
turns it off. Fixtures:

* ``nats_url`` (session): URL of a ``nats-server`` with JetStream.
* ``redis_url`` (session): URL of a ``redis-server`` (database 0).
* ``postgres_url`` (session): URL of a PostgreSQL server (user ``postgres``, database ``postgres``).
* ``nats_cluster`` (function): a :class:`~catga.testing.cluster.NatsCluster` of three JetStream nodes
  (started once per session), with every node running and a meta leader elected when the test starts.
* ``redis_cluster_session`` (session): a :class:`~catga.testing.redis_cluster.RedisCluster` of three
  primaries with one replica each, started on first use; ``redis_cluster`` (function) is the same
  cluster healed for the test (killed nodes restarted, every node ``ok``); ``redis_cluster_url``
  (session) is its ``redis+cluster://`` URL, or ``$CATGA_REDIS_CLUSTER_URL``.
* ``redis_sentinel_session`` (session): a :class:`~catga.testing.redis_sentinel.RedisSentinel`
  (a primary, one replica, three sentinels); ``redis_sentinel`` (function) the same set healed for
  the test; ``redis_sentinel_url`` (session) its ``redis+sentinel://`` URL, or
  ``$CATGA_REDIS_SENTINEL_URL``.
* ``unique_name`` (function): a short unique name for isolating streams, keys and prefixes.
* ``fake_clock`` (function): a :class:`~catga.testing.FakeClock` that catga reads for the test
  (:func:`catga.clock.use_clock`); ``with fake_clock.drive_loop():`` in an async test makes asyncio's
  timers follow it too.
* ``memory_bus`` (function): a :class:`~catga.testing.MemoryBus` for several apps on one in-memory broker.

The servers are started on free ports on first use and stopped at the end of the session (one
per pytest-xdist worker). If ``CATGA_NATS_URL`` / ``CATGA_REDIS_URL`` / ``CATGA_POSTGRES_URL`` are
set, those servers are used instead; they must be on loopback. A server that cannot start makes the
tests using it error with the reason; they are never skipped.

Markers (registered here, so ``--strict-markers`` accepts them): ``nats``, ``redis`` and ``postgres``.
A test that uses ``nats_url`` / ``nats_cluster``, ``redis_url`` or ``postgres_url`` gets the marker
itself, so ``pytest -m "not nats"`` deselects it without marking it by hand.

Async tests need an asyncio runner: catga's own is pytest-asyncio (``pip install "catga[testing]"``)
with ``asyncio_mode = "auto"``. An ``async def`` test that no plugin ran fails with a message saying
that, instead of pytest's bare "async def functions are not natively supported".
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator

import pytest

from catga.clock import use_clock
from catga.testing.bus import MemoryBus
from catga.testing.clock import FakeClock
from catga.testing.cluster import NatsCluster
from catga.testing.redis_cluster import RedisCluster
from catga.testing.redis_sentinel import RedisSentinel
from catga.testing.servers import NatsServer, RedisServer, url_from_env

__all__ = (
    "fake_clock",
    "MARKERS",
    "memory_bus",
    "nats_cluster",
    "nats_cluster_session",
    "nats_url",
    "postgres_url",
    "pytest_collection_modifyitems",
    "pytest_configure",
    "pytest_pyfunc_call",
    "redis_cluster",
    "redis_cluster_session",
    "redis_cluster_url",
    "redis_sentinel",
    "redis_sentinel_session",
    "redis_sentinel_url",
    "redis_url",
    "unique_name",
)

NATS_URL_ENV = "CATGA_NATS_URL"
REDIS_URL_ENV = "CATGA_REDIS_URL"
POSTGRES_URL_ENV = "CATGA_POSTGRES_URL"
REDIS_CLUSTER_URL_ENV = "CATGA_REDIS_CLUSTER_URL"
REDIS_SENTINEL_URL_ENV = "CATGA_REDIS_SENTINEL_URL"

#: The markers this plugin registers, and the fixtures that apply each of them to a test.
MARKERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "nats": (
        "needs a real nats-server with JetStream (started by the fixtures)",
        ("nats_url", "nats_cluster"),
    ),
    "redis": ("needs a real redis-server (started by the fixtures)", ("redis_url",)),
    "postgres": ("needs a real PostgreSQL server (started by the fixtures)", ("postgres_url",)),
}

_NO_ASYNC_RUNNER = (
    "{name} is an 'async def' test and no plugin ran it: with pytest-asyncio installed "
    '(pip install "catga[testing]"), set asyncio_mode = "auto" under [tool.pytest.ini_options] in '
    "pyproject.toml (or mark the test @pytest.mark.asyncio); see catga's docs/testing.md, Set-up"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register catga's markers (``nats``, ``redis``, ``postgres``) for ``--strict-markers``."""
    for name, (text, _) in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the server markers of the catga fixtures it uses."""
    for item in items:
        used = getattr(item, "fixturenames", ())
        for name, (_, fixtures) in MARKERS.items():
            if any(f in used for f in fixtures) and item.get_closest_marker(name) is None:
                item.add_marker(name)


def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> None:
    """Fail an ``async def`` test that reached pytest's own runner with how to run async tests.

    Async plugins (pytest-asyncio, anyio) swap the coroutine function for a runner before this
    hook, or run the test in a hook of their own first: only an unhandled coroutine gets here.
    """
    if inspect.iscoroutinefunction(pyfuncitem.obj):
        pytest.fail(_NO_ASYNC_RUNNER.format(name=pyfuncitem.nodeid), pytrace=False)


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    """URL of a NATS server with JetStream: ``$CATGA_NATS_URL`` or one started for the session."""
    url = url_from_env(NATS_URL_ENV)
    if url is not None:
        yield url
        return
    with NatsServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def nats_cluster_session() -> Iterator[NatsCluster]:
    """A 3-node JetStream cluster on loopback, started on first use and stopped with the session.

    Prefer :func:`nats_cluster`, which also brings back nodes an earlier test stopped or killed.
    """
    with NatsCluster(3) as cluster:
        yield cluster


@pytest.fixture
def nats_cluster(nats_cluster_session: NatsCluster) -> NatsCluster:
    """The session's 3-node cluster, healed for this test: every node up and a meta leader elected.

    Tests may stop, kill and restart nodes; the next test gets them back. Streams are shared by
    every test of the session: name them after ``unique_name``.
    """
    nats_cluster_session.heal()
    return nats_cluster_session


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a Redis server: ``$CATGA_REDIS_URL`` or one started for the session."""
    url = url_from_env(REDIS_URL_ENV)
    if url is not None:
        yield url
        return
    with RedisServer() as server:
        yield server.url


@pytest.fixture(scope="session")
def redis_cluster_session() -> Iterator[RedisCluster]:
    """A Redis Cluster (3 primaries + 3 replicas) on loopback, started on first use, stopped with the
    session. Prefer :func:`redis_cluster`, which also brings back nodes an earlier test killed."""
    with RedisCluster() as cluster:
        yield cluster


@pytest.fixture
def redis_cluster(redis_cluster_session: RedisCluster) -> RedisCluster:
    """The session's Redis Cluster, healed for this test: every node up, ``cluster_state:ok``.

    Tests may kill and restart nodes; the next test gets them back (a killed primary returns as a
    replica of the one promoted in its place). Keys are shared by every test: use ``unique_name``.
    """
    redis_cluster_session.heal()
    return redis_cluster_session


@pytest.fixture(scope="session")
def redis_cluster_url(request: pytest.FixtureRequest) -> str:
    """URL of a Redis Cluster: ``$CATGA_REDIS_CLUSTER_URL`` or the session's :func:`redis_cluster`."""
    url = url_from_env(REDIS_CLUSTER_URL_ENV)
    if url is not None:
        return url
    cluster: RedisCluster = request.getfixturevalue("redis_cluster_session")
    return cluster.url


@pytest.fixture(scope="session")
def redis_sentinel_session() -> Iterator[RedisSentinel]:
    """A primary, one replica and three sentinels on loopback, started on first use, stopped with the
    session. Prefer :func:`redis_sentinel`, which also brings back data nodes an earlier test killed."""
    with RedisSentinel() as sentinel:
        yield sentinel


@pytest.fixture
def redis_sentinel(redis_sentinel_session: RedisSentinel) -> RedisSentinel:
    """The session's Sentinel set, healed for this test (killed data nodes restarted and in sync)."""
    redis_sentinel_session.heal()
    return redis_sentinel_session


@pytest.fixture(scope="session")
def redis_sentinel_url(request: pytest.FixtureRequest) -> str:
    """URL of a Sentinel-managed Redis: ``$CATGA_REDIS_SENTINEL_URL`` or the session's set."""
    url = url_from_env(REDIS_SENTINEL_URL_ENV)
    if url is not None:
        return url
    sentinel: RedisSentinel = request.getfixturevalue("redis_sentinel_session")
    return sentinel.url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server: ``$CATGA_POSTGRES_URL`` or one started for the session."""
    url = url_from_env(POSTGRES_URL_ENV)
    if url is not None:
        yield url
        return
    from catga.testing.postgres import PostgresServer

    with PostgresServer() as server:
        yield server.url


@pytest.fixture
def unique_name() -> str:
    """A short unique name (``t`` + 12 hex digits), valid as a NATS stream name or Redis key."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def fake_clock() -> Iterator[FakeClock]:
    """A :class:`~catga.testing.FakeClock` (2025-01-01 UTC) that catga reads during the test."""
    with use_clock(FakeClock()) as clock:
        yield clock


@pytest.fixture
def memory_bus() -> MemoryBus:
    """A :class:`~catga.testing.MemoryBus`: build the test's apps with ``memory_bus.app(name)``."""
    return MemoryBus()
