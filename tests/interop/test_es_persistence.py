"""What catga.es_persistence promises beyond eventsourcing's own test cases: the loop-thread bridge,
errors, namespacing inside one store, atomicity across aggregates, and stopping a subscription."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import socket
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import Aggregate, event
from eventsourcing.persistence import (
    DataError,
    IntegrityError,
    Notification,
    NotSupportedError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)
from eventsourcing.system import ProcessApplication, SingleThreadedRunner, System

from catga.es_persistence import Factory

WAIT = 30.0


@pytest.fixture
def factory() -> Iterator[Factory]:
    factory = Factory({"CATGA_STORE_URL": "memory://"})
    yield factory
    factory.close()


def _event(oid: uuid.UUID | str, version: int, topic: str = "t") -> StoredEvent:
    return StoredEvent(originator_id=oid, originator_version=version, topic=topic, state=b"s%d" % version)


class Dog(Aggregate):
    @event("Registered")
    def __init__(self, name: str) -> None:
        self.name = name
        self.tricks: list[str] = []

    @event("TrickAdded")
    def add_trick(self, trick: str) -> None:
        self.tricks.append(trick)


class Trick(Aggregate):
    @event("Counted")
    def __init__(self, dog_id: uuid.UUID, trick: str) -> None:
        self.dog_id = dog_id
        self.trick = trick


class DogSchool(Application[uuid.UUID]):
    def register(self, name: str, *tricks: str) -> uuid.UUID:
        dog = Dog(name)
        for trick in tricks:
            dog.add_trick(trick)
        self.save(dog)
        return dog.id


class TrickCounter(ProcessApplication[uuid.UUID]):
    @singledispatchmethod
    def policy(self, domain_event: Any, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        """Other events: nothing to do."""

    @policy.register
    def _(self, domain_event: Dog.TrickAdded, processing_event: ProcessingEvent[uuid.UUID]) -> None:
        processing_event.collect_events(Trick(domain_event.originator_id, domain_event.trick))


def test_an_application_selects_it_by_persistence_module() -> None:
    app: Application[uuid.UUID] = Application(
        env={"PERSISTENCE_MODULE": "catga.es_persistence", "CATGA_STORE_URL": "memory://"}
    )
    try:
        assert isinstance(app.factory, Factory)
        dog = Dog("Fido")
        dog.add_trick("roll")
        app.save(dog)
        assert app.repository.get(dog.id).tricks == ["roll"]
        assert [n.originator_version for n in app.notification_log.select(start=1, limit=10)] == [1, 2]
    finally:
        app.close()


def test_snapshots_and_other_catga_events_stay_out_of_the_notifications(factory: Factory) -> None:
    events = factory.application_recorder()
    snapshots = factory.aggregate_recorder("snapshots")
    oid = uuid.uuid4()
    events.insert_events([_event(oid, 1)])
    snapshots.insert_events([_event(oid, 1, "snapshot")])

    @dataclasses.dataclass
    class Foreign:
        n: int

    factory._loop.run(factory.store.append("other-stream", [Foreign(1)]), WAIT, "append")
    events.insert_events([_event(oid, 2)])
    notes = events.select_notifications(None, 10)
    assert [(n.originator_version, n.topic) for n in notes] == [(1, "t"), (2, "t")]
    assert [n.id for n in notes] == [1, 4]  # the snapshot and the foreign event took positions 2 and 3
    assert events.max_notification_id() == 4  # the store's newest event is ours: one read
    factory._loop.run(factory.store.append("other-stream", [Foreign(2)]), WAIT, "append")
    assert events.max_notification_id() == 4  # the newest is foreign: scanned
    assert factory.application_recorder().max_notification_id() == 4  # a fresh recorder scans it all
    assert [e.topic for e in snapshots.select_events(oid)] == ["snapshot"]


def test_str_ids_read_back_as_str_and_bad_ids_are_data_errors(factory: Factory) -> None:
    recorder = factory.application_recorder()
    recorder.insert_events([_event("dog-1", 0)])
    assert recorder.select_events("dog-1")[0].originator_id == "dog-1"
    assert recorder.select_notifications(None, 1)[0].originator_id == "dog-1"
    with pytest.raises(DataError, match="stream id"):
        recorder.insert_events([_event("has space", 0)])


def test_a_conflict_on_one_aggregate_stores_nothing_of_the_insert(factory: Factory) -> None:
    recorder = factory.application_recorder()
    a, b = uuid.uuid4(), uuid.uuid4()
    recorder.insert_events([_event(b, 1)])
    with pytest.raises(IntegrityError, match="already has version 1"):
        recorder.insert_events([_event(a, 1), _event(b, 1)])
    assert recorder.select_events(a) == []
    assert recorder.max_notification_id() == 1


def test_racing_writers_of_one_version_one_wins(factory: Factory) -> None:
    recorder = factory.application_recorder()
    oid = uuid.uuid4()
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(i: int) -> None:
        barrier.wait()
        try:
            recorder.insert_events([_event(oid, 1, f"writer{i}")])
            outcomes.append("ok")
        except IntegrityError:
            outcomes.append("conflict")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert sorted(outcomes) == ["conflict"] * 7 + ["ok"]
    assert len(recorder.select_events(oid)) == 1


def test_called_from_inside_a_running_event_loop(factory: Factory) -> None:
    recorder = factory.application_recorder()

    async def main() -> list[int]:
        ids = recorder.insert_events([_event(uuid.uuid4(), 1)])  # blocks this loop for the call, works
        assert ids == [1]
        return list(await asyncio.to_thread(recorder.insert_events, [_event(uuid.uuid4(), 1)]) or [])

    assert asyncio.run(main()) == [2]


def test_called_from_its_own_loop_thread_is_refused_not_a_deadlock(factory: Factory) -> None:
    recorder = factory.application_recorder()

    async def inside() -> None:
        recorder.select_notifications(None, 1)

    with pytest.raises(ProgrammingError, match="own event loop thread"):
        factory._loop.run(inside(), WAIT, "inside")


def test_stop_unblocks_a_waiting_subscription(factory: Factory) -> None:
    recorder = factory.application_recorder()
    oid = uuid.uuid4()
    recorder.insert_events([_event(oid, 1)])
    got: list[Notification] = []
    arrived = [threading.Event(), threading.Event()]
    with recorder.subscribe(gt=None) as subscription:

        def consume() -> None:
            for note in subscription:
                got.append(note)
                arrived[len(got) - 1].set()

        thread = threading.Thread(target=consume)
        thread.start()
        assert arrived[0].wait(WAIT)
        recorder.insert_events([_event(oid, 2)])  # a live one, while the consumer waits
        assert arrived[1].wait(WAIT)
        subscription.stop()  # the consumer is blocked in next() again: stop() must wake it
        thread.join(WAIT)
    assert not thread.is_alive()
    assert [n.originator_version for n in got] == [1, 2]


def test_tracking_ids_grow_per_application_and_process_recorders_need_postgres(factory: Factory) -> None:
    tracking = factory.tracking_recorder()
    tracking.insert_tracking(Tracking("upstream", 5))
    with pytest.raises(IntegrityError, match="already has version 5"):
        tracking.insert_tracking(Tracking("upstream", 5))
    assert tracking.max_tracking_id("upstream") == 5
    assert factory.application_recorder().max_notification_id() is None  # tracking is not a notification
    with pytest.raises(PersistenceError, match="not a CatgaTrackingRecorder subclass"):
        factory.tracking_recorder(TrackingRecorder)  # type: ignore[arg-type]
    with pytest.raises(NotSupportedError, match="MemoryEventStore cannot do across streams"):
        factory.process_recorder()


def test_bad_settings_name_the_setting() -> None:
    with pytest.raises(PersistenceError, match=r"CATGA_STORE_URL.*unsupported scheme 'ftp'"):
        Factory({"CATGA_STORE_URL": "ftp://127.0.0.1"})
    with pytest.raises(PersistenceError, match="CATGA_CALL_TIMEOUT must be a number of seconds"):
        Factory({"CATGA_CALL_TIMEOUT": "soon"})


def test_an_unreachable_server_is_an_operational_error() -> None:
    with socket.socket() as s:  # a free loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    factory = Factory({"CATGA_STORE_URL": f"redis://127.0.0.1:{port}/0", "CATGA_TIMEOUT": "2"})
    factory.mapper()  # a factory that only makes a mapper never connects (eventsourcing's followers)
    with pytest.raises(OperationalError, match="CATGA_STORE_URL"):
        factory.application_recorder()
    factory.close()


def test_close_is_idempotent_and_later_calls_say_so() -> None:
    factory = Factory({"CATGA_STORE_URL": "memory://"})
    recorder = factory.application_recorder()
    factory.close()
    factory.close()
    with pytest.raises(ProgrammingError, match="factory is closed"):
        recorder.max_notification_id()


def test_the_docs_example_runs_as_written(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    text = (Path(__file__).resolve().parents[2] / "docs" / "event-sourcing.md").read_text()
    section = text.split("## Running an eventsourcing application on catga's stores\n", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)[0]
    module = types.ModuleType("es_docs_example")  # eventsourcing resolves the aggregate's topic
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(code, "docs/event-sourcing.md", "exec"), module.__dict__)
    assert capsys.readouterr().out.splitlines() == ["['roll over']", "[1, 2]"]


@pytest.mark.postgres
def test_on_postgres_an_insert_of_several_aggregates_is_one_transaction(postgres_url: str) -> None:
    """An event over the payload limit on the second aggregate (not a conflict, so not found up front)."""
    table = f"es_{uuid.uuid4().hex[:12]}"
    factory = Factory({"CATGA_STORE_URL": postgres_url, "CATGA_STORE_TABLE": table})
    try:
        recorder = factory.application_recorder()
        a, b = uuid.uuid4(), uuid.uuid4()
        huge = StoredEvent(originator_id=b, originator_version=1, topic="t", state=b"x" * (2 << 20))
        with pytest.raises(DataError, match="PayloadTooLargeError"):
            recorder.insert_events([_event(a, 1), huge])
        assert recorder.select_events(a) == []  # rolled back with the second aggregate
        assert recorder.max_notification_id() is None
        assert recorder.insert_events([_event(a, 1), _event(b, 1)]) == [1, 2]
    finally:
        factory.close()


def test_elsewhere_the_aggregates_before_a_failure_stay_stored(factory: Factory) -> None:
    """What the docs say about memory, Redis, NATS and SQLite: atomic per aggregate only."""
    recorder = factory.application_recorder()
    a, b = uuid.uuid4(), uuid.uuid4()

    huge = StoredEvent(originator_id=b, originator_version=1, topic="t", state=b"x" * (2 << 20))
    with pytest.raises(DataError, match="PayloadTooLargeError"):
        recorder.insert_events([_event(a, 1), huge])
    assert [e.originator_version for e in recorder.select_events(a)] == [1]
    assert recorder.select_events(b) == []


def test_closing_the_factory_ends_a_waiting_subscription_with_an_error() -> None:
    factory = Factory({"CATGA_STORE_URL": "memory://"})
    recorder = factory.application_recorder()
    outcome: list[BaseException] = []
    subscription = recorder.subscribe(gt=None)
    started = threading.Event()

    def consume() -> None:
        started.set()
        try:
            next(subscription)  # nothing recorded: blocks on the loop thread
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=consume)
    thread.start()
    assert started.wait(WAIT)
    factory.close()  # whether the consumer is already blocked or not: it must not wait forever
    thread.join(WAIT)
    assert not thread.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ProgrammingError), outcome


@pytest.mark.parametrize(
    "versions", [list(range(1, 41)), list(range(0, 40)), [*range(1, 21), *range(100, 120)]]
)
def test_events_after_a_snapshot_version_with_and_without_gaps(factory: Factory, versions: list[int]) -> None:
    recorder = factory.aggregate_recorder()
    oid = uuid.uuid4()
    recorder.insert_events([_event(oid, v) for v in versions])
    for gt in (0, 15, 16, 20, 30, 39, 40, 99, 110, 119, 500):
        expected = [v for v in versions if v > gt]
        assert [e.originator_version for e in recorder.select_events(oid, gt=gt)] == expected, gt
        got = recorder.select_events(oid, gt=gt, lte=gt + 5, desc=True, limit=2)
        assert [e.originator_version for e in got] == [v for v in reversed(versions) if gt < v <= gt + 5][:2]


@pytest.mark.postgres
def test_an_eventsourcing_system_runs_on_one_postgres_store(postgres_url: str) -> None:
    """A leader and a process application (eventsourcing's systems) sharing one table: each application
    is its own namespace, and the follower's events and tracking records commit together."""
    system = System(pipes=[[DogSchool, TrickCounter]])
    env = {
        "PERSISTENCE_MODULE": "catga.es_persistence",
        "CATGA_STORE_URL": postgres_url,
        "CATGA_STORE_TABLE": f"es_{uuid.uuid4().hex[:12]}",
    }
    runner: SingleThreadedRunner[uuid.UUID] = SingleThreadedRunner(system, env=env)
    runner.start()
    try:
        school = runner.get(DogSchool)
        counter = runner.get(TrickCounter)
        school.register("Fido", "roll over", "play dead")
        school.register("Rex", "sit")
        leader_log = school.notification_log.select(start=1, limit=10)
        kinds = [n.topic.rsplit(".", 1)[-1] for n in leader_log]
        # only the school's events: the counter's share the table, in their own namespace
        assert kinds == ["Registered", "TrickAdded", "TrickAdded", "Registered", "TrickAdded"]
        counted = counter.notification_log.select(start=1, limit=10)
        assert len(counted) == 3
        tricks = sorted(counter.repository.get(n.originator_id).trick for n in counted)
        assert tricks == ["play dead", "roll over", "sit"]
        assert counter.recorder.max_tracking_id("DogSchool") == leader_log[-1].id
    finally:
        runner.stop()
