"""RPC on Redis: RedisRpcClient/RedisRpcServer and the transport's request/serve on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from catga.errors import ErrorCode, OperationTimeoutError
from catga.redis import RedisClient
from catga.redis._reqrep import DEADLINE_GRACE
from catga.redis.rpc import H_RPC_METHOD, RedisRpcClient, RedisRpcServer
from catga.redis.transport import H_ERROR, RedisTransport
from rpc_shared import (
    GetQuote,
    Ping,
    Quote,
    RpcCallTests,
    assert_raw_quote_works,
    quote,
    registry,
    serve_pricing,
)

pytestmark = pytest.mark.redis


@pytest.fixture
async def transports(redis_url: str, unique_name: str) -> AsyncIterator[list[RedisTransport]]:
    """Three transports on one prefix, as if in three processes: a server and two clients."""
    made = [RedisTransport.connect(redis_url, prefix=unique_name, registry=registry()) for _ in range(3)]
    yield made
    for t in made:
        await t.aclose()


@pytest.fixture
async def client(transports: list[RedisTransport]) -> AsyncIterator[RedisRpcClient]:
    server_t, client_t, _ = transports
    async with serve_pricing(RedisRpcServer(server_t, "pricing", registry=server_t.registry)):
        yield RedisRpcClient(client_t, registry=client_t.registry)


@pytest.fixture
def rpc_client(client: RedisRpcClient) -> RedisRpcClient:
    return client


class TestRedisRpcCalls(RpcCallTests):
    """The shared call tests on Redis."""


async def test_replies_reach_only_their_caller(
    client: RedisRpcClient, transports: list[RedisTransport], redis_client: RedisClient
) -> None:
    other = RedisRpcClient(transports[2], registry=transports[2].registry)

    async def batch(c: RedisRpcClient, tag: str) -> list[Any]:
        results = await asyncio.gather(
            *(c.call("pricing", "quote", GetQuote(f"{tag}{i}", i + 1)) for i in range(20))
        )
        return [r.value for r in results]

    mine, theirs = await asyncio.gather(batch(client, "a"), batch(other, "b"))
    assert mine == [Quote(f"a{i}", 100 * (i + 1)) for i in range(20)]
    assert theirs == [Quote(f"b{i}", 100 * (i + 1)) for i in range(20)]
    lists = {r._router.key for r in transports[1:] if r._router is not None}
    assert len(lists) == 2  # one private reply list per calling transport


async def test_request_reply_on_the_wire(transports: list[RedisTransport], redis_client: RedisClient) -> None:
    server_t, client_t, _ = transports
    seen: list[dict[str, str]] = []

    async def echo(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        seen.append(headers)
        return body.upper(), {"x-server": "1"}

    await server_t.serve("echo", echo)
    body, headers = await client_t.request("echo", b"hi", headers={"x-req": "r"}, timeout=5)
    assert (body, headers) == (b"HI", {"x-server": "1"})
    assert seen[0]["x-req"] == "r" and not any(k.startswith("Catga-Reply") for k in seen[0])
    entries = await redis_client.execute("XRANGE", f"{server_t.prefix}:t:rpc:echo", "-", "+")
    fields = entries[-1][1]
    assert fields[:2] == [b"body", b"hi"]
    assert dict(zip(fields[2::2], fields[3::2], strict=True))[b"Catga-Reply-To"].startswith(
        f"{client_t.prefix}:t:reply:".encode()
    )


async def test_a_crashing_raw_handler_answers_with_an_error_header(transports: list[RedisTransport]) -> None:
    server_t, client_t, _ = transports

    async def boom(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        raise RuntimeError("kaput")

    await server_t.serve("boom", boom)
    body, headers = await client_t.request("boom", b"x", timeout=5)
    assert body == b"" and "kaput" in headers[H_ERROR]
    result = await RedisRpcClient(client_t).call("boom", "m", Ping(1))
    assert result.code == ErrorCode.INTERNAL


async def test_a_group_shares_requests_and_no_group_answers_all(transports: list[RedisTransport]) -> None:
    a, b, caller = transports
    served: list[str] = []

    def named(name: str) -> Any:
        async def handler(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            served.append(name)
            return name.encode(), {}

        return handler

    await a.serve("shared", named("a"))
    await b.serve("shared", named("b"))
    for _ in range(10):
        await caller.request("shared", b"", timeout=5)
    assert len(served) == 10  # each request answered once in the group

    served.clear()
    await a.serve("everyone", named("a"), group=None)
    await b.serve("everyone", named("b"), group=None)
    await caller.request("everyone", b"", timeout=5)
    for _ in range(200):
        if len(served) == 2:
            break
        await asyncio.sleep(0.01)
    assert sorted(served) == ["a", "b"]


async def test_expired_requests_are_not_served(
    transports: list[RedisTransport], redis_client: RedisClient
) -> None:
    server_t, client_t, _ = transports
    calls: list[bytes] = []

    async def handler(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        calls.append(body)
        return b"", {}

    server = await server_t.serve("late", handler)
    await server.aclose()  # the group stays: requests queue up while no server runs
    with pytest.raises(OperationTimeoutError) as info:
        await client_t.request("late", b"stale", timeout=0.1)
    assert info.value.seconds == 0.1 and "late" in str(info.value)
    await asyncio.sleep(DEADLINE_GRACE)  # past the deadline, clock-skew allowance included
    await server_t.serve("late", handler)
    await client_t.request("late", b"fresh", timeout=5)
    assert calls == [b"fresh"]


async def test_a_server_replies_only_to_reply_lists(
    transports: list[RedisTransport], redis_client: RedisClient
) -> None:
    server_t, _, _ = transports
    handled: list[bytes] = []

    async def handler(body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        handled.append(body)
        return b"pwned", {}

    await server_t.serve("svc", handler)
    key = f"{server_t.prefix}:t:rpc:svc"
    victim = f"{server_t.prefix}:cache:victim"
    await redis_client.execute(
        "XADD", key, "*", "body", b"evil", "Catga-Reply-To", victim, "Catga-Reply-Id", "1"
    )
    await redis_client.execute("XADD", key, "*", "body", b"ok", H_RPC_METHOD, "m")  # no reply key at all
    await asyncio.sleep(0.3)
    assert await redis_client.execute("EXISTS", victim) == 0
    assert handled == []


async def test_connect_helpers_own_their_transport(redis_url: str, unique_name: str) -> None:
    reg = registry()
    server = await RedisRpcServer.connect(redis_url, "svc", registry=reg, prefix=unique_name)
    server.register("quote", quote)
    await server.start()
    async with await RedisRpcClient.connect(redis_url, registry=reg, prefix=unique_name, timeout=5) as c:
        result = await c.call("svc", "quote", GetQuote("c", 1))
        assert result.value == Quote("c", 100)
        await assert_raw_quote_works(c.transport, "svc")
    await server.aclose()
    owned = c.transport
    assert isinstance(owned, RedisTransport) and owned.client.closed
