"""eventsourcing's own recorder and application test cases, bound to ``catga.es_persistence`` on
every catga event store (memory, SQLite, Redis, NATS, PostgreSQL).

The test cases are eventsourcing's (``eventsourcing.tests.persistence`` and
``eventsourcing.tests.application``), unchanged: each binding only says how to make a recorder on a
fresh store (a new memory store, a unique Redis/NATS prefix, a unique table). What cannot pass on a
store is marked ``xfail(strict=True)`` with its reason, which ``docs/event-sourcing.md`` repeats.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests import application as es_application
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment, EnvType, get_topic

from catga.es_persistence import (
    CatgaAggregateRecorder,
    CatgaApplicationRecorder,
    CatgaProcessRecorder,
    CatgaTrackingRecorder,
    Factory,
)

NO_PROCESS_RECORDER = (
    "a process recorder writes the tracking record and the events in one atomic write, which only the "
    "PostgreSQL store can do across streams"
)
NOT_CONTIGUOUS = (
    "NATS positions are seq << 10 | index (catga.nats.event_store), so notification ids are not 1, 2, 3"
)


class TrackedFactory(Factory):
    """The factory, remembering its instances so a test closes what an application left open."""

    instances: ClassVar[list[Factory]] = []

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        TrackedFactory.instances.append(self)


def _close_all() -> None:
    while TrackedFactory.instances:
        TrackedFactory.instances.pop().close()


def _with_query(url: str, option: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{option}"


class _Binding:
    """How each test gets a fresh store: ``env`` is set by the backend's autouse fixture."""

    env: dict[str, str]

    def factory(self) -> Factory:
        factory = TrackedFactory(self.env)
        self.addCleanup(_close_all)  # type: ignore[attr-defined]
        return factory

    def create_recorder(self) -> Any:
        return self.factory().application_recorder()


class _Aggregate(_Binding):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory().aggregate_recorder()


class _Application(_Binding):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()

    def test_insert_subscribe(self) -> None:
        self.optional_test_insert_subscribe()  # type: ignore[attr-defined]


class _Tracking(_Binding):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory().tracking_recorder()


class _Process(_Binding):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory().process_recorder()


class _Example(_Binding):
    expected_factory_topic = get_topic(TrackedFactory)

    def setUp(self) -> None:
        self._saved = dict(os.environ)
        os.environ.update(self.env, PERSISTENCE_MODULE=get_topic(TrackedFactory))
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        os.environ.clear()
        os.environ.update(self._saved)
        _close_all()


# --- the stores ------------------------------------------------------------------------------------


class _Memory:
    @pytest.fixture(autouse=True)
    def _store(self) -> None:
        self.env = {"CATGA_STORE_URL": "memory://"}


class _Sqlite:
    @pytest.fixture(autouse=True)
    def _store(self, tmp_path: Path) -> None:
        self.env = {"CATGA_STORE_URL": f"sqlite://{tmp_path / 'es.db'}"}


class _Redis:
    @pytest.fixture(autouse=True)
    def _store(self, redis_url: str) -> None:
        self.env = {"CATGA_STORE_URL": _with_query(redis_url, f"prefix=es{uuid.uuid4().hex[:12]}")}


class _Nats:
    EXPECT_CONTIGUOUS_NOTIFICATION_IDS = False

    @pytest.fixture(autouse=True)
    def _store(self, nats_url: str) -> None:
        self.env = {
            "CATGA_STORE_URL": _with_query(nats_url, f"prefix=es{uuid.uuid4().hex[:12]}&storage=memory")
        }


class _Postgres:
    @pytest.fixture(autouse=True)
    def _store(self, postgres_url: str) -> Iterator[None]:
        self.env = {"CATGA_STORE_URL": postgres_url, "CATGA_STORE_TABLE": f"es_{uuid.uuid4().hex[:12]}"}
        yield


class TestMemoryAggregateRecorder(_Memory, _Aggregate, AggregateRecorderTestCase):
    pass


class TestMemoryApplicationRecorder(_Memory, _Application, ApplicationRecorderTestCase):
    pass


class TestMemoryApplication(_Memory, _Example, es_application.ExampleApplicationTestCase):
    pass


class TestMemoryTrackingRecorder(_Memory, _Tracking, TrackingRecorderTestCase):
    pass


