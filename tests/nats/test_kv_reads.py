"""Read-your-writes on replicated KV-layout buckets (catga.nats._kv): a bucket object's reads are
answered only by a replica holding every stream sequence it wrote or read (its ``seen`` mark).

nats-server has no ``min_last_seq`` on direct gets (ADR-53's field was removed before 2.12.0 and is
ignored), so the check is the client's: a multi-last direct get reports the answering replica's last
sequence (``Nats-UpTo-Sequence``). These tests run on the 3-node cluster, with the bucket's reads and
writes on different nodes, and check the ADR's recommended case -- a read asking for a sequence beyond
the stream's last is held and refused, and succeeds once a write reaches it -- and that the workflow
store's reads carry its mark after its own writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator

import pytest

from catga.errors import BackendError
from catga.nats import NatsConnection, NatsWorkflowStore
from catga.nats._jsapi import direct_last_of
from catga.nats._kv import KvBucket
from catga.nats._wire import Reply
from catga.testing import NatsCluster
from catga.workflows import SLEEPING, HistoryEntry, WorkflowInstance

pytestmark = pytest.mark.nats

_UP_TO = re.compile(rb"Nats-UpTo-Sequence: (\d+)")


@pytest.fixture
async def nodes(
    nats_cluster: NatsCluster, unique_name: str
) -> AsyncIterator[tuple[NatsConnection, NatsConnection]]:
    """Connections to two different nodes of the cluster."""
    async with (
        await NatsConnection.connect(nats_cluster.node(0).url, name="catga-tests-a") as one,
        await NatsConnection.connect(nats_cluster.node(1).url, name="catga-tests-b") as other,
    ):
        yield one, other
        with contextlib.suppress(Exception):
            await one.js.delete_stream(f"KV_{unique_name}")


def _bucket(conn: NatsConnection, name: str, timeout: float = 5.0) -> KvBucket:
    return KvBucket(conn, name, kind="key", replicas=3, timeout=timeout)


async def test_a_read_beyond_the_streams_last_sequence_is_held_then_refused(
    nodes: tuple[NatsConnection, NatsConnection], unique_name: str
) -> None:
    one, other = nodes
    reader, writer = _bucket(one, unique_name, timeout=0.5), _bucket(other, unique_name)
    revision = await writer.write("k", b"v1", last=None)
    assert revision is not None
    reader.seen = revision + 2  # a sequence no replica holds yet
    with pytest.raises(BackendError, match=f"did not hold sequence {revision + 2} yet"):
        await reader.get("k")
    # an absent key is asked of the leader, whose "not found" holds every write
    assert await reader.get("absent") is None


async def test_a_read_beyond_the_streams_last_sequence_succeeds_once_a_write_reaches_it(
    nodes: tuple[NatsConnection, NatsConnection], unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, other = nodes
    reader, writer = _bucket(one, unique_name, timeout=30.0), _bucket(other, unique_name)
    first = await writer.write("k", b"v1", last=None)
    assert first is not None
    reader.seen = first + 2
    answered = asyncio.Event()
    request_many = reader._wire.request_many

    async def noting(subject: bytes, payload: bytes, *, timeout: float) -> list[Reply]:
        replies = await request_many(subject, payload, timeout=timeout)
        answered.set()
        return replies

    monkeypatch.setattr(reader._wire, "request_many", noting)
    read = asyncio.create_task(reader.get("k"))
    await answered.wait()  # a replica answered the read without sequence first + 2: it is held
    assert not read.done()
    assert await writer.write("other", b"x", last=None) == first + 1
    assert await writer.write("k", b"v2", last=first) == first + 2
    entry = await read
    assert entry is not None and (entry.value, entry.revision) == (b"v2", first + 2)
    assert reader.seen == first + 2


async def test_reads_are_monotonic_and_see_the_objects_own_writes(
    nodes: tuple[NatsConnection, NatsConnection], unique_name: str
) -> None:
    one, other = nodes
    a, b = _bucket(one, unique_name), _bucket(other, unique_name)
    for n in range(20):  # each write on node 1's bucket object, each read right after on node 0's
        revision = await b.write("k", b"%d" % n, last=None)
        assert revision is not None and b.seen == revision
        entry = await b.get("k")
        assert entry is not None and entry.value == b"%d" % n  # b's own write
        seen = await a.get("k")
        assert seen is not None and a.seen >= seen.revision
        a.seen = max(a.seen, revision)  # as if a had written it: its next read must hold it
        entry = await a.get("k")
        assert entry is not None and entry.value == b"%d" % n


class _StaleReplicas:
    """Makes the first ``count`` multi-last direct gets of a bucket look answered by a replica one
    sequence behind the bucket object's mark (as a lagging follower would), and records the requests."""

    def __init__(self, bucket: KvBucket, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.requests: list[bytes] = []
        self.left = count
        wire = bucket._wire
        request_many = wire.request_many

        async def lagging(subject: bytes, payload: bytes, *, timeout: float) -> list[Reply]:
            replies = await request_many(subject, payload, timeout=timeout)
            if b"multi_last" in payload:
                self.requests.append(payload)
                hdr, data = replies[-1]
                if self.left and hdr is not None and _UP_TO.search(hdr):
                    self.left -= 1
                    behind = b"Nats-UpTo-Sequence: %d" % (bucket.seen - 1)
                    replies[-1] = (_UP_TO.sub(behind, hdr), data)
            return replies

        monkeypatch.setattr(wire, "request_many", lagging)


async def test_the_workflow_stores_reads_after_its_own_writes_skip_replicas_behind_them(
    nodes: tuple[NatsConnection, NatsConnection], unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = nodes
    store = NatsWorkflowStore(one, bucket=unique_name, replicas=3)
    assert await store.create(WorkflowInstance(id="wf-1", name="order", version=1, input=b"{}"))
    token = await store.acquire("wf-1", "r1", 60.0)
    assert token is not None
    await store.record("wf-1", token, HistoryEntry(seq=0, kind="wait", name="shipped"))
    await store.update("wf-1", token, SLEEPING, wait_for="ParcelShipped")
    mark = store._bucket.seen
    assert mark > 0  # the publish acks raised it
    stale = _StaleReplicas(store._bucket, monkeypatch, count=2)
    history = await store.history("wf-1")  # the runner's read after storing it sleeping
    assert [e.name for e in history] == ["shipped"]
    assert len(stale.requests) == 3  # two replies from "behind" replicas dropped, the third taken
    assert all(b'"multi_last":["$KV.' in r for r in stale.requests)
    stale = _StaleReplicas(store._bucket, monkeypatch, count=2)
    found = await store.get("wf-1")  # the deliverer's read after offering
    assert found is not None and found.status == SLEEPING
    assert len(stale.requests) == 3
    assert store._bucket.seen >= mark


async def test_a_workflow_store_gives_up_with_an_error_when_replicas_stay_behind(
    nodes: tuple[NatsConnection, NatsConnection], unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    one, _ = nodes
    store = NatsWorkflowStore(one, bucket=unique_name, replicas=3, timeout=0.3)
    assert await store.create(WorkflowInstance(id="wf-1", name="order", version=1, input=b"{}"))
    _StaleReplicas(store._bucket, monkeypatch, count=1_000_000)
    with pytest.raises(BackendError, match="replicas behind their leader"):
        await store.history("wf-1")


async def test_one_replica_buckets_read_with_plain_direct_gets(
    nats_connection: NatsConnection,
    unique_name: str,
    doomed_streams: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doomed_streams.append(f"KV_{unique_name}")
    store = NatsWorkflowStore(nats_connection, bucket=unique_name)
    assert await store.create(WorkflowInstance(id="wf-1", name="order", version=1, input=b"{}"))
    stale = _StaleReplicas(store._bucket, monkeypatch, count=0)
    assert await store.get("wf-1") is not None
    assert await store.history("wf-1") == []
    assert stale.requests == []  # the one replica is the leader: nothing to check


async def _until_a_follower_answers_direct_gets(bucket: KvBucket) -> None:
    """Write and read until a read comes from a replica behind the write (followers serve direct
    gets only once the server's 2 s check found them caught up)."""
    for n in range(100_000):
        revision = await bucket.write("probe", b"%d" % n, last=None)
        read = await direct_last_of(
            bucket._wire, bucket._direct, bucket.prefix + "probe", timeout=5.0, operation="probe"
        )
        assert revision is not None and read is not None
        if read[1] < revision:
            return
    pytest.fail("no follower ever answered a direct get")


async def test_a_workflow_stores_reads_right_after_its_writes_see_them_from_every_node(
    nats_cluster: NatsCluster, unique_name: str
) -> None:
    # With plain direct gets about 1 in 10 of these reads came from a follower that had not applied
    # the write before it yet (3-node loopback cluster); each read here must see that write.
    stale: list[tuple[int, int, str]] = []
    for node in range(3):
        async with await NatsConnection.connect(nats_cluster.node(node).url) as conn:
            store = NatsWorkflowStore(conn, bucket=unique_name, replicas=3)
            if node == 0:
                await _until_a_follower_answers_direct_gets(store._bucket)
            for n in range(60):
                wid = f"wf-{node}-{n}"
                assert await store.create(WorkflowInstance(id=wid, name="order", version=1, input=b"{}"))
                token = await store.acquire(wid, "r1", 60.0)
                assert token is not None
                await store.update(wid, token, SLEEPING, wait_for="ParcelShipped")
                found = await store.get(wid)
                if found is None or found.status != SLEEPING:
                    stale.append((node, n, "get"))
                await store.record(wid, token, HistoryEntry(seq=0, kind="event", name="shipped"))
                if len(await store.history(wid)) != 1:
                    stale.append((node, n, "history"))
            if node == 2:
                with contextlib.suppress(Exception):
                    await conn.js.delete_stream(f"KV_{unique_name}")
    assert stale == []
