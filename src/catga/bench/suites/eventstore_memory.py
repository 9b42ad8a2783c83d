"""In-memory event store: catga's :class:`~catga.memory.MemoryEventStore` against eventsourcing's POPO.

Cases:

* ``append``: append 1 event to one of 1,000 streams. catga uses ``expected_version=ANY``; eventsourcing
  has no "any version" mode, so each worker owns a disjoint set of streams and tracks their next
  version itself (the same stream choice is used for every implementation).
* ``read_10``: read a whole 10-event stream (one of 100).

Implementations:

* ``catga``: ``await store.append(...)`` / ``await store.read(...)`` from asyncio tasks.
* ``catga-threads``: the same store through ``append_sync`` / ``read_sync`` from OS threads.
* ``eventsourcing``: its in-memory recorder (``eventsourcing.popo.POPOApplicationRecorder``, which keeps a
  global notification order like catga's positions) called with ready-made ``StoredEvent`` objects
  (``insert_events`` / ``select_events``), from OS threads: the library is synchronous.
* ``eventsourcing-app``: the application level (``Application.save`` of an aggregate with one new event
  / ``repository.get`` of a 10-event aggregate, POPO persistence), from OS threads. It includes
  aggregate mapping and JSON transcoding, so it is the figure an eventsourcing user sees, not the
  storage alone.

The catga operations hand the store's own awaitable to the harness (no wrapper coroutine is timed),
as the mediator suite does for every implementation.

catga stores event objects as given (no registry in this suite); the eventsourcing recorder stores bytes
its caller already serialised. Each is measured through its natural API.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from catga.bench.harness import BenchCase, BenchEnv, Op, SyncOp
from catga.memory import MemoryEventStore
from catga.messages import Event
from catga.protocols import ANY, StoredEvent

__all__ = ("SUITE", "cases")

SUITE = "eventstore-memory"

STREAMS = 1_000
READ_STREAMS = 100
READ_LENGTH = 10


class Deposited(msgspec.Struct, Event, frozen=True):
    """The benchmark's event."""

    account: str
    amount: int


_EVENT = Deposited("acc", 1)
_STATE = msgspec.json.encode(_EVENT)
_TOPIC = "catga.bench:Deposited"


class _Streams:
    """Which stream worker ``w`` appends to next: worker ``w`` owns streams ``w, w + W, w + 2W, ...``.

    Ownership is disjoint (``W`` = the run's highest concurrency), so a worker's own version counters
    are never raced, as eventsourcing needs; catga uses the same choice for a like-for-like load.
    """

    def __init__(self, env: BenchEnv) -> None:
        self.width = max(1, min(env.max_concurrency, STREAMS))
        self.per_worker = STREAMS // self.width
        self.turn = [0] * self.width

    def next(self, worker: int) -> int:
        k = self.turn[worker]
        self.turn[worker] = k + 1
        return worker + self.width * (k % self.per_worker)


# --------------------------------------------------------------------------------------------------
# catga


@asynccontextmanager
async def _catga_append(env: BenchEnv) -> AsyncIterator[Op]:
    async with MemoryEventStore() as store:
        ids = [f"acc-{i}" for i in range(STREAMS)]
        streams = _Streams(env)
        pick = streams.next
        append = store.append
        events = (_EVENT,)

        def op(worker: int) -> Awaitable[int]:
            return append(ids[pick(worker)], events, ANY)

        yield op


@asynccontextmanager
async def _catga_read(env: BenchEnv) -> AsyncIterator[Op]:
    async with MemoryEventStore() as store:
        ids = [f"acc-{i}" for i in range(READ_STREAMS)]
        for sid in ids:
            store.append_sync(sid, [Deposited(sid, n) for n in range(READ_LENGTH)])
        streams = _Streams(env)
        pick = streams.next
        read = store.read

        def op(worker: int) -> Awaitable[list[StoredEvent]]:
            return read(ids[pick(worker) % READ_STREAMS])

        yield op


@asynccontextmanager
async def _catga_threads_append(env: BenchEnv) -> AsyncIterator[SyncOp]:
    async with MemoryEventStore() as store:
        ids = [f"acc-{i}" for i in range(STREAMS)]
        pick = _Streams(env).next
        append = store.append_sync
        events = (_EVENT,)

        def op(worker: int) -> None:
            append(ids[pick(worker)], events, ANY)

        yield op


@asynccontextmanager
async def _catga_threads_read(env: BenchEnv) -> AsyncIterator[SyncOp]:
    async with MemoryEventStore() as store:
        ids = [f"acc-{i}" for i in range(READ_STREAMS)]
        for sid in ids:
            store.append_sync(sid, [Deposited(sid, n) for n in range(READ_LENGTH)])
        pick = _Streams(env).next
        read = store.read_sync

        def op(worker: int) -> None:
            read(ids[pick(worker) % READ_STREAMS])

        yield op


