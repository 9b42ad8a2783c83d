"""Conformance suite for :class:`~catga.protocols.IdempotencyStore` (and the inbox, same contract)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from catga.errors import InvalidIdentifierError
from catga.protocols import ClaimStatus, IdempotencyStore
from catga.testing.contracts._util import unique
from catga.testing.contracts.event_store import INVALID_IDS

__all__ = ("IdempotencyStoreContract",)

# A store may also take message ids as ints (an extension of the str protocol), so ints are not
# required to be rejected here.
_INVALID_KEYS = tuple(bad for bad in INVALID_IDS if not isinstance(bad, int))


class IdempotencyStoreContract:
    """Every statement of :class:`~catga.protocols.IdempotencyStore`, as tests.

    Bind it with an ``idempotency_store`` fixture yielding a fresh, isolated store (closed after the
    test). Bind it a second time for the inbox class when it is a distinct class.
    """

    async def test_a_free_key_is_claimed(self, idempotency_store: IdempotencyStore) -> None:
        claim = await idempotency_store.claim(unique("k"))
        assert claim.status == ClaimStatus.CLAIMED
        assert claim.result is None

    async def test_a_live_claim_is_in_progress_for_others(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        assert (await idempotency_store.claim(key, 30.0)).status == ClaimStatus.CLAIMED
        again = await idempotency_store.claim(key, 30.0)
        assert again.status == ClaimStatus.IN_PROGRESS
        assert again.result is None

    async def test_numeric_message_ids_are_valid_keys(self, idempotency_store: IdempotencyStore) -> None:
        key = "7234019283746529281"
        other = "72340192837465292810"
        assert (await idempotency_store.claim(key)).status == ClaimStatus.CLAIMED
        assert (await idempotency_store.claim(other)).status == ClaimStatus.CLAIMED

    async def test_completed_returns_the_stored_result(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        await idempotency_store.claim(key)
        result = b'{"ok":true}\x00\xff\xfe'
        await idempotency_store.complete(key, result)
        for _ in range(2):
            claim = await idempotency_store.claim(key)
            assert claim.status == ClaimStatus.COMPLETED
            assert claim.result == result

    async def test_completed_with_the_default_empty_result(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        await idempotency_store.claim(key)
        await idempotency_store.complete(key)
        claim = await idempotency_store.claim(key)
        assert claim.status == ClaimStatus.COMPLETED
        assert claim.result == b""

    async def test_exactly_one_of_32_concurrent_claims_wins(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        key = unique("k")
        async with asyncio.timeout(30):
            claims = await asyncio.gather(*(idempotency_store.claim(key, 30.0) for _ in range(32)))
        statuses = [c.status for c in claims]
        assert statuses.count(ClaimStatus.CLAIMED) == 1
        assert statuses.count(ClaimStatus.IN_PROGRESS) == 31

    async def test_release_frees_the_key_at_once(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        await idempotency_store.claim(key, 30.0)
        await idempotency_store.release(key)
        assert (await idempotency_store.claim(key, 30.0)).status == ClaimStatus.CLAIMED

    async def test_release_never_removes_a_completed_record(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        key = unique("k")
        await idempotency_store.claim(key)
        await idempotency_store.complete(key, b"done")
        await idempotency_store.release(key)
        claim = await idempotency_store.claim(key)
        assert (claim.status, claim.result) == (ClaimStatus.COMPLETED, b"done")

    async def test_release_of_an_unknown_key_is_harmless(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        await idempotency_store.release(key)
        assert (await idempotency_store.claim(key)).status == ClaimStatus.CLAIMED

    async def test_an_expired_claim_frees_the_key(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        claimed_at = time.monotonic()
        assert (await idempotency_store.claim(key, lock_ttl=1.0)).status == ClaimStatus.CLAIMED
        second = await idempotency_store.claim(key, lock_ttl=1.0)
        if time.monotonic() - claimed_at < 0.9:  # a loaded machine may take longer than the ttl
            assert second.status == ClaimStatus.IN_PROGRESS
        await asyncio.sleep(max(0.0, claimed_at + 1.2 - time.monotonic()))
        assert (await idempotency_store.claim(key, lock_ttl=30.0)).status == ClaimStatus.CLAIMED
        assert (await idempotency_store.claim(key, lock_ttl=30.0)).status == ClaimStatus.IN_PROGRESS

    async def test_a_completed_record_is_forgotten_after_its_ttl(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        key = unique("k")
        await idempotency_store.claim(key)
        await idempotency_store.complete(key, b"r", ttl=0.3)
        assert (await idempotency_store.claim(key)).status == ClaimStatus.COMPLETED
        await asyncio.sleep(0.5)
        assert (await idempotency_store.claim(key)).status == ClaimStatus.CLAIMED

    async def test_completion_outlives_the_claim_lock(self, idempotency_store: IdempotencyStore) -> None:
        key = unique("k")
        await idempotency_store.claim(key, lock_ttl=0.3)
        await idempotency_store.complete(key, b"kept", ttl=30.0)
        await asyncio.sleep(0.5)
        claim = await idempotency_store.claim(key)
        assert (claim.status, claim.result) == (ClaimStatus.COMPLETED, b"kept")

    async def test_keys_are_independent(self, idempotency_store: IdempotencyStore) -> None:
        a, b = unique("k"), unique("k")
        await idempotency_store.claim(a)
        await idempotency_store.complete(a, b"a")
        assert (await idempotency_store.claim(b)).status == ClaimStatus.CLAIMED
        assert (await idempotency_store.claim(f"{a}.x")).status == ClaimStatus.CLAIMED

    @pytest.mark.parametrize("bad", _INVALID_KEYS, ids=repr)
    async def test_invalid_keys_are_rejected(self, idempotency_store: IdempotencyStore, bad: Any) -> None:
        with pytest.raises(InvalidIdentifierError):
            await idempotency_store.claim(bad)
        with pytest.raises(InvalidIdentifierError):
            await idempotency_store.complete(bad, b"")
        with pytest.raises(InvalidIdentifierError):
            await idempotency_store.release(bad)
