"""Redis Sentinel: URLs, finding the primary, and following a failover under load.

The contract suites run on the Sentinel set through ``contract_redis_url`` (see ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from catga.errors import BackendError, BackendUnavailableError, ConfigurationError
from catga.redis import RedisClient, RedisEventStore, RedisSentinelClient
from catga.redis.sentinel import parse_sentinel_url
from catga.testing.contracts import ContractOrderPlaced, contract_registry
from catga.testing.contracts._util import eventually
from catga.testing.redis_sentinel import RedisSentinel
from chaos import Chaos

pytestmark = pytest.mark.redis


def test_sentinel_urls_name_the_sentinels_the_service_and_the_data_nodes_options() -> None:
    service, data, sentinels = parse_sentinel_url(
        "redis+sentinel://u:pw@127.0.0.1:26379,127.0.0.1:26380/mymaster/2?client_name=app"
    )
    assert service == "mymaster"
    assert [s.address for s in sentinels] == ["127.0.0.1:26379", "127.0.0.1:26380"]
    assert all(s.password is None for s in sentinels)  # the sentinels are asked without credentials
    assert (data.username, data.password, data.db, data.client_name) == ("u", "pw", 2, "app")
    assert parse_sentinel_url("rediss+sentinel://127.0.0.1:26379/m?ssl_cert_reqs=none")[1].ssl_context
    for bad in ("redis+sentinel://127.0.0.1:26379", "redis+sentinel:///m", "redis+sentinel://h:1/a/b/c"):
        with pytest.raises(ConfigurationError, match="names the sentinels and the monitored service"):
            parse_sentinel_url(bad)
    client = RedisClient.from_url("redis+sentinel://127.0.0.1:26379/mymaster")
    assert isinstance(client, RedisSentinelClient) and not client.layout.cluster


async def test_an_unknown_service_or_no_sentinel_says_so(redis_sentinel_url: str) -> None:
    base = redis_sentinel_url.rpartition("/")[0]
    async with RedisClient.from_url(f"{base}/nosuch", timeout=2) as client:
        with pytest.raises(BackendUnavailableError, match="does not monitor 'nosuch'"):
            await client.ping()
    async with RedisClient.from_url("redis+sentinel://127.0.0.1:1/mymaster", connect_timeout=1) as client:
        with pytest.raises(BackendUnavailableError, match="no sentinel named the primary"):
            await client.ping()


async def test_wait_replicas_confirms_each_write_or_says_it_is_unconfirmed(
    redis_sentinel: RedisSentinel, unique_name: str
) -> None:
    redis_sentinel_url = redis_sentinel.url  # healed: the primary has its replica
    url = f"{redis_sentinel_url}?wait_replicas=1&wait_timeout=2"
    async with RedisClient.from_url(url, prefix=unique_name) as client:
        store = RedisEventStore(client, registry=contract_registry())
        assert await store.append("s", [ContractOrderPlaced("o", 1)]) == 0
        assert await client.execute_many([("SET", f"{unique_name}:a", 1), ("GET", f"{unique_name}:a")]) == [
            b"OK",
            b"1",
        ]
    url = f"{redis_sentinel_url}?wait_replicas=2&wait_timeout=0.05"
    async with RedisClient.from_url(url, prefix=unique_name) as client:  # one replica: 2 never answer
        with pytest.raises(BackendError, match="only 1 of 2 replicas acknowledged"):
            await client.execute("SET", f"{unique_name}:b", b"1")
        with pytest.raises(BackendError, match="script event-store-append was applied on the primary"):
            await RedisEventStore(client, registry=contract_registry()).append(
                "s", [ContractOrderPlaced("o", 2)]
            )
        assert await client.execute("GET", f"{unique_name}:b") == b"1"  # reads do not wait


@pytest.mark.chaos
@pytest.mark.parametrize("durable", [False, True], ids=["async", "wait_replicas=1"])
async def test_a_killed_primary_is_replaced_and_the_client_follows(
    redis_sentinel: RedisSentinel, unique_name: str, chaos: Chaos, durable: bool
) -> None:
    """SIGKILL the primary while a task appends; the sentinels promote the replica and the client's
    next connection goes there. The stream stays contiguous. Asynchronous replication may lose the
    last acknowledged appends (counted, not asserted); with ``wait_replicas=1`` none is lost (asserted),
    and the promoted primary takes writes once the old one rejoined as its replica."""
    query = "?wait_replicas=1&wait_timeout=2" if durable else ""
    client = RedisClient.from_url(
        redis_sentinel.url + query, prefix=unique_name, timeout=2.0, connect_timeout=1.0
    )
    assert isinstance(client, RedisSentinelClient)
    store = RedisEventStore(client, registry=contract_registry())
    n = chaos.size(short=150, full=2_000)
    acked: list[int] = []
    failures = 0
    killed_at: list[float] = []
    first_ok: list[float] = []
    old_primary: list[str] = []
    stop = asyncio.Event()

    async def append() -> None:
        nonlocal failures
        i = 0
        while not stop.is_set():
            try:
                acked.append(await store.append("s", [ContractOrderPlaced("o", i)]))
            except BackendError:
                failures += 1
                await asyncio.sleep(0.02)  # back off while the sentinels promote the replica
                continue
            i += 1
            # the first append the promoted primary acknowledged (one in flight when the old primary
            # was killed may still come back acknowledged by it: that is not a recovery)
            if old_primary and client.primary != old_primary[0] and not first_ok:
                first_ok.append(time.monotonic())
            if len(acked) >= n and first_ok:
                stop.set()

    task = asyncio.create_task(append())
    try:
        await eventually(lambda: _at_least(acked, n // 3), what="appends before the kill")
        old = client.primary
        victim = redis_sentinel.primary_port()
        assert victim is not None and old == f"127.0.0.1:{victim}"
        old_primary.append(old)
        await asyncio.to_thread(redis_sentinel.kill, victim)
        killed_at.append(time.monotonic())
        failover_s = await asyncio.to_thread(redis_sentinel.wait_for_failover, victim)
        if durable:  # the promoted primary has no replica: WAIT 1 fails until the old node is back
            await asyncio.to_thread(redis_sentinel.restart, victim)
        try:
            async with asyncio.timeout(60):
                await stop.wait()
        except TimeoutError:
            raise AssertionError(
                f"no recovery within 60 s of the failover: {len(acked)} of {n} appends acknowledged, "
                f"{failures} failed calls, client primary {client.primary} (old {old}), first append on "
                f"the new primary {'seen' if first_ok else 'never seen'}; sentinels say "
                f"{redis_sentinel.primary_port()}"
            ) from None
    finally:
        stop.set()
        await task
    assert client.primary != old
    versions = [e.version for e in await store.read("s")]
    assert versions == list(range(len(versions)))
    lost = len(set(acked) - set(versions))
    if durable:
        assert lost == 0
    outage_s = first_ok[0] - killed_at[0]
    mode = "WAIT 1" if durable else "async"
    chaos.record(
        f"Redis Sentinel primary killed under appends ({mode})",
        messages=len(acked),
        kills=1,
        lost=lost,
        recovery_s=round(outage_s, 2),
    )
    print(
        f"failover {failover_s:.2f} s, append outage {outage_s:.2f} s, {failures} failed calls, {lost} lost"
    )
    await client.aclose()
    await asyncio.to_thread(redis_sentinel.heal)


async def _at_least(items: list[int], n: int) -> bool:
    return len(items) >= n
