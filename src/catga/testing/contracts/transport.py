"""Conformance suite for :class:`~catga.protocols.Transport`."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from typing import Protocol

import pytest

from catga._payload import DEFAULT_MAX_PAYLOAD
from catga.errors import (
    BackendError,
    BackendUnavailableError,
    ErrorCode,
    InvalidIdentifierError,
    OperationTimeoutError,
    PayloadTooLargeError,
)
from catga.ids import new_id
from catga.memory.idempotency import MemoryInboxStore
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import COMMAND, EVENT, Claim, DeadLetter, DeadLetterQueue, InboxStore, Transport
from catga.testing.contracts._util import WAIT, eventually, unique
from catga.testing.contracts.messages import (
    ContractDoWork,
    ContractNoted,
    ContractOrderPlaced,
    contract_registry,
)

__all__ = ("InboxTransportFactory", "RawPublishTransport", "TransportContract", "TransportFactory")

#: Time given to a transport to show that something does *not* happen (a duplicate, a redelivery).
SETTLE = 0.3


class RawPublishTransport(Transport, Protocol):
    """A transport with the test surface the contract needs besides the protocol."""

    async def publish_raw(self, destination: str, body: bytes, headers: Mapping[str, str]) -> None:
        """Publish bytes and wire headers exactly as given (fan-out, like ``publish``)."""
        ...


TransportFactory = Callable[[], Awaitable[RawPublishTransport]]
#: Like :data:`TransportFactory`, for a transport whose ``EXACTLY_ONCE`` subscriptions use ``inbox``.
InboxTransportFactory = Callable[[InboxStore], Awaitable[RawPublishTransport]]


class _WatchedInbox(MemoryInboxStore):
    """An in-memory inbox that records the keys claimed and fails the first ``fail_claims`` claims."""

    def __init__(self, fail_claims: int = 0) -> None:
        super().__init__()
        self.claimed: list[str] = []
        self.fail_claims = fail_claims

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        self.claimed.append(key)
        if self.fail_claims > 0:
            self.fail_claims -= 1
            raise BackendUnavailableError("inbox down (contract test)", backend="contract")
        return await super().claim(key, lock_ttl)


async def _letter_for(dlq: DeadLetterQueue, message_id: str) -> DeadLetter | None:
    for letter in await dlq.list(10_000):
        if letter.id == message_id or letter.headers.get(H_ID) == message_id:
            return letter
    return None


async def _raw_message_dead_lettered(
    transport_factory: TransportFactory, dlq: DeadLetterQueue, body: bytes, type_name: str
) -> tuple[DeadLetter, str, list[ContractOrderPlaced]]:
    """Publish raw ``body`` typed ``type_name`` to an at-least-once ``ContractOrderPlaced`` subscriber on
    another transport; wait for its dead letter. Returns the letter, the destination and what the
    handler got."""
    t1, t2 = await transport_factory(), await transport_factory()
    dest = unique("ev")
    handled: list[ContractOrderPlaced] = []

    async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
        handled.append(message)

    await t1.subscribe(ContractOrderPlaced, handle, qos=QoS.AT_LEAST_ONCE, destination=dest, max_deliver=5)
    mid = str(new_id())
    await t2.publish_raw(dest, body, {H_TYPE: type_name, H_ID: mid})

    async def dead() -> bool:
        return await _letter_for(dlq, mid) is not None

    await eventually(dead, what=f"raw {type_name} message {mid} dead-lettered")
    letter = await _letter_for(dlq, mid)
    assert letter is not None
    return letter, dest, handled


class TransportContract:
    """Every statement of :class:`~catga.protocols.Transport`, as tests.

    Bind it with two fixtures:

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

    # --- QoS -------------------------------------------------------------------------------------

    async def test_at_least_once_redelivers_a_failed_message(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        calls: list[int] = []

        async def flaky(message: ContractOrderPlaced, meta: Metadata) -> None:
            calls.append(meta.message_id)
            if len(calls) < 3:
                raise RuntimeError(f"transient failure {len(calls)}")

        await t1.subscribe(ContractOrderPlaced, flaky, qos=QoS.AT_LEAST_ONCE, destination=dest, max_deliver=5)
        mid = new_id()
        await t2.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def succeeded() -> bool:
            return len(calls) >= 3

        await eventually(succeeded, what="third delivery")
        await asyncio.sleep(SETTLE)
        assert calls == [mid, mid, mid]
        assert await _letter_for(transport_dead_letters, str(mid)) is None

    async def test_at_least_once_dead_letters_after_max_deliver(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        reason = unique("boom-")
        calls = 0

        async def broken(message: ContractOrderPlaced, meta: Metadata) -> None:
            nonlocal calls
            calls += 1
            raise ValueError(reason)

        await t1.subscribe(
            ContractOrderPlaced, broken, qos=QoS.AT_LEAST_ONCE, destination=dest, max_deliver=3
        )
        mid = str(new_id())
        original = ContractOrderPlaced("dead-1", 99)
        await t2.publish(original, metadata=Metadata(message_id=int(mid)), destination=dest)

        async def dead() -> bool:
            return await _letter_for(transport_dead_letters, mid) is not None

        await eventually(dead, what=f"message {mid} dead-lettered")
        letter = await _letter_for(transport_dead_letters, mid)
        assert letter is not None
        assert reason in letter.error
        assert letter.attempts == 3
        assert letter.type_name == "contracts.OrderPlaced"
        assert dest in letter.source
        assert letter.headers.get(H_TYPE) == "contracts.OrderPlaced"
        assert contract_registry().decode(letter.type_name, letter.body) == original
        await asyncio.sleep(SETTLE)
        assert calls == 3

    async def test_an_undecodable_message_goes_straight_to_dead_letters(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        garbage = b'\xff\xfe{"order_id": 12'
        letter, dest, handled = await _raw_message_dead_lettered(
            transport_factory, transport_dead_letters, garbage, "contracts.OrderPlaced"
        )
        assert letter.body == garbage
        assert letter.error
        assert dest in letter.source
        assert letter.attempts <= 1
        assert handled == []

    async def test_a_message_of_another_type_goes_to_dead_letters(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        body = b'{"order_id":"o","total":1}'
        letter, _, handled = await _raw_message_dead_lettered(
            transport_factory, transport_dead_letters, body, "contracts.NeverRegistered"
        )
        assert letter.body == body and letter.error
        assert handled == []

    async def test_replay_delivers_a_dead_lettered_event_once_with_its_id(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        fixed = False
        handled: list[tuple[str, int]] = []

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            if not fixed:
                raise RuntimeError("not fixed yet")
            handled.append((message.order_id, meta.message_id))

        await t1.subscribe(ContractOrderPlaced, handle, group=unique("g"), destination=dest, max_deliver=1)
        mid = new_id()
        await t2.publish(ContractOrderPlaced("r-1", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def dead() -> bool:
            return await _letter_for(transport_dead_letters, str(mid)) is not None

        await eventually(dead, what=f"message {mid} dead-lettered")
        letter = await _letter_for(transport_dead_letters, str(mid))
        assert letter is not None
        assert (letter.source, letter.kind, letter.message_id) == (dest, EVENT, str(mid))
        assert not any(k.startswith("Nats-") for k in letter.headers)
        fixed = True
        await t2.replay(letter)  # at once: well inside any broker's duplicate window

        async def arrived() -> bool:
            return bool(handled)

        await eventually(arrived, what="the replayed event handled")
        await asyncio.sleep(SETTLE)
        assert handled == [("r-1", mid)]  # once, with the original message id

    async def test_replay_sends_a_dead_lettered_command_to_one_worker(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("cmd")
        fixed = False
        handled: list[tuple[str, int]] = []

        def worker(name: str) -> Callable[[ContractDoWork, Metadata], Awaitable[None]]:
            async def handle(message: ContractDoWork, meta: Metadata) -> None:
                if not fixed:
                    raise RuntimeError("not fixed yet")
                handled.append((name, message.job))

            return handle

        await t1.subscribe(ContractDoWork, worker("a"), destination=dest, max_deliver=1)
        await t2.subscribe(ContractDoWork, worker("b"), destination=dest, max_deliver=1)
        mid = new_id()
        await t1.send(ContractDoWork(7), metadata=Metadata(message_id=mid), destination=dest)

        async def dead() -> bool:
            return await _letter_for(transport_dead_letters, str(mid)) is not None

        await eventually(dead, what=f"command {mid} dead-lettered")
        letter = await _letter_for(transport_dead_letters, str(mid))
        assert letter is not None
        assert (letter.source, letter.kind, letter.message_id) == (dest, COMMAND, str(mid))
        fixed = True
        await t2.replay(letter)

        async def arrived() -> bool:
            return bool(handled)

        await eventually(arrived, what="the replayed command handled")
        await asyncio.sleep(SETTLE)
        assert [job for _, job in handled] == [7]  # one worker, not every subscriber (an event would be)

    async def test_replay_of_an_event_nobody_reads_raises(self, transport_factory: TransportFactory) -> None:
        t = await transport_factory()
        body = contract_registry().codec_for(ContractOrderPlaced).encode(ContractOrderPlaced("o", 1))
        mid = str(new_id())
        letter = DeadLetter(
            id=mid,
            source=unique("nobody"),
            type_name="contracts.OrderPlaced",
            body=body,
            headers={H_TYPE: "contracts.OrderPlaced", H_ID: mid},
            kind=EVENT,
            message_id=mid,
        )
        with pytest.raises(BackendError):  # it would be stored for nobody (or dropped): not "replayed"
            await t.replay(letter)

    async def test_replay_refuses_a_letter_without_a_valid_destination(
        self, transport_factory: TransportFactory
    ) -> None:
        t = await transport_factory()
        letter = DeadLetter(id=unique("d"), source="not a destination", type_name="", body=b"x")
        with pytest.raises(InvalidIdentifierError):
            await t.replay(letter)

    async def test_at_most_once_drops_a_failed_message(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        calls = 0

        async def broken(message: ContractOrderPlaced, meta: Metadata) -> None:
            nonlocal calls
            calls += 1
            raise RuntimeError("lost on purpose")

        await t1.subscribe(ContractOrderPlaced, broken, qos=QoS.AT_MOST_ONCE, destination=dest, max_deliver=5)
        mid = new_id()
        await t2.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def called() -> bool:
            return calls >= 1

        await eventually(called, what="one delivery")
        await asyncio.sleep(SETTLE)
        assert calls == 1
        assert await _letter_for(transport_dead_letters, str(mid)) is None

    async def test_exactly_once_handles_a_duplicate_message_id_once(
        self, transport_factory: TransportFactory
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest, group = unique("ev"), unique("g")
        handled: list[int] = []

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            handled.append(meta.message_id)

        await t1.subscribe(ContractOrderPlaced, handle, qos=QoS.EXACTLY_ONCE, group=group, destination=dest)
        await t2.subscribe(ContractOrderPlaced, handle, qos=QoS.EXACTLY_ONCE, group=group, destination=dest)
        dup, other = new_id(), new_id()
        for mid in (dup, dup, other, dup):
            await t2.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def both() -> bool:
            return dup in handled and other in handled

        await eventually(both, what="both distinct messages handled")
        await asyncio.sleep(SETTLE)
        assert Counter(handled) == {dup: 1, other: 1}

    async def test_exactly_once_retries_a_failed_message(self, transport_factory: TransportFactory) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        calls = 0
        done: list[int] = []

        async def flaky(message: ContractOrderPlaced, meta: Metadata) -> None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("first attempt fails")
            done.append(meta.message_id)

        await t1.subscribe(ContractOrderPlaced, flaky, qos=QoS.EXACTLY_ONCE, destination=dest, max_deliver=5)
        mid = new_id()
        await t2.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def succeeded() -> bool:
            return bool(done)

        await eventually(succeeded, what="retry after a failure under exactly-once")
        await asyncio.sleep(SETTLE)
        assert (calls, done) == (2, [mid])

    async def test_max_in_flight_bounds_concurrent_handlers(
        self, transport_factory: TransportFactory
    ) -> None:
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")
        running = 0
        peak = 0
        finished = 0

        async def slow(message: ContractOrderPlaced, meta: Metadata) -> None:
            nonlocal running, peak, finished
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1
            finished += 1

        await t1.subscribe(ContractOrderPlaced, slow, destination=dest, max_in_flight=3)
        for i in range(12):
            await t2.publish(ContractOrderPlaced("o", i), destination=dest)

        async def all_done() -> bool:
            return finished >= 12

        await eventually(all_done, what="12 slow handlers finished")
        assert 2 <= peak <= 3, f"peak concurrency {peak} with max_in_flight=3"

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

    # -- one delivery policy (issue 10): what the backends used to disagree on ----------------------

    async def test_exactly_once_claims_inbox_scope_id_shared_within_a_group(
        self, transport_inbox_factory: InboxTransportFactory
    ) -> None:
        """The inbox key is ``inbox.<scope>.<message id>`` on every backend; competing consumers of a
        group share a scope (one claim per message), another group has its own."""
        inbox = _WatchedInbox()
        t1, t2 = await transport_inbox_factory(inbox), await transport_inbox_factory(inbox)
        dest = unique("ev")
        got: list[str] = []

        def recorder(group: str) -> Callable[[ContractOrderPlaced, Metadata], Awaitable[None]]:
            async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
                got.append(group)

            return handle

        for t in (t1, t2):
            await t.subscribe(
                ContractOrderPlaced, recorder("g"), qos=QoS.EXACTLY_ONCE, group="g", destination=dest
            )
        await t2.subscribe(
            ContractOrderPlaced, recorder("h"), qos=QoS.EXACTLY_ONCE, group="h", destination=dest
        )
        mid = new_id()
        await t1.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def both() -> bool:
            return sorted(got) == ["g", "h"]

        await eventually(both, what="one delivery per group")
        await asyncio.sleep(SETTLE)
        assert sorted(got) == ["g", "h"]
        keys = set(inbox.claimed)
        assert len(keys) == 2, keys  # one scope per group
        for key in keys:
            assert key.startswith("inbox.") and key.endswith(f".{mid}"), key

    async def test_a_failing_inbox_claim_retries_the_message(
        self, transport_inbox_factory: InboxTransportFactory
    ) -> None:
        """An inbox that fails to claim never loses the message: it is delivered again later."""
        inbox = _WatchedInbox(fail_claims=1)
        t1 = await transport_inbox_factory(inbox)
        t2 = await transport_inbox_factory(inbox)
        dest = unique("ev")
        handled: list[int] = []

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            handled.append(meta.message_id)

        await t1.subscribe(ContractOrderPlaced, handle, qos=QoS.EXACTLY_ONCE, destination=dest, max_deliver=5)
        mid = new_id()
        await t2.publish(ContractOrderPlaced("o", 1), metadata=Metadata(message_id=mid), destination=dest)

        async def done() -> bool:
            return bool(handled)

        await eventually(done, what="message handled after a failed inbox claim")
        await asyncio.sleep(SETTLE)
        assert handled == [mid]
        assert len(inbox.claimed) >= 2 and inbox.fail_claims == 0

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

    async def test_a_bad_message_is_dead_lettered_once_under_one_id(
        self, transport_factory: TransportFactory, transport_dead_letters: DeadLetterQueue
    ) -> None:
        """A message without a catga id that no subscription can decode, reaching an at-most-once and an
        at-least-once subscription, is one dead letter (both write the same id)."""
        t1, t2 = await transport_factory(), await transport_factory()
        dest = unique("ev")

        async def handle(message: ContractOrderPlaced, meta: Metadata) -> None:
            raise AssertionError("an undecodable message reached the handler")

        await t1.subscribe(ContractOrderPlaced, handle, qos=QoS.AT_MOST_ONCE, destination=dest)
        await t1.subscribe(ContractOrderPlaced, handle, qos=QoS.AT_LEAST_ONCE, group="g", destination=dest)
        garbage = b'\xff{"order_id": ' + unique("x").encode()
        await t2.publish_raw(dest, garbage, {H_TYPE: "contracts.OrderPlaced"})

        async def mine() -> list[DeadLetter]:
            return [letter for letter in await transport_dead_letters.list(10_000) if letter.body == garbage]

        async def dead() -> bool:
            return bool(await mine())

        await eventually(dead, what="undecodable message dead-lettered")
        await asyncio.sleep(SETTLE)
        letters = await mine()
        assert len(letters) == 1, [(x.id, x.error) for x in letters]
        assert letters[0].source == dest and "undecodable" in letters[0].error
