"""NATS transport, at-least-once: publish -> handler -> ack, end to end, against FastStream and raw nats-py.

Case ``publish_handle``: each operation publishes one ~100-byte JSON event through JetStream (waiting
for the stream's ack), then waits until the subscriber's handler has run for *that* message (the
handler resolves a future keyed by the message's id; the consumer acks right after). So one operation
is a real publish, a real delivery and a real handler run — never a cache hit. ``concurrency`` workers
do this in a closed loop; each implementation has its own stream (file storage) and one durable
consumer, deleted afterwards.

* ``catga``: :class:`~catga.nats.transport.NatsTransport` — ``publish(event, metadata=...)`` and a
  ``subscribe(..., qos=AT_LEAST_ONCE, group="bench", max_in_flight=64)`` pull consumer.
* ``faststream``: ``NatsBroker.publish(..., stream=...)`` and a durable JetStream (push) subscriber,
  logging off. The other shapes FastStream offers did no better here (one run at concurrency 1 / 16,
  2-core machine: push 1102 / 978 ops/s, ``PullSub(1)`` 723 / 1013, ``PullSub(16)`` + 64 workers
  509 / 999, push + 64 workers 833 / 297).
* ``nats-py``: ``js.publish`` and a push consumer (``js.subscribe(..., manual_ack=True)``) whose callback
  resolves the future and acks: the stock client with no framework.

Example::

    catga bench transport-nats --concurrency 1,8,32
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from catga.bench.harness import BenchCase, BenchEnv, BenchError, Op
from catga.messages import Event, Metadata, QoS, message_name

__all__ = ("SUITE", "BenchPinged", "cases")

SUITE = "transport-nats"

_WAIT = 10.0  # seconds an operation waits for its handler before the run is declared broken


@message_name("bench.Pinged")
class BenchPinged(msgspec.Struct, Event, frozen=True):
    """The published event (about 100 bytes of JSON)."""

    order_id: str
    customer_id: str
    total: int
    currency: str


_EVENT = BenchPinged("order-000000000001", "customer-00000000042", 4200, "EUR")


def _names() -> tuple[str, str]:
    name = f"bench{uuid.uuid4().hex[:8]}"
    return name, name.upper()


async def _drop_streams(url: str, *streams: str) -> None:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for stream in streams:
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
    finally:
        await nc.close()


class _Waiters:
    """Futures keyed by message id: the op waits on one, the handler resolves it."""

    def __init__(self) -> None:
        self.pending: dict[Any, asyncio.Future[None]] = {}
        self.loop = asyncio.get_running_loop()

    def expect(self, key: Any) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = self.loop.create_future()
        self.pending[key] = fut
        return fut

    def done(self, key: Any) -> None:
        fut = self.pending.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def wait(self, key: Any, fut: asyncio.Future[None]) -> None:
        try:
            async with asyncio.timeout(_WAIT):
                await fut
        except TimeoutError:
            self.pending.pop(key, None)
            raise BenchError(f"message {key!r} was not handled within {_WAIT} s") from None


@asynccontextmanager
async def _catga(env: BenchEnv) -> AsyncIterator[Op]:
    from catga.ids import new_id
    from catga.nats.transport import NatsTransport
    from catga.serialization import TypeRegistry

    url = await env.nats_url()
    name, stream = _names()
    transport = await NatsTransport.connect(
        url, registry=TypeRegistry("json", [BenchPinged]), prefix=name, stream=stream
    )
    try:
        waiters = _Waiters()

        async def handle(event: BenchPinged, meta: Metadata) -> None:
            waiters.done(meta.message_id)

        await transport.subscribe(BenchPinged, handle, qos=QoS.AT_LEAST_ONCE, group="bench", max_in_flight=64)

        async def op(worker: int) -> None:
            mid = new_id()
            fut = waiters.expect(mid)
            await transport.publish(_EVENT, metadata=Metadata(message_id=mid, qos=QoS.AT_LEAST_ONCE))
            await waiters.wait(mid, fut)

        yield op
    finally:
        await transport.aclose()
        await _drop_streams(url, stream, f"{stream}_COMMANDS")


@asynccontextmanager
async def _faststream(env: BenchEnv) -> AsyncIterator[Op]:
    try:
        from faststream.nats import JStream, NatsBroker
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise BenchError('faststream is not installed: pip install "catga[bench]"') from exc
    from nats.js.api import StorageType

    url = await env.nats_url()
    name, stream = _names()
    broker = NatsBroker(url, logger=None)
    waiters = _Waiters()
    subject = f"{name}.evt.bench"

    async def handle(body: dict[str, Any]) -> None:
        waiters.done(body["id"])

    with warnings.catch_warnings():  # "a durable push consumer can't scale out": one instance here
        warnings.simplefilter("ignore", RuntimeWarning)
        broker.subscriber(
            subject,
            stream=JStream(name=stream, subjects=[f"{name}.>"], storage=StorageType.FILE),
            durable="bench",
        )(handle)

    await broker.start()
    try:
        payload = msgspec.structs.asdict(_EVENT)
        ids = itertools.count()

        async def op(worker: int) -> None:
            key = next(ids)
            fut = waiters.expect(key)
            await broker.publish({"id": key, **payload}, subject, stream=stream)
            await waiters.wait(key, fut)

        yield op
    finally:
        await broker.stop()
        await _drop_streams(url, stream)


@asynccontextmanager
async def _nats_py(env: BenchEnv) -> AsyncIterator[Op]:
    import nats
    from nats.aio.msg import Msg
    from nats.js.api import StorageType

    url = await env.nats_url()
    name, stream = _names()
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await js.add_stream(name=stream, subjects=[f"{name}.>"], storage=StorageType.FILE)
        waiters = _Waiters()
        subject = f"{name}.evt.bench"

        async def on_msg(msg: Msg) -> None:
            waiters.done((msg.headers or {}).get("Nats-Msg-Id"))
            await msg.ack()

        await js.subscribe(subject, durable="bench", stream=stream, cb=on_msg, manual_ack=True)
        body = msgspec.json.encode(_EVENT)
        ids = itertools.count()

        async def op(worker: int) -> None:
            key = str(next(ids))
            fut = waiters.expect(key)
            await js.publish(subject, body, headers={"Nats-Msg-Id": key})
            await waiters.wait(key, fut)

        yield op
    finally:
        with contextlib.suppress(Exception):
            await nc.jetstream().delete_stream(stream)
        await nc.drain()


def cases(env: BenchEnv) -> list[BenchCase]:
    """The suite's cases: ``publish_handle`` for catga, FastStream and raw nats-py."""
    note = "1 event, JetStream publish (acked) -> pull/push consumer -> handler -> ack, file storage"
    return [
        BenchCase("publish_handle", "catga", _catga, note=note),
        BenchCase("publish_handle", "faststream", _faststream, note=note + "; durable push subscriber"),
        BenchCase("publish_handle", "nats-py", _nats_py, note=note + "; push consumer, callback acks"),
    ]
