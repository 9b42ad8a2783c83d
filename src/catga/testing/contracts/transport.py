"""Conformance suite for :class:`~catga.protocols.Transport`.

Part one is here (routing, metadata, subscriptions, request/reply, payload limit, closing); part two,
the delivery guarantees, is :class:`~catga.testing.contracts.transport_delivery.TransportDeliveryContract`,
which :class:`TransportContract` includes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from catga._payload import DEFAULT_MAX_PAYLOAD
from catga.errors import (
    BackendUnavailableError,
    ErrorCode,
    OperationTimeoutError,
    PayloadTooLargeError,
)
from catga.ids import new_id
from catga.messages import H_TYPE, Metadata
from catga.testing.contracts._transport_helpers import (
    SETTLE,
    InboxTransportFactory,
    RawPublishTransport,
    TransportFactory,
)
from catga.testing.contracts._util import WAIT, eventually, unique
from catga.testing.contracts.messages import (
    ContractDoWork,
    ContractNoted,
    ContractOrderPlaced,
)
from catga.testing.contracts.transport_delivery import TransportDeliveryContract

__all__ = ("InboxTransportFactory", "RawPublishTransport", "TransportContract", "TransportFactory")


class TransportContract(TransportDeliveryContract):
    """Every statement of :class:`~catga.protocols.Transport`, as tests.

    Bind it with three fixtures:

    * ``transport_factory``: an async callable returning a **new** transport instance on the same bus
      (as if in another process) each time it is called. All of them use a registry from
      :func:`~catga.testing.contracts.contract_registry`, share the dead-letter queue below, and use
      short redelivery backoffs (e.g. ``retry_backoff=0.01, retry_backoff_max=0.05``). The binding
      closes them after the test.
    * ``transport_dead_letters``: that shared :class:`~catga.protocols.DeadLetterQueue`.
    * ``transport_inbox_factory``: like ``transport_factory``, taking the
      :class:`~catga.protocols.InboxStore` the new transport's ``EXACTLY_ONCE`` subscriptions claim in.

    ``subscribe`` and ``serve`` must be ready to receive when they return. Transports must also offer
    ``publish_raw(destination, body, headers)`` (see :class:`RawPublishTransport`), and keep the default
    payload limit (``max_payload``, 1 MiB).
    """

    async def test_publish_fans_out_to_groups_and_competes_within_a_group(
        self, transport_factory: TransportFactory
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest, g1, g2 = unique("ev"), unique("g"), unique("g")
        seen: dict[str, list[str]] = {"g1": [], "g2": [], "solo1": [], "solo2": []}

        def recorder(label: str) -> Callable[[ContractOrderPlaced, Metadata], Awaitable[None]]:
            async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
                seen[label].append(message.order_id)

            return handle

        await t1.subscribe(ContractOrderPlaced, recorder("g1"), group=g1, destination=dest)
        await t2.subscribe(ContractOrderPlaced, recorder("g1"), group=g1, destination=dest)
        await t1.subscribe(ContractOrderPlaced, recorder("g2"), group=g2, destination=dest)
        await t1.subscribe(ContractOrderPlaced, recorder("solo1"), destination=dest)
        await t2.subscribe(ContractOrderPlaced, recorder("solo2"), destination=dest)
        ids = [f"o{i}" for i in range(20)]
        for i, order_id in enumerate(ids):
            await t2.publish(ContractOrderPlaced(order_id, i), destination=dest)

        async def all_seen() -> bool:
            return all(len(v) >= len(ids) for v in seen.values())

        await eventually(all_seen, what="every group and solo subscription got all 20 messages")
        await asyncio.sleep(SETTLE)
        for label, got in seen.items():
            assert sorted(got) == sorted(ids), f"{label} got {Counter(got)}"

    async def test_send_delivers_each_message_to_one_competing_consumer(
        self, transport_factory: TransportFactory
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest, group = unique("cmd"), unique("workers")
        handled: list[tuple[str, int]] = []

        def worker(name: str) -> Callable[[ContractDoWork, Metadata], Awaitable[None]]:
            async def handle(message: ContractDoWork, meta: Metadata) -> None:
                handled.append((name, message.job))

            return handle

        await t1.subscribe(ContractDoWork, worker("a"), group=group, destination=dest)
        await t2.subscribe(ContractDoWork, worker("b"), group=group, destination=dest)
        for job in range(20):
            await t1.send(ContractDoWork(job), destination=dest)

        async def done() -> bool:
            return len(handled) >= 20

        await eventually(done, what="20 commands handled")
        await asyncio.sleep(SETTLE)
        assert sorted(job for _, job in handled) == list(range(20))

    async def test_destination_defaults_to_the_type_name(self, transport_factory: TransportFactory) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        marker = unique("note-")
        got: list[ContractNoted] = []

        async def handle(message: ContractNoted, meta: Metadata) -> None:
            if message.text == marker:  # a shared server may carry other tests' notes
                got.append(message)

        await t1.subscribe(ContractNoted, handle, group=unique("g"))
        await t2.publish(ContractNoted(marker, 3))

        async def arrived() -> bool:
            return bool(got)

        await eventually(arrived, what="message on the default destination")
        assert got == [ContractNoted(marker, 3)]

    async def test_message_and_metadata_arrive_intact(self, transport_factory: TransportFactory) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        got: list[tuple[ContractNoted, Metadata]] = []

        async def handle(message: ContractNoted, meta: Metadata) -> None:
            got.append((message, meta))

        await t1.subscribe(ContractNoted, handle, destination=dest)
        sent = Metadata(
            message_id=new_id(),
            correlation_id=new_id(),
            causation_id=new_id(),
            created_at=time.time(),
            headers={
                "x-tenant": "acme",
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        )
        await t2.publish(ContractNoted("héllo ✓ 世界", 42), metadata=sent, destination=dest)

        async def arrived() -> bool:
            return bool(got)

        await eventually(arrived, what="message delivered")
        message, meta = got[0]
        assert message == ContractNoted("héllo ✓ 世界", 42)
        assert (meta.message_id, meta.correlation_id, meta.causation_id) == (
            sent.message_id,
            sent.correlation_id,
            sent.causation_id,
        )
        assert meta.headers is not None
        assert meta.headers["x-tenant"] == "acme"
        assert meta.headers["traceparent"] == sent.headers["traceparent"]  # type: ignore[index]

    async def test_publish_batch_delivers_every_message(self, transport_factory: TransportFactory) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        got: list[int] = []

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            got.append(message.total)

        await t1.subscribe(ContractOrderPlaced, handle, destination=dest)
        await t2.publish_batch([ContractOrderPlaced("o", i) for i in range(5)], destination=dest)

        async def arrived() -> bool:
            return len(got) >= 5

        await eventually(arrived, what="5 messages of a batch")
        assert sorted(got) == [0, 1, 2, 3, 4]

    # --- subscriptions ---------------------------------------------------------------------------

    async def test_a_closed_subscription_receives_nothing_more(
        self, transport_factory: TransportFactory
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        got: list[int] = []

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            got.append(message.total)

        sub = await t1.subscribe(ContractOrderPlaced, handle, destination=dest)
        await t2.publish(ContractOrderPlaced("o", 1), destination=dest)

        async def first() -> bool:
            return got == [1]

        await eventually(first, what="first message")
        await sub.aclose()
        await sub.aclose()  # idempotent
        await t2.publish(ContractOrderPlaced("o", 2), destination=dest)
        await asyncio.sleep(SETTLE)
        assert got == [1]

    async def test_closing_a_subscription_waits_for_in_flight_handlers(
        self, transport_factory: TransportFactory
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        started = asyncio.Event()
        release = asyncio.Event()
        finished: list[int] = []

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            started.set()
            await release.wait()
            finished.append(message.total)

        sub = await t1.subscribe(ContractOrderPlaced, handle, destination=dest)
        await t2.publish(ContractOrderPlaced("o", 7), destination=dest)
        async with asyncio.timeout(WAIT):
            await started.wait()
        closing = asyncio.ensure_future(sub.aclose())
        try:
            await asyncio.sleep(0.05)
            assert not closing.done(), "aclose() returned while a handler was still running"
        finally:
            release.set()
        async with asyncio.timeout(WAIT):
            await closing
        assert finished == [7]

    # --- request / reply -------------------------------------------------------------------------

    async def test_request_reply_round_trip(self, transport_factory: TransportFactory) -> None:
        server, client = await transport_factory(), await transport_factory()
        dest = unique("rpc")

        async def reverse(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            return body[::-1], {"x-echo": headers.get("x-req", ""), "x-reply": "yes"}

        await server.serve(dest, reverse)
        body, headers = await client.request(dest, b"\x00hello\xff", headers={"x-req": "42"}, timeout=WAIT)
        assert body == b"\xffolleh\x00"
        assert headers["x-reply"] == "yes"
        assert headers["x-echo"] == "42"
        replies = await asyncio.gather(*(client.request(dest, b"%d" % i, timeout=WAIT) for i in range(10)))
        assert [b for b, _ in replies] == [(b"%d" % i)[::-1] for i in range(10)]

    async def test_request_times_out_without_a_reply(self, transport_factory: TransportFactory) -> None:
        server, client = await transport_factory(), await transport_factory()
        dest = unique("rpc")
        release = asyncio.Event()

        async def stuck(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            await release.wait()
            return b"late", {}

        await server.serve(dest, stuck)
        try:
            with pytest.raises(OperationTimeoutError) as info:
                await client.request(dest, b"ping", timeout=0.2)
            assert isinstance(info.value, TimeoutError)
            assert info.value.seconds == 0.2
        finally:
            release.set()

    # --- payload limit ---------------------------------------------------------------------------

    async def test_a_message_over_the_payload_limit_is_refused_and_nothing_is_sent(
        self, transport_factory: TransportFactory
    ) -> None:
        receiver, sender = await transport_factory(), await transport_factory()
        events, commands, rpc = unique("ev"), unique("cmd"), unique("rpc")
        got: list[str] = []
        served: list[bytes] = []

        async def on_event(message: ContractOrderPlaced, meta: Metadata) -> None:
            got.append(message.order_id)

        async def on_command(message: ContractDoWork, meta: Metadata) -> None:
            got.append(f"job {message.job}")

        async def echo(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            served.append(body)
            return body, {}

        await receiver.subscribe(ContractOrderPlaced, on_event, destination=events)
        await receiver.subscribe(ContractDoWork, on_command, destination=commands)
        await receiver.serve(rpc, echo)
        limit = DEFAULT_MAX_PAYLOAD
        big_event = ContractOrderPlaced("x" * limit, 1)
        attempts = {
            "publish": sender.publish(big_event, destination=events),
            "send": sender.send(ContractDoWork(1, "x" * limit), destination=commands),
            "publish_batch": sender.publish_batch(
                [ContractOrderPlaced("small", 1), big_event], destination=events
            ),
            "publish_raw": sender.publish_raw(events, b"x" * (limit + 1), {H_TYPE: "contracts.OrderPlaced"}),
            "request": sender.request(rpc, b"x" * (limit + 1), timeout=WAIT),
        }
        for name, attempt in attempts.items():
            with pytest.raises(PayloadTooLargeError) as info:
                await attempt
            error = info.value
            assert error.code == ErrorCode.TOO_LARGE, name
            assert error.limit == limit and error.size > limit, (name, error.size, error.limit)
            assert isinstance(error, ValueError) and not error.retryable, name
            assert str(limit) in str(error) and "nothing was sent" in str(error), str(error)
        # Nothing of the above arrived: the next messages are the first ones received.
        await sender.publish(ContractOrderPlaced("marker", 2), destination=events)
        await sender.send(ContractDoWork(2), destination=commands)

        async def markers_arrived() -> bool:
            return len(got) >= 2

        await eventually(markers_arrived, what="the small event and command after the refused ones")
        await asyncio.sleep(SETTLE)
        assert sorted(got) == ["job 2", "marker"], got
        assert served == []

    async def test_a_closed_transport_refuses_subscribe_and_publish_alike(
        self, transport_factory: TransportFactory
    ) -> None:
        t = await transport_factory()

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            pass

        await t.aclose()
        with pytest.raises(BackendUnavailableError):
            await t.subscribe(ContractOrderPlaced, handle, destination=unique("ev"))
        with pytest.raises(BackendUnavailableError):
            await t.publish(ContractOrderPlaced("o", 1), destination=unique("ev"))

    async def test_a_closed_transport_refuses_every_operation_with_one_error(
        self, transport_factory: TransportFactory
    ) -> None:
        """Sends, raw publishes, requests and new servers all raise BackendUnavailableError once the
        transport is closed, naming the transport (one closed check, issue 10)."""
        t = await transport_factory()

        async def answer(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            return body, {}

        await t.aclose()
        dest = unique("ev")
        operations: dict[str, Callable[[], Awaitable[object]]] = {
            "send": lambda: t.send(ContractDoWork(1), destination=dest),
            "publish_batch": lambda: t.publish_batch([ContractOrderPlaced("o", 1)], destination=dest),
            "publish_raw": lambda: t.publish_raw(dest, b"{}", {H_TYPE: "contracts.OrderPlaced"}),
            "request": lambda: t.request(dest, b"ping", timeout=1.0),
            "serve": lambda: t.serve(dest, answer),
        }
        for name, operation in operations.items():
            with pytest.raises(BackendUnavailableError, match="is closed") as caught:
                await operation()
            assert type(t).__name__ in str(caught.value), name