class TestMemoryNonInterleaving(_Memory, _Binding, NonInterleavingNotificationIDsBaseCase):
    pass


class TestSqliteAggregateRecorder(_Sqlite, _Aggregate, AggregateRecorderTestCase):
    pass


class TestSqliteApplicationRecorder(_Sqlite, _Application, ApplicationRecorderTestCase):
    pass


class TestSqliteApplication(_Sqlite, _Example, es_application.ExampleApplicationTestCase):
    pass


class TestSqliteTrackingRecorder(_Sqlite, _Tracking, TrackingRecorderTestCase):
    pass


class TestSqliteNonInterleaving(_Sqlite, _Binding, NonInterleavingNotificationIDsBaseCase):
    pass


@pytest.mark.redis
class TestRedisAggregateRecorder(_Redis, _Aggregate, AggregateRecorderTestCase):
    pass


@pytest.mark.redis
class TestRedisApplicationRecorder(_Redis, _Application, ApplicationRecorderTestCase):
    pass


@pytest.mark.redis
class TestRedisApplication(_Redis, _Example, es_application.ExampleApplicationTestCase):
    pass


@pytest.mark.redis
class TestRedisTrackingRecorder(_Redis, _Tracking, TrackingRecorderTestCase):
    pass


@pytest.mark.redis
class TestRedisNonInterleaving(_Redis, _Binding, NonInterleavingNotificationIDsBaseCase):
    pass


@pytest.mark.nats
class TestNatsAggregateRecorder(_Nats, _Aggregate, AggregateRecorderTestCase):
    pass


@pytest.mark.nats
class TestNatsApplicationRecorder(_Nats, _Application, ApplicationRecorderTestCase):
    @pytest.mark.xfail(strict=True, reason=NOT_CONTIGUOUS)
    def test_insert_select(self) -> None:
        super().test_insert_select()


@pytest.mark.nats
class TestNatsApplication(_Nats, _Example, es_application.ExampleApplicationTestCase):
    pass


@pytest.mark.nats
class TestNatsTrackingRecorder(_Nats, _Tracking, TrackingRecorderTestCase):
    pass


@pytest.mark.nats
class TestNatsNonInterleaving(_Nats, _Binding, NonInterleavingNotificationIDsBaseCase):
    pass


@pytest.mark.postgres
class TestPostgresAggregateRecorder(_Postgres, _Aggregate, AggregateRecorderTestCase):
    pass


@pytest.mark.postgres
class TestPostgresApplicationRecorder(_Postgres, _Application, ApplicationRecorderTestCase):
    pass


@pytest.mark.postgres
class TestPostgresApplication(_Postgres, _Example, es_application.ExampleApplicationTestCase):
    pass


@pytest.mark.postgres
class TestPostgresTrackingRecorder(_Postgres, _Tracking, TrackingRecorderTestCase):
    pass


@pytest.mark.postgres
class TestPostgresNonInterleaving(_Postgres, _Binding, NonInterleavingNotificationIDsBaseCase):
    pass


@pytest.mark.postgres
class TestPostgresProcessRecorder(_Postgres, _Process, ProcessRecorderTestCase):
    """Only PostgreSQL can write the events and the tracking record in one transaction."""


class MyView(CatgaTrackingRecorder):
    """A tracking recorder subclass, as an eventsourcing projection's view would be."""


class _FactoryCase:
    """What eventsourcing's factory test case asks of a binding; ``env`` is set by the backend's
    autouse fixture."""

    env: Any

    def setUp(self) -> None:
        self.env = Environment(env={**self.env, "PERSISTENCE_MODULE": "catga.es_persistence"})
        super().setUp()  # type: ignore[misc]

    def expected_factory_class(self) -> type[Factory]:
        return Factory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return CatgaAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return CatgaApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return CatgaTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return MyView

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return CatgaProcessRecorder


class TestMemoryFactory(_Memory, _FactoryCase, InfrastructureFactoryTestCase[Factory]):
    @pytest.mark.xfail(strict=True, reason=NO_PROCESS_RECORDER)
    def test_create_process_recorder(self) -> None:
        super().test_create_process_recorder()


@pytest.mark.postgres
class TestPostgresFactory(_Postgres, _FactoryCase, InfrastructureFactoryTestCase[Factory]):
    pass