# --------------------------------------------------------------------------------------------------
# eventsourcing: the POPO recorder


@asynccontextmanager
async def _es_recorder_append(env: BenchEnv) -> AsyncIterator[SyncOp]:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.popo import POPOApplicationRecorder

    recorder = POPOApplicationRecorder()
    ids = [uuid.uuid4() for _ in range(STREAMS)]
    next_version = [1] * STREAMS
    pick = _Streams(env).next
    insert = recorder.insert_events

    def op(worker: int) -> None:
        j = pick(worker)
        version = next_version[j]
        next_version[j] = version + 1
        insert([StoredEvent(ids[j], version, _TOPIC, _STATE)])

    yield op


@asynccontextmanager
async def _es_recorder_read(env: BenchEnv) -> AsyncIterator[SyncOp]:
    from eventsourcing.persistence import StoredEvent
    from eventsourcing.popo import POPOApplicationRecorder

    recorder = POPOApplicationRecorder()
    ids = [uuid.uuid4() for _ in range(READ_STREAMS)]
    for oid in ids:
        recorder.insert_events([StoredEvent(oid, v, _TOPIC, _STATE) for v in range(1, READ_LENGTH + 1)])
    if len(recorder.select_events(ids[0])) != READ_LENGTH:
        raise RuntimeError("eventsourcing recorder set-up did not store 10 events")
    pick = _Streams(env).next
    select = recorder.select_events

    def op(worker: int) -> None:
        select(ids[pick(worker) % READ_STREAMS])

    yield op


# --------------------------------------------------------------------------------------------------
# eventsourcing: the application level


_ES_CLASSES: list[Any] = []


def _es_app() -> tuple[Any, Any]:
    """A new POPO application and the aggregate class (defined once: eventsourcing registers topics)."""
    if not _ES_CLASSES:
        from eventsourcing.application import Application
        from eventsourcing.domain import Aggregate, event

        class Account(Aggregate):
            @event("Opened")
            def __init__(self, owner: str) -> None:
                self.owner = owner
                self.balance = 0

            @event("Deposited")
            def deposit(self, amount: int) -> None:
                self.balance += amount

        class Bank(Application[uuid.UUID]):
            pass

        _ES_CLASSES.extend((Bank, Account))
    bank, account = _ES_CLASSES
    return bank(env={"PERSISTENCE_MODULE": "eventsourcing.popo"}), account


@asynccontextmanager
async def _es_app_append(env: BenchEnv) -> AsyncIterator[SyncOp]:
    app, account = _es_app()
    accounts = [account(owner=f"o{i}") for i in range(STREAMS)]
    app.save(*accounts)
    pick = _Streams(env).next
    save = app.save

    def op(worker: int) -> None:
        acc = accounts[pick(worker)]
        acc.deposit(1)
        save(acc)

    try:
        yield op
    finally:
        app.close()


@asynccontextmanager
async def _es_app_read(env: BenchEnv) -> AsyncIterator[SyncOp]:
    app, account = _es_app()
    ids = []
    for i in range(READ_STREAMS):
        acc = account(owner=f"o{i}")
        for _ in range(READ_LENGTH - 1):
            acc.deposit(1)
        app.save(acc)
        ids.append(acc.id)
    if app.repository.get(ids[0]).version != READ_LENGTH:
        raise RuntimeError("eventsourcing application set-up did not store 10 events")
    pick = _Streams(env).next
    get = app.repository.get

    def op(worker: int) -> None:
        get(ids[pick(worker) % READ_STREAMS])

    try:
        yield op
    finally:
        app.close()


def cases(env: BenchEnv) -> list[BenchCase]:
    """The suite's cases (see the module docstring)."""
    threads = "sync, OS threads"
    return [
        BenchCase("append", "catga", _catga_append, note="await append(1 event, ANY), 1,000 streams"),
        BenchCase(
            "append", "catga-threads", _catga_threads_append, mode="threads", note=f"append_sync; {threads}"
        ),
        BenchCase(
            "append",
            "eventsourcing",
            _es_recorder_append,
            mode="threads",
            note=f"POPO insert_events; {threads}",
        ),
        BenchCase(
            "append",
            "eventsourcing-app",
            _es_app_append,
            mode="threads",
            note=f"Application.save(aggregate + 1 event), POPO; {threads}",
        ),
        BenchCase("read_10", "catga", _catga_read, note="await read(stream of 10 events)"),
        BenchCase(
            "read_10", "catga-threads", _catga_threads_read, mode="threads", note=f"read_sync; {threads}"
        ),
        BenchCase(
            "read_10",
            "eventsourcing",
            _es_recorder_read,
            mode="threads",
            note=f"POPO select_events; {threads}",
        ),
        BenchCase(
            "read_10",
            "eventsourcing-app",
            _es_app_read,
            mode="threads",
            note=f"repository.get(10-event aggregate), POPO; {threads}",
        ),
    ]
