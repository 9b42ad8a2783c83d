"""Conformance suite for :class:`~catga.protocols.DeadLetterQueue`."""

from __future__ import annotations

import time

from catga.protocols import DeadLetter, DeadLetterQueue
from catga.testing.contracts._util import unique

__all__ = ("DeadLetterQueueContract",)

NOT_UTF8 = b"\xff\xfe\x00\x80raw\xc3(\r\n"


def _letter(id: str, failed_at: float, **kw: object) -> DeadLetter:
    fields: dict[str, object] = {
        "source": "contracts.OrderPlaced",
        "type_name": "contracts.OrderPlaced",
        "body": b'{"order_id":"o","total":1}',
        "headers": {"Catga-Id": id},
        "error": "ValueError: boom",
        "attempts": 5,
    }
    fields.update(kw)
    return DeadLetter(id=id, failed_at=failed_at, **fields)  # type: ignore[arg-type]


class DeadLetterQueueContract:
    """Every statement of :class:`~catga.protocols.DeadLetterQueue`, as tests.

    Bind it with a ``dead_letter_queue`` fixture yielding a fresh, empty, isolated queue.
    """

    async def test_add_then_get_round_trips_every_field(self, dead_letter_queue: DeadLetterQueue) -> None:
        now = time.time()
        letter = _letter(
            unique("d"),
            now,
            body=NOT_UTF8,
            headers={"Catga-Id": "1", "Catga-Type": "contracts.OrderPlaced", "x-user": "a b:c"},
            error="SerializationError: cannot decode contracts.OrderPlaced: 'utf-8' codec … ✗",
            attempts=3,
            type_name="",
        )
        await dead_letter_queue.add(letter)
        got = await dead_letter_queue.get(letter.id)
        assert got is not None
        assert got.body == NOT_UTF8 and type(got.body) is bytes
        assert (got.id, got.source, got.type_name, got.headers, got.error, got.attempts) == (
            letter.id,
            letter.source,
            letter.type_name,
            letter.headers,
            letter.error,
            letter.attempts,
        )
        assert abs(got.failed_at - now) < 1e-3

    async def test_get_unknown_id_is_none(self, dead_letter_queue: DeadLetterQueue) -> None:
        assert await dead_letter_queue.get(unique("d")) is None

    async def test_list_is_oldest_first_and_limited(self, dead_letter_queue: DeadLetterQueue) -> None:
        now = time.time()
        ids = [unique(f"d{i}") for i in range(5)]
        for i, id in enumerate(ids):
            await dead_letter_queue.add(_letter(id, now + i * 0.001))
        assert [d.id for d in await dead_letter_queue.list()] == ids
        assert [d.id for d in await dead_letter_queue.list(limit=2)] == ids[:2]
        assert await dead_letter_queue.count() == 5

    async def test_list_of_an_empty_queue(self, dead_letter_queue: DeadLetterQueue) -> None:
        assert await dead_letter_queue.list() == []
        assert await dead_letter_queue.count() == 0

    async def test_kind_and_message_id_round_trip(self, dead_letter_queue: DeadLetterQueue) -> None:
        a, b = unique("a"), unique("b")
        await dead_letter_queue.add(_letter(a, time.time(), kind="command", message_id="42"))
        await dead_letter_queue.add(_letter(b, time.time()))
        got_a, got_b = await dead_letter_queue.get(a), await dead_letter_queue.get(b)
        assert got_a is not None and (got_a.kind, got_a.message_id) == ("command", "42")
        assert got_b is not None and (got_b.kind, got_b.message_id) == ("", "")
        assert [(x.kind, x.message_id) for x in await dead_letter_queue.list()] == [
            ("command", "42"),
            ("", ""),
        ]

    async def test_delete_with_expected_keeps_a_letter_added_again(
        self, dead_letter_queue: DeadLetterQueue
    ) -> None:
        id = unique("d")
        await dead_letter_queue.add(_letter(id, time.time(), error="first failure"))
        read = await dead_letter_queue.get(id)
        assert read is not None
        await dead_letter_queue.add(_letter(id, time.time() + 1, error="failed again after a replay"))
        assert await dead_letter_queue.delete(id, expected=read) is False
        kept = await dead_letter_queue.get(id)
        assert kept is not None and kept.error == "failed again after a replay"
        assert await dead_letter_queue.delete(id, expected=kept) is True
        assert await dead_letter_queue.get(id) is None
        assert await dead_letter_queue.delete(id, expected=kept) is False
        assert await dead_letter_queue.count() == 0

    async def test_delete_returns_whether_it_existed(self, dead_letter_queue: DeadLetterQueue) -> None:
        a, b = unique("a"), unique("b")
        await dead_letter_queue.add(_letter(a, time.time()))
        await dead_letter_queue.add(_letter(b, time.time()))
        assert await dead_letter_queue.delete(a) is True
        assert await dead_letter_queue.delete(a) is False
        assert await dead_letter_queue.delete(unique("x")) is False
        assert await dead_letter_queue.get(a) is None
        assert [d.id for d in await dead_letter_queue.list()] == [b]
        assert await dead_letter_queue.count() == 1

    async def test_a_duplicate_id_replaces_the_letter(self, dead_letter_queue: DeadLetterQueue) -> None:
        id = unique("d")
        await dead_letter_queue.add(_letter(id, time.time(), error="first", attempts=1, body=b"one"))
        await dead_letter_queue.add(_letter(id, time.time(), error="second", attempts=2, body=b"two"))
        got = await dead_letter_queue.get(id)
        assert got is not None and (got.error, got.attempts, got.body) == ("second", 2, b"two")
        assert await dead_letter_queue.count() == 1
        assert [d.id for d in await dead_letter_queue.list()] == [id]

    async def test_every_byte_value_survives(self, dead_letter_queue: DeadLetterQueue) -> None:
        id = unique("d")
        body = bytes(range(256)) * 4
        await dead_letter_queue.add(_letter(id, time.time(), body=body))
        got = await dead_letter_queue.get(id)
        assert got is not None and got.body == body
        listed = await dead_letter_queue.list()
        assert listed[0].body == body

    async def test_an_empty_body_survives(self, dead_letter_queue: DeadLetterQueue) -> None:
        id = unique("d")
        await dead_letter_queue.add(_letter(id, time.time(), body=b"", headers={}))
        got = await dead_letter_queue.get(id)
        assert got is not None and (got.body, got.headers) == (b"", {})
