"""catga._delivery: the one consumer delivery policy every transport executes (no server needed)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from catga._delivery import ACKED, DeliveryPolicy, Outcome, Verdict, inbox_key, letter_id
from catga.errors import BackendUnavailableError
from catga.memory import MemoryDeadLetterQueue, MemoryInboxStore
from catga.messages import H_ID, H_TYPE, Metadata, QoS
from catga.protocols import Claim, DeadLetter
from catga.testing.contracts import ContractOrderPlaced, contract_registry

LOG = logging.getLogger("test.delivery")


def _message(mid: int = 7) -> tuple[dict[str, str], bytes]:
    registry = contract_registry()
    codec = registry.codec_for(ContractOrderPlaced)
    return Metadata(message_id=mid).to_headers(codec.name), codec.encode(ContractOrderPlaced("o", 1))


def _policy(handler: object, **kw: object) -> DeliveryPolicy:
    registry = contract_registry()
    options: dict[str, object] = {
        "codec": registry.codec_for(ContractOrderPlaced),
        "handler": handler,
        "qos": QoS.AT_LEAST_ONCE,
        "destination": "d",
        "max_deliver": 3,
        "log": LOG,
        "registry": registry,
        "retry_backoff": 0.5,
        "retry_backoff_max": 1.5,
    }
    options.update(kw)
    return DeliveryPolicy(**options)  # type: ignore[arg-type]


class Handler:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail

    async def __call__(self, message: ContractOrderPlaced, meta: Metadata) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("boom")


async def test_a_handled_message_is_acked_without_allocating_an_outcome() -> None:
    handler = Handler()
    headers, body = _message()
    assert await _policy(handler).deliver(headers, body, 1, "s") is ACKED
    assert handler.calls == 1


async def test_a_failing_handler_is_retried_with_backoff_then_dead_lettered() -> None:
    dlq = MemoryDeadLetterQueue()
    policy = _policy(Handler(fail=True), dead_letters=dlq)
    headers, body = _message()
    assert await policy.deliver(headers, body, 1, "s") == Outcome(Verdict.RETRY, 0.5)
    assert await policy.deliver(headers, body, 2, "s") == Outcome(Verdict.RETRY, 1.0)
    assert (await policy.deliver(headers, body, 3, "s")).verdict is Verdict.DEAD
    (letter,) = await dlq.list()
    assert (letter.id, letter.source, letter.attempts, letter.kind) == ("7", "d", 3, "event")
    assert letter.error == "RuntimeError: boom"


async def test_at_most_once_drops_a_failure() -> None:
    dlq = MemoryDeadLetterQueue()
    policy = _policy(Handler(fail=True), qos=QoS.AT_MOST_ONCE, dead_letters=dlq)
    headers, body = _message()
    assert await policy.deliver(headers, body, 1, "s") is ACKED
    assert await dlq.count() == 0


async def test_a_delivery_past_max_deliver_is_dead_lettered_unhandled() -> None:
    dlq = MemoryDeadLetterQueue()
    handler = Handler()
    headers, body = _message()
    outcome = await _policy(handler, dead_letters=dlq).deliver(headers, body, 4, "s", command=True)
    assert outcome.verdict is Verdict.DEAD and handler.calls == 0
    (letter,) = await dlq.list()
    assert "without an ack" in letter.error and letter.kind == "command"


class _BrokenQueue(MemoryDeadLetterQueue):
    async def add(self, letter: DeadLetter) -> None:
        raise BackendUnavailableError("dlq down", backend="test")


async def test_a_failed_dead_letter_write_keeps_the_message() -> None:
    outcome = await _policy(Handler(), dead_letters=_BrokenQueue()).deliver({H_TYPE: "x"}, b"", 1, "s")
    assert outcome.verdict is Verdict.KEEP and outcome.delay == 0.5


async def test_exactly_once_claims_completes_and_acks_a_duplicate() -> None:
    inbox = MemoryInboxStore()
    handler = Handler()
    policy = _policy(handler, qos=QoS.EXACTLY_ONCE, inbox=inbox)
    headers, body = _message(42)
    assert await policy.deliver(headers, body, 1, "scope") is ACKED
    assert await policy.deliver(headers, body, 1, "scope") is ACKED
    assert handler.calls == 1
    assert (await inbox.claim(inbox_key("scope", 42))).status.name == "COMPLETED"
    assert inbox_key("scope", 42) == "inbox.scope.42"


async def test_exactly_once_waits_while_another_consumer_holds_the_claim() -> None:
    inbox = MemoryInboxStore()
    await inbox.claim("inbox.s.7", 30.0)
    handler = Handler()
    headers, body = _message()
    outcome = await _policy(handler, qos=QoS.EXACTLY_ONCE, inbox=inbox).deliver(headers, body, 2, "s")
    assert outcome == Outcome(Verdict.WAIT, 0.5) and handler.calls == 0


class _DownInbox(MemoryInboxStore):
    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        raise BackendUnavailableError("inbox down", backend="test")


async def test_a_failing_inbox_claim_waits_and_does_not_run_the_handler() -> None:
    handler = Handler()
    headers, body = _message()
    outcome = await _policy(handler, qos=QoS.EXACTLY_ONCE, inbox=_DownInbox()).deliver(headers, body, 2, "s")
    assert outcome == Outcome(Verdict.WAIT, 1.0) and handler.calls == 0


async def test_a_failed_handler_releases_its_claim_and_a_cancelled_one_too() -> None:
    inbox = MemoryInboxStore()
    headers, body = _message()
    policy = _policy(Handler(fail=True), qos=QoS.EXACTLY_ONCE, inbox=inbox)
    assert (await policy.deliver(headers, body, 1, "s")).verdict is Verdict.RETRY
    assert (await inbox.claim("inbox.s.7")).status.name == "CLAIMED"
    await inbox.release("inbox.s.7")

    started = asyncio.Event()

    async def hang(message: ContractOrderPlaced, meta: Metadata) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.ensure_future(
        _policy(hang, qos=QoS.EXACTLY_ONCE, inbox=inbox).deliver(headers, body, 1, "s")
    )
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await inbox.claim("inbox.s.7")).status.name == "CLAIMED"  # released, so free again


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        ({}, b"x", "no Catga-Type header"),
        ({H_TYPE: "nobody.Knows", H_ID: "1"}, b"{}", "unknown message type 'nobody.Knows'"),
        ({H_TYPE: "contracts.Noted", H_ID: "1"}, b"{}", "decodes only 'contracts.OrderPlaced'"),
        ({H_TYPE: "contracts.OrderPlaced", H_ID: "1"}, b"{nope", "undecodable"),
    ],
)
async def test_an_undecodable_message_is_dead_lettered_at_once(
    headers: dict[str, str], body: bytes, reason: str
) -> None:
    dlq = MemoryDeadLetterQueue()
    handler = Handler()
    outcome = await _policy(handler, dead_letters=dlq).deliver(headers, body, 1, "s")
    assert outcome.verdict is Verdict.DEAD and handler.calls == 0
    (letter,) = await dlq.list()
    assert reason in letter.error and letter.body == body


def test_a_letter_id_is_the_message_id_or_a_digest_of_the_message() -> None:
    assert letter_id("d", {H_ID: "9"}, b"x") == "9"
    a = letter_id("d", {H_TYPE: "t"}, b"x")
    assert a.startswith("unidentified-") and a == letter_id("d", {H_TYPE: "t"}, b"x")
    assert len({a, letter_id("e", {H_TYPE: "t"}, b"x"), letter_id("d", {H_TYPE: "u"}, b"x")}) == 3
