"""``catga.dead_letters.replay_dead_letters``: what it does when a step fails (on the memory backend)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from catga.dead_letters import ReplayOutcome, ReplayStatus, replay_dead_letters
from catga.errors import ConfigurationError
from catga.ids import new_id
from catga.memory import MemoryDeadLetterQueue, MemoryTransport
from catga.messages import Event, Metadata, message_name
from catga.protocols import DeadLetter
from catga.testing.contracts._util import eventually


@message_name("test_dead_letters.Shipped")
@dataclass(frozen=True)
class Shipped(Event):
    n: int


class _Flaky:
    def __init__(self) -> None:
        self.broken = True
        self.handled: list[int] = []

    async def __call__(self, event: Shipped, meta: Metadata) -> None:
        if self.broken:
            raise RuntimeError("still broken")
        self.handled.append(meta.message_id)


async def _dead(transport: MemoryTransport, dlq: MemoryDeadLetterQueue) -> DeadLetter:
    mid = new_id()
    await transport.publish(Shipped(1), metadata=Metadata(message_id=mid))

    async def dead() -> bool:
        return await dlq.count() == 1

    await eventually(dead, what="dead-lettered")
    letter = await dlq.get(str(mid))
    assert letter is not None
    return letter


class _DeleteAfterItFailsAgain(MemoryDeadLetterQueue):
    """A queue whose ``delete`` runs only once the replayed message was dead-lettered again."""

    def __init__(self) -> None:
        super().__init__()
        self.adds = 0
        self.added_again = asyncio.Event()

    async def add(self, letter: DeadLetter) -> None:
        await super().add(letter)
        self.adds += 1
        if self.adds == 2:
            self.added_again.set()

    async def delete(self, id: str, *, expected: DeadLetter | None = None) -> bool:
        if expected is not None:  # replay's delete: let the new failure land first
            await asyncio.wait_for(self.added_again.wait(), 5)
        return await super().delete(id, expected=expected)


async def test_a_replayed_message_that_fails_again_keeps_its_new_letter() -> None:
    dlq = _DeleteAfterItFailsAgain()
    async with MemoryTransport(dead_letters=dlq) as transport:
        await transport.subscribe(Shipped, _Flaky(), max_deliver=1)
        first = await _dead(transport, dlq)

        [outcome] = await replay_dead_letters(transport, dlq, [first.id])

        assert outcome.status is ReplayStatus.REPLAYED_FAILED_AGAIN and outcome.ok and outcome.republished
        kept = await dlq.get(first.id)
        assert kept is not None and kept.failed_at > first.failed_at  # the new failure, not lost


class _DeleteFails(MemoryDeadLetterQueue):
    async def delete(self, id: str, *, expected: DeadLetter | None = None) -> bool:
        raise ConnectionError("dead-letter store went away")


async def test_a_failed_delete_after_the_replay_is_reported_and_the_letter_stays() -> None:
    dlq = _DeleteFails()
    consumer = _Flaky()
    async with MemoryTransport(dead_letters=dlq) as transport:
        await transport.subscribe(Shipped, consumer, max_deliver=1)
        letter = await _dead(transport, dlq)
        consumer.broken = False

        [outcome] = await replay_dead_letters(transport, dlq, [letter.id])

        assert outcome.status is ReplayStatus.NOT_DELETED and outcome.republished and not outcome.ok
        assert "dead-letter store went away" in outcome.error and "delete it" in outcome.error
        assert await dlq.get(letter.id) == letter

        async def handled() -> bool:
            return bool(consumer.handled)

        await eventually(handled, what="the replayed event handled")
        assert consumer.handled == [int(letter.id)]


async def test_a_message_nobody_would_receive_is_not_replayed_and_its_letter_stays() -> None:
    dlq = MemoryDeadLetterQueue()
    async with MemoryTransport(dead_letters=dlq) as transport:
        sub = await transport.subscribe(Shipped, _Flaky(), max_deliver=1)
        letter = await _dead(transport, dlq)
        await sub.aclose()

        outcomes = await replay_dead_letters(transport, dlq)  # all of them

        assert outcomes == [
            ReplayOutcome(
                id=letter.id,
                status=ReplayStatus.FAILED,
                kind="event",
                destination="test_dead_letters.Shipped",
                error=outcomes[0].error,
            )
        ]
        assert "no subscription" in outcomes[0].error and not outcomes[0].republished
        assert await dlq.get(letter.id) == letter


async def test_unknown_ids_are_reported_not_found() -> None:
    dlq = MemoryDeadLetterQueue()
    async with MemoryTransport(dead_letters=dlq) as transport:
        [outcome] = await replay_dead_letters(transport, dlq, ["nope"])
    assert outcome.status is ReplayStatus.NOT_FOUND and not outcome.ok


async def test_a_transport_without_replay_is_refused() -> None:
    class Bare:
        pass

    with pytest.raises(ConfigurationError, match="cannot replay dead letters"):
        await replay_dead_letters(Bare(), MemoryDeadLetterQueue(), ["x"])  # type: ignore[arg-type]
