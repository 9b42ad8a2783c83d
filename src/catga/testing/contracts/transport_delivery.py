"""Conformance suite for :class:`~catga.protocols.Transport`, part two: delivery guarantees.

QoS (redelivery, dead letters, at-most-once, exactly-once, back-pressure), dead-letter replay, and the
one delivery policy every backend shares (issue 10). Bind :class:`~catga.testing.contracts.TransportContract`,
which includes these tests; its docstring names the fixtures.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest

from catga.errors import (
    BackendError,
    InvalidIdentifierError,
)
from catga.ids import new_id
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import COMMAND, EVENT, DeadLetter, DeadLetterQueue
from catga.testing.contracts._transport_helpers import (
    SETTLE,
    InboxTransportFactory,
    TransportFactory,
    WatchedInbox,
    letter_for,
    raw_message_dead_lettered,
)
from catga.testing.contracts._util import eventually, unique
from catga.testing.contracts.messages import (
    ContractDoWork,
    ContractOrderPlaced,
    contract_registry,
)

__all__ = ("TransportDeliveryContract",)


class TransportDeliveryContract:
    """The delivery-guarantee half of :class:`~catga.testing.contracts.TransportContract` (same fixtures)."""

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
        assert await letter_for(transport_dead_letters, str(mid)) is None

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
            return await letter_for(transport_dead_letters, mid) is not None

        await eventually(dead, what=f"message {mid} dead-lettered")
        letter = await letter_for(transport_dead_letters, mid)
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
        letter, dest, handled = await raw_message_dead_lettered(
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
        letter, _, handled = await raw_message_dead_lettered(
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
            return await letter_for(transport_dead_letters, str(mid)) is not None

        await eventually(dead, what=f"message {mid} dead-lettered")
        letter = await letter_for(transport_dead_letters, str(mid))
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
            return await letter_for(transport_dead_letters, str(mid)) is not None

        await eventually(dead, what=f"command {mid} dead-lettered")
        letter = await letter_for(transport_dead_letters, str(mid))
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
        assert await letter_for(transport_dead_letters, str(mid)) is None

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

    # -- one delivery policy (issue 10): what the backends used to disagree on ----------------------

    async def test_exactly_once_claims_inbox_scope_id_shared_within_a_group(
        self, transport_inbox_factory: InboxTransportFactory
    ) -> None:
        """The inbox key is ``inbox.<scope>.<message id>`` on every backend; competing consumers of a
        group share a scope (one claim per message), another group has its own."""
        inbox = WatchedInbox()
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
        inbox = WatchedInbox(fail_claims=1)
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
