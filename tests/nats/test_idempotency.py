"""The idempotency/inbox contract on a NATS KV-layout bucket, plus NATS-only behaviour."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from catga.nats import NatsConnection, NatsIdempotencyStore, NatsInboxStore
from catga.protocols import ClaimStatus
from catga.testing.contracts import IdempotencyStoreContract

pytestmark = pytest.mark.nats


@pytest.fixture
async def idempotency_store(
    nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
) -> AsyncIterator[NatsIdempotencyStore]:
    doomed_streams.append(f"KV_{unique_name}")
    async with NatsIdempotencyStore(nats_connection, bucket=unique_name) as store:
        yield store


class TestNatsIdempotencyStore(IdempotencyStoreContract):
    pass


class TestNatsInboxStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(
        self, nats_connection: NatsConnection, unique_name: str, doomed_streams: list[str]
    ) -> AsyncIterator[NatsIdempotencyStore]:
        doomed_streams.append(f"KV_{unique_name}")
        async with NatsInboxStore(nats_connection, bucket=unique_name, storage="memory") as store:
            yield store


async def test_a_claim_made_through_one_store_is_seen_by_another(
    idempotency_store: NatsIdempotencyStore, nats_connection: NatsConnection
) -> None:
    async with NatsIdempotencyStore(nats_connection, bucket=idempotency_store.bucket) as other:
        assert (await idempotency_store.claim("m-1")).status == ClaimStatus.CLAIMED
        assert (await other.claim("m-1")).status == ClaimStatus.IN_PROGRESS
        await idempotency_store.complete("m-1", b"r")
        claim = await other.claim("m-1")
        assert (claim.status, claim.result) == (ClaimStatus.COMPLETED, b"r")


async def test_records_carry_a_server_side_ttl(
    idempotency_store: NatsIdempotencyStore, nats_connection: NatsConnection
) -> None:
    await idempotency_store.claim("k.1", lock_ttl=5.0)
    stream = f"KV_{idempotency_store.bucket}"
    raw = await nats_connection.js.get_last_msg(stream, f"$KV.{idempotency_store.bucket}.k=2E1")
    assert raw.headers is not None and raw.headers["Nats-TTL"] == "6"
    await idempotency_store.complete("k.1", b"", ttl=100.5)
    raw = await nats_connection.js.get_last_msg(stream, f"$KV.{idempotency_store.bucket}.k=2E1")
    assert raw.headers is not None and raw.headers["Nats-TTL"] == "102"
