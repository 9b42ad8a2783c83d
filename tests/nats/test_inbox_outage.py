"""EXACTLY_ONCE on NATS when the inbox fails to record a handled message (a leader election, say).

Found by the leader-kill tests (``test_cluster_failover.py``): the handler ran, ``inbox.complete``
failed once and was never retried, so the claim stayed a lock that expired ``ack_wait`` later and the
redelivery ran the handler a second time. These tests pin the retry on a single server, without a
cluster, by failing ``complete`` on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import msgspec
import nats.js.errors
import pytest

from catga.errors import BackendUnavailableError
from catga.memory import MemoryInboxStore
from catga.messages import Metadata, QoS
from catga.nats import NatsConnection, NatsTransport
from catga.protocols import Claim, ClaimStatus
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.contracts._util import eventually

pytestmark = pytest.mark.nats


class FlakyInbox(MemoryInboxStore):
    """An inbox whose first ``failures`` completes fail as an unreachable server's would."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.claimed: list[str] = []

    async def claim(self, key: str, lock_ttl: float = 30.0) -> Claim:
        self.claimed.append(key)
        return await super().claim(key, lock_ttl)

    async def complete(self, key: str, result: bytes = b"", ttl: float = 86400.0) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise BackendUnavailableError("NATS request failed: the connection was lost", backend="nats")
        await super().complete(key, result, ttl)


@pytest.fixture
async def transport(
    nats_url: str, unique_name: str, nats_connection: NatsConnection
) -> AsyncIterator[tuple[NatsTransport, FlakyInbox]]:
    inbox = FlakyInbox(failures=3)
    t = await NatsTransport.connect(
        nats_url,
        registry=contract_registry(),
        prefix=unique_name,
        inbox=inbox,
        storage="memory",
        ack_wait=2.0,
        retry_backoff=0.02,
        retry_backoff_max=0.1,
    )
    yield t, inbox
    await t.aclose()
    for stream in (t.stream, t.command_stream):
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nats_connection.js.delete_stream(stream)


async def test_a_failed_inbox_complete_is_retried_so_a_redelivery_is_not_handled_again(
    transport: tuple[NatsTransport, FlakyInbox], caplog: pytest.LogCaptureFixture
) -> None:
    t, inbox = transport
    handled: list[int] = []

    async def handle(event: ContractOrderPlaced, metadata: Metadata) -> None:
        handled.append(metadata.message_id)

    await t.subscribe(ContractOrderPlaced, handle, qos=QoS.EXACTLY_ONCE, group="g")
    headers = Metadata(message_id=777, qos=QoS.AT_LEAST_ONCE).to_headers("contracts.OrderPlaced")
    body = msgspec.json.encode(ContractOrderPlaced("once", 1))
    with caplog.at_level(logging.WARNING, "catga.nats.transport"):
        await t.publish_raw("contracts.OrderPlaced", body, headers)

        async def recorded() -> bool:
            return (
                bool(inbox.claimed) and (await inbox.claim(inbox.claimed[0])).status == ClaimStatus.COMPLETED
            )

        await eventually(recorded, what="the handled message recorded as completed in the inbox")
    assert handled == [777]
    assert inbox.failures == 0
    assert "succeeded on attempt 4" in caplog.text
    # A redelivery of the same message (another copy in the stream) is acked without running the handler.
    await t.publish_raw("contracts.OrderPlaced", body, {**headers, "Nats-Msg-Id": "a-second-copy"})
    await t.publish(ContractOrderPlaced("sentinel", 2))

    async def sentinel_handled() -> bool:
        return len(handled) >= 2

    await eventually(sentinel_handled, what="the sentinel handled")
    await asyncio.sleep(0.2)
    assert handled[0] == 777 and handled.count(777) == 1, handled
