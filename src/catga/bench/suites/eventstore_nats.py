"""NATS JetStream event store: optimistic-concurrency append, against raw nats-py in the same run.

Case ``append_occ``: each worker owns one stream (worker ``w`` appends to stream ``s<w>``) and appends
one event with the exact expected version, awaiting the server's ack before its next append (closed
loop). Both implementations run against the same server, each on a fresh JetStream stream (file
storage) deleted afterwards.

* ``catga``: :meth:`NatsEventStore.append(stream, [event], expected_version)
  <catga.nats.NatsEventStore.append>` -- the version check is done by the server
  (``Nats-Expected-Last-Subject-Sequence``), through catga's lean connection.
* ``nats-py``: ``js.publish(subject, body, headers={"Nats-Expected-Last-Subject-Sequence": last})``
  with nats-py's JetStream context, one await per append per task -- the same server-side work with
  the stock client (the body is the same encoded event; the worker keeps its last sequence).
* ``nats-protocol``: a reference ceiling, not a library -- the bare NATS protocol on an asyncio socket
  (``HPUB`` with a reply token, the ack matched in ``data_received``), same body and header, no
  encoding, no checks, and the same write policy as catga's lean connection (a request with nothing
  else in flight is written at once, else queued and written by fours or at the end of the loop
  iteration). It shows what the machine allows in this run; the gap to ``catga`` is catga's own
  client work (encoding, version cache, ack checks, deadlines).

Pinning: with ``--server-cpu N`` the harness runs nats-server on CPU ``N`` with ``GOMAXPROCS=1``, and
this suite moves the benchmark process (all implementations alike) to the other CPUs for the
duration of each case, restoring its affinity afterwards. On a small machine this stands in for a
server on its own host. Unpinned, the server inherits ``GOMAXPROCS`` from the environment: on a 2-core
machine ``GOMAXPROCS=1`` spares it the hand-offs between Go threads (``docs/nats.md``, *Performance*).

Example::

    catga bench eventstore-nats --loop uvloop --server-cpu 0 --concurrency 1,16
    GOMAXPROCS=1 catga bench eventstore-nats --loop uvloop --concurrency 1,16
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import msgspec

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op
from catga.messages import Event, message_name

__all__ = ("SUITE", "BenchOrderPlaced", "cases")

SUITE = "eventstore-nats"


@message_name("bench.NatsOrderPlaced")
class BenchOrderPlaced(msgspec.Struct, Event, frozen=True):
    """The appended event (about 100 bytes of JSON)."""

    order_id: str
    customer_id: str
    total: int
    currency: str


#: As in catga.nats._wire: requests per write when several are in flight.
_WRITE_BATCH = 4

_EVENT = BenchOrderPlaced("order-000000000001", "customer-00000000042", 4200, "EUR")


@contextlib.contextmanager
def _client_off_server_cpu(env: BenchEnv) -> Iterator[None]:
    """Run this thread on the CPUs the server is not pinned to (when it is pinned)."""
    cpu = env.server_cpu
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    others = before - {cpu}
    if not others:
        yield
        return
    os.sched_setaffinity(0, others)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


async def _drop(url: str, stream: str) -> None:
    from catga.nats import NatsConnection

    async with await NatsConnection.connect(url) as conn:
        with contextlib.suppress(Exception):
            await conn.js.delete_stream(stream)


@asynccontextmanager
async def _catga_append(env: BenchEnv) -> AsyncIterator[Op]:
    from catga.nats import NatsEventStore
    from catga.protocols import NO_STREAM
    from catga.serialization import TypeRegistry

    url = await env.nats_url()
    name = f"bench{uuid.uuid4().hex[:8]}"
    with _client_off_server_cpu(env):
        store = await NatsEventStore.connect(
            url, stream=name.upper(), prefix=name, registry=TypeRegistry("json", [BenchOrderPlaced])
        )
        try:
            streams = [f"s{i}" for i in range(env.max_concurrency)]
            versions = [NO_STREAM] * env.max_concurrency
            if await store.append("check", [_EVENT], NO_STREAM) != 0:
                raise BenchError("catga self-check: the first append did not return version 0")
            events = [_EVENT]

            async def op(worker: int) -> None:
                versions[worker] = await store.append(streams[worker], events, versions[worker])

            yield op
            stored = await store.read(streams[0])
            if [e.version for e in stored] != list(range(len(stored))):
                raise BenchError("catga self-check: versions of a benchmarked stream are not contiguous")
        finally:
            await store.aclose()
            await _drop(url, name.upper())


@asynccontextmanager
async def _nats_py_append(env: BenchEnv) -> AsyncIterator[Op]:
    import nats
    from nats.js.api import StorageType

    url = await env.nats_url()
    name = f"bench{uuid.uuid4().hex[:8]}"
    with _client_off_server_cpu(env):
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            await js.add_stream(name=name.upper(), subjects=[f"{name}.>"], storage=StorageType.FILE)
            body = msgspec.json.encode(_EVENT)
            subjects = [f"{name}.s{i}" for i in range(env.max_concurrency)]
            last = [0] * env.max_concurrency
            header = "Nats-Expected-Last-Subject-Sequence"

            async def op(worker: int) -> None:
                ack = await js.publish(
                    subjects[worker], body, headers={header: str(last[worker]), "Catga-Type": "x"}
                )
                last[worker] = ack.seq

            yield op
        finally:
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(name.upper())
            await nc.drain()


class _BareProtocol(asyncio.Protocol):
    """Just enough NATS protocol to publish with a reply token and match acks (no auth, no TLS)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.buf = bytearray()
        self.pending: dict[bytes, asyncio.Future[bytes]] = {}
        self.prefix = b"_INBOX." + uuid.uuid4().hex.encode() + b"."
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.transport: asyncio.Transport | None = None
        self.counter = 0
        self.out: list[bytes] = []
        self.flush_scheduled = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("connection lost"))
        if not self.ready.done():
            self.ready.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos, n, plen = 0, len(buf), len(self.prefix)
        while pos < n:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            if buf[pos] in (72, 77):  # HMSG / MSG
                parts = bytes(buf[pos:eol]).split()
                hsize = int(parts[-2]) if buf[pos] == 72 else 0
                end = eol + 2 + int(parts[-1])
                if end + 2 > n:
                    break
                fut = self.pending.pop(parts[1][plen:], None)
                if fut is not None and not fut.done():
                    fut.set_result(bytes(buf[eol + 2 + hsize : end]))
                pos = end + 2
                continue
            line, pos = bytes(buf[pos:eol]), eol + 2
            if line == b"PING" and self.transport is not None:
                self.transport.write(b"PONG\r\n")
            elif line.startswith(b"INFO") and self.transport is not None:
                self.transport.write(
                    b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n'
                    b"SUB " + self.prefix + b"* 1\r\nPING\r\n"
                )
            elif line == b"PONG" and not self.ready.done():
                self.ready.set_result(None)
            elif line.startswith(b"-ERR") and not self.ready.done():
                self.ready.set_exception(BenchError(f"nats-server refused the bare connection: {line!r}"))
        del buf[:pos]

    def write(self, data: bytes) -> None:
        """The lean connection's write policy: alone at once, else by fours or at the iteration's end."""
        transport = self.transport
        if transport is None:
            raise BenchError("the bare connection is closed")
        out = self.out
        if not out:
            if len(self.pending) <= 1:
                transport.write(data)
                return
            if not self.flush_scheduled:
                self.flush_scheduled = True
                self.loop.call_soon(self.flush)
        out.append(data)
        if len(out) >= _WRITE_BATCH:
            transport.write(b"".join(out))
            out.clear()

    def flush(self) -> None:
        self.flush_scheduled = False
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    async def publish(self, subject: bytes, headers: bytes, payload: bytes) -> int:
        self.counter += 1
        token = b"%d" % self.counter
        fut: asyncio.Future[bytes] = self.loop.create_future()
        self.pending[token] = fut
        size = len(headers) + len(payload)
        self.write(
            b"HPUB %b %b%b %d %d\r\n%b%b\r\n"
            % (subject, self.prefix, token, len(headers), size, headers, payload)
        )
        ack = msgspec.json.decode(await fut)
        if "error" in ack:
            raise BenchError(f"append rejected: {ack['error']}")
        return int(ack["seq"])


