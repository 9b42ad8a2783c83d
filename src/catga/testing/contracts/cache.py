"""Conformance suite for :class:`~catga.protocols.Cache`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from catga.errors import ConfigurationError, InvalidIdentifierError
from catga.protocols import Cache
from catga.testing.contracts._util import unique
from catga.testing.contracts.event_store import INVALID_IDS

__all__ = ("CacheContract",)


class CacheContract:
    """Every statement of :class:`~catga.protocols.Cache`, as tests.

    Bind it with a ``cache`` fixture yielding a fresh, isolated cache (closed after the test).
    """

    async def test_missing_key_is_none(self, cache: Cache) -> None:
        assert await cache.get(unique("k")) is None

    async def test_set_then_get(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"value")
        assert await cache.get(key) == b"value"

    async def test_bytes_are_kept_exactly(self, cache: Cache) -> None:
        key = unique("k")
        value = bytes(range(256))
        await cache.set(key, value)
        got = await cache.get(key)
        assert got == value and type(got) is bytes
        await cache.set(key, b"")
        assert await cache.get(key) == b""

    async def test_set_overwrites(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"one")
        await cache.set(key, b"two")
        assert await cache.get(key) == b"two"

    async def test_a_value_expires_after_its_ttl(self, cache: Cache) -> None:
        key, forever = unique("k"), unique("k")
        await cache.set(key, b"v", ttl=0.3)
        await cache.set(forever, b"v")
        assert await cache.get(key) == b"v"
        await asyncio.sleep(0.5)
        assert await cache.get(key) is None
        assert await cache.get(forever) == b"v"

    async def test_overwriting_without_ttl_removes_the_expiry(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"short", ttl=0.3)
        await cache.set(key, b"long")
        await asyncio.sleep(0.5)
        assert await cache.get(key) == b"long"

    async def test_delete_returns_whether_the_key_existed(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"v")
        assert await cache.delete(key) is True
        assert await cache.get(key) is None
        assert await cache.delete(key) is False
        assert await cache.delete(unique("k")) is False

    async def test_get_or_set_calls_the_factory_only_on_a_miss(self, cache: Cache) -> None:
        key = unique("k")
        calls = 0

        async def factory() -> bytes:
            nonlocal calls
            calls += 1
            return f"computed-{calls}".encode()

        assert await cache.get_or_set(key, factory) == b"computed-1"
        assert await cache.get_or_set(key, factory) == b"computed-1"
        assert await cache.get(key) == b"computed-1"
        assert calls == 1

    async def test_get_or_set_returns_an_existing_value(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"there")

        async def factory() -> bytes:
            raise AssertionError("factory called on a hit")

        assert await cache.get_or_set(key, factory) == b"there"

    async def test_get_or_set_applies_the_ttl(self, cache: Cache) -> None:
        key = unique("k")
        calls = 0

        async def factory() -> bytes:
            nonlocal calls
            calls += 1
            return b"v%d" % calls

        assert await cache.get_or_set(key, factory, ttl=0.3) == b"v1"
        await asyncio.sleep(0.5)
        assert await cache.get(key) is None
        assert await cache.get_or_set(key, factory, ttl=0.3) == b"v2"
        assert calls == 2

    async def test_a_failing_factory_stores_nothing(self, cache: Cache) -> None:
        key = unique("k")

        async def factory() -> bytes:
            raise RuntimeError("backend down")

        with pytest.raises(RuntimeError, match="backend down"):
            await cache.get_or_set(key, factory)
        assert await cache.get(key) is None

    async def test_concurrent_misses_share_one_factory_call(self, cache: Cache) -> None:
        key = unique("c")
        calls = 0
        release = asyncio.Event()

        async def factory() -> bytes:
            nonlocal calls
            calls += 1
            await release.wait()
            return b"once"

        waiters = [asyncio.ensure_future(cache.get_or_set(key, factory)) for _ in range(8)]
        await asyncio.sleep(0.05)
        release.set()
        assert await asyncio.gather(*waiters) == [b"once"] * 8
        assert calls == 1

    async def test_a_failing_factory_fails_every_concurrent_caller_and_stores_nothing(
        self, cache: Cache
    ) -> None:
        key = unique("c")
        release = asyncio.Event()

        async def factory() -> bytes:
            await release.wait()
            raise RuntimeError("factory failed")

        waiters = [asyncio.ensure_future(cache.get_or_set(key, factory)) for _ in range(4)]
        await asyncio.sleep(0.05)
        release.set()
        results = await asyncio.gather(*waiters, return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "factory failed" in str(r) for r in results), results
        assert await cache.get(key) is None

    async def test_a_bad_ttl_is_refused_before_the_factory_runs(self, cache: Cache) -> None:
        called = False

        async def factory() -> bytes:
            nonlocal called
            called = True
            return b"x"

        with pytest.raises(ConfigurationError):
            await cache.get_or_set(unique("c"), factory, ttl=0)
        assert not called

    async def test_keys_are_independent(self, cache: Cache) -> None:
        key = unique("k")
        await cache.set(key, b"a")
        for other in (f"{key}.b", f"{key}:b", f"{key}b"):
            assert await cache.get(other) is None
            await cache.set(other, other.encode())
        assert await cache.get(key) == b"a"
        assert await cache.get(f"{key}.b") == f"{key}.b".encode()

    @pytest.mark.parametrize("bad", INVALID_IDS, ids=repr)
    async def test_invalid_keys_are_rejected(self, cache: Cache, bad: Any) -> None:
        with pytest.raises(InvalidIdentifierError):
            await cache.get(bad)
        with pytest.raises(InvalidIdentifierError):
            await cache.set(bad, b"v")
        with pytest.raises(InvalidIdentifierError):
            await cache.delete(bad)
