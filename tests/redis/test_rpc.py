"""RPC on Redis: RedisRpcClient/RedisRpcServer and the transport's request/serve on a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from catga.errors import ErrorCode, NotFoundError, OperationTimeoutError, ValidationError
from catga.messages import Query
from catga.redis import RedisClient
from catga.redis._reqrep import DEADLINE_GRACE
from catga.redis.rpc import H_RPC_METHOD, H_RPC_STATUS, RedisRpcClient, RedisRpcServer
from catga.redis.transport import H_ERROR, RedisTransport
from catga.serialization import TypeRegistry

pytestmark = pytest.mark.redis


class GetQuote(msgspec.Struct, Query["Quote"], frozen=True):
    sku: str
    qty: int = 1


class Quote(msgspec.Struct, frozen=True):
    sku: str
    cents: int


class Ping(msgspec.Struct, frozen=True):
    n: int


def registry() -> TypeRegistry:
    return TypeRegistry(types=[GetQuote, Quote, Ping])


async def quote(req: GetQuote) -> Quote:
    if req.sku == "missing":
        raise NotFoundError(f"no sku {req.sku!r}")
    if req.qty < 1:
        raise ValidationError("bad quote", {"qty": ["must be >= 1"]})
    if req.sku == "crash":
        raise KeyError("secret internals")
    if req.sku == "slow":
        await asyncio.sleep(1)
    return Quote(req.sku, 100 * req.qty)


async def plain(req: Ping) -> Any:
    return {0: None, 1: 41 + req.n, 2: "two", 3: {"a": [1, 2]}}[req.n]


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
    server = RedisRpcServer(server_t, "pricing", registry=server_t.registry)
    server.register("quote", quote, request_type=GetQuote)
    server.method("plain")(plain)
    async with server:
        yield RedisRpcClient(client_t, registry=client_t.registry)


async def test_call_returns_the_typed_result(client: RedisRpcClient) -> None:
    result = await client.call("pricing", "quote", GetQuote("abc", 3))
    assert result.ok and result.value == Quote("abc", 300)


@pytest.mark.parametrize(("n", "expected"), [(0, None), (1, 42), (2, "two"), (3, {"a": [1, 2]})])
async def test_call_returns_plain_values(client: RedisRpcClient, n: int, expected: Any) -> None:
    result = await client.call("pricing", "plain", Ping(n))
    assert result.ok and result.value == expected


async def test_remote_business_error_becomes_a_failed_result(client: RedisRpcClient) -> None:
    result = await client.call("pricing", "quote", GetQuote("missing"))
    assert not result.ok
    assert result.code == ErrorCode.NOT_FOUND and result.error == "no sku 'missing'"
    with pytest.raises(NotFoundError):
        result.unwrap()


async def test_remote_validation_error_keeps_field_errors(client: RedisRpcClient) -> None:
    result = await client.call("pricing", "quote", GetQuote("abc", 0))
    assert result.code == ErrorCode.VALIDATION
    assert result.metadata is not None and result.metadata["field_errors"] == {"qty": ["must be >= 1"]}
    assert isinstance(result.exception, ValidationError)


async def test_unexpected_remote_error_leaks_nothing(client: RedisRpcClient) -> None:
    result = await client.call("pricing", "quote", GetQuote("crash"))
    assert result.code == ErrorCode.INTERNAL and result.error == "internal error"
    assert "secret" not in repr(result)


async def test_unknown_method_and_wrong_request_type(client: RedisRpcClient) -> None:
    result = await client.call("pricing", "nope", GetQuote("abc"))
    assert result.code == ErrorCode.HANDLER_NOT_FOUND and "'nope'" in (result.error or "")
    wrong = await client.call("pricing", "quote", Ping(1))
    assert wrong.code == ErrorCode.SERIALIZATION


async def test_timeout_becomes_a_failed_result(client: RedisRpcClient) -> None:
    slow = await client.call("pricing", "quote", GetQuote("slow"), timeout=0.2)
    assert slow.code == ErrorCode.TIMEOUT and slow.retryable
    assert isinstance(slow.exception, OperationTimeoutError)
    nobody = await client.call("no-such-service", "quote", GetQuote("x"), timeout=0.2)
    assert nobody.code == ErrorCode.TIMEOUT
    # the late reply of the slow call is dropped; the client keeps working
    assert (await client.call("pricing", "quote", GetQuote("ok"))).value == Quote("ok", 100)


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
        ok = await c.transport.request(
            "svc",
            msgspec.json.encode(GetQuote("raw", 2)),
            headers={H_RPC_METHOD: "quote", "Catga-Type": "GetQuote", "Catga-Id": "1"},
            timeout=5,
        )
        assert ok[1][H_RPC_STATUS] == "ok" and msgspec.json.decode(ok[0]) == {"sku": "raw", "cents": 200}
    await server.aclose()
    owned = c.transport
    assert isinstance(owned, RedisTransport) and owned.client.closed