@asynccontextmanager
async def _bare_append(env: BenchEnv) -> AsyncIterator[Op]:
    from urllib.parse import urlsplit

    import nats
    from nats.js.api import StorageType

    url = await env.nats_url()
    name = f"bench{uuid.uuid4().hex[:8]}"
    with _client_off_server_cpu(env):
        nc = await nats.connect(url)
        parts = urlsplit(url)
        transport, proto = await asyncio.get_running_loop().create_connection(
            _BareProtocol, parts.hostname or "127.0.0.1", parts.port or 4222
        )
        try:
            await asyncio.wait_for(proto.ready, 5.0)
            js = nc.jetstream()
            await js.add_stream(name=name.upper(), subjects=[f"{name}.>"], storage=StorageType.FILE)
            body = msgspec.json.encode(_EVENT)
            subjects = [f"{name}.s{i}".encode() for i in range(env.max_concurrency)]
            last = [0] * env.max_concurrency

            async def op(worker: int) -> None:
                headers = (
                    b"NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: %d\r\nCatga-Type: x\r\n\r\n"
                    % (last[worker])
                )
                last[worker] = await proto.publish(subjects[worker], headers, body)

            yield op
        finally:
            transport.close()
            with contextlib.suppress(Exception):
                await nc.jetstream().delete_stream(name.upper())
            await nc.drain()


def cases(env: BenchEnv) -> list[BenchCase]:
    """The suite's cases: ``append_occ`` for catga, raw nats-py and the bare-protocol ceiling."""
    note = "1 event, exact expected version (server-checked), one stream per worker, file storage"
    return [
        BenchCase("append_occ", "catga", _catga_append, note=note),
        BenchCase("append_occ", "nats-py", _nats_py_append, note=note + "; js.publish one at a time"),
        BenchCase(
            "append_occ",
            "nats-protocol",
            _bare_append,
            note=note + "; reference ceiling: bare protocol on an asyncio socket, no encoding or checks",
        ),
    ]
