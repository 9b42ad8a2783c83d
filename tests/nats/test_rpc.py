"""RPC over the transport: NatsRpcClient/NatsRpcServer on a real nats-server, and the same on memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from catga.errors import (
    ErrorCode,
    NotFoundError,
    OperationTimeoutError,
    ValidationError,
)
from catga.memory import MemoryTransport
from catga.messages import Query
from catga.nats.rpc import H_RPC_METHOD, H_RPC_STATUS, NatsRpcClient, NatsRpcServer
from catga.nats.transport import NatsTransport
from catga.protocols import Transport
from catga.rpc import RpcClient, RpcServer
from catga.serialization import TypeRegistry


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


@pytest.fixture(params=[pytest.param("nats", marks=pytest.mark.nats), "memory"])
async def pair(
    request: pytest.FixtureRequest, unique_name: str
) -> AsyncIterator[tuple[RpcClient, Transport]]:
    """A started 'pricing' server and a client, on NATS (two connections) or on one memory broker."""
    reg = registry()
    if request.param == "nats":
        url = request.getfixturevalue("nats_url")
        server_t: Transport = await NatsTransport.connect(url, registry=reg, prefix=unique_name)
        client_t: Transport = await NatsTransport.connect(url, registry=reg, prefix=unique_name)
        server = NatsRpcServer(server_t, "pricing", registry=reg)
        client: RpcClient = NatsRpcClient(client_t, registry=reg)
    else:
        server_t = client_t = MemoryTransport(registry=reg)
        server = RpcServer(server_t, "pricing", registry=reg)
        client = RpcClient(client_t, registry=reg)
    server.register("quote", quote, request_type=GetQuote)
    server.method("plain")(plain)
    async with server:
        yield client, client_t
    await client_t.aclose()
    await server_t.aclose()


async def test_call_returns_the_typed_result(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    result = await client.call("pricing", "quote", GetQuote("abc", 3))
    assert result.ok and result.value == Quote("abc", 300)


@pytest.mark.parametrize(("n", "expected"), [(0, None), (1, 42), (2, "two"), (3, {"a": [1, 2]})])
async def test_call_returns_plain_values(pair: tuple[RpcClient, Transport], n: int, expected: Any) -> None:
    client, _ = pair
    result = await client.call("pricing", "plain", Ping(n))
    assert result.ok and result.value == expected


async def test_remote_business_error_becomes_a_failed_result(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    result = await client.call("pricing", "quote", GetQuote("missing"))
    assert not result.ok
    assert result.code == ErrorCode.NOT_FOUND and result.error == "no sku 'missing'"
    with pytest.raises(NotFoundError):
        result.unwrap()


async def test_remote_validation_error_keeps_field_errors(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    result = await client.call("pricing", "quote", GetQuote("abc", 0))
    assert result.code == ErrorCode.VALIDATION
    assert result.metadata is not None and result.metadata["field_errors"] == {"qty": ["must be >= 1"]}
    assert isinstance(result.exception, ValidationError)
    assert result.exception.field_errors == {"qty": ["must be >= 1"]}


async def test_unexpected_remote_error_leaks_nothing(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    result = await client.call("pricing", "quote", GetQuote("crash"))
    assert result.code == ErrorCode.INTERNAL and result.error == "internal error"
    assert "secret" not in repr(result)


async def test_unknown_method_and_wrong_request_type(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    result = await client.call("pricing", "nope", GetQuote("abc"))
    assert result.code == ErrorCode.HANDLER_NOT_FOUND and "'nope'" in (result.error or "")
    wrong = await client.call("pricing", "quote", Ping(1))
    assert wrong.code == ErrorCode.SERIALIZATION


async def test_timeout_becomes_a_failed_result(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    slow = await client.call("pricing", "quote", GetQuote("slow"), timeout=0.2)
    assert slow.code == ErrorCode.TIMEOUT and slow.retryable
    assert isinstance(slow.exception, OperationTimeoutError)
    nobody = await client.call("no-such-service", "quote", GetQuote("x"), timeout=0.2)
    assert nobody.code == ErrorCode.TIMEOUT


async def test_replies_are_routed_to_their_caller(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    results = await asyncio.gather(
        *(client.call("pricing", "quote", GetQuote(f"s{i}", i + 1)) for i in range(30))
    )
    assert [r.value for r in results] == [Quote(f"s{i}", 100 * (i + 1)) for i in range(30)]


async def test_request_wire_format(pair: tuple[RpcClient, Transport]) -> None:
    _, transport = pair
    body, headers = await transport.request(
        "pricing",
        msgspec.json.encode(GetQuote("raw", 2)),
        headers={H_RPC_METHOD: "quote", "Catga-Type": "GetQuote", "Catga-Id": "1"},
        timeout=5,
    )
    assert headers[H_RPC_STATUS] == "ok" and headers["Catga-Type"] == "Quote"
    assert msgspec.json.decode(body) == {"sku": "raw", "cents": 200}


@pytest.mark.nats
async def test_connect_helpers_own_their_transport(nats_url: str, unique_name: str) -> None:
    reg = registry()
    server = await NatsRpcServer.connect(nats_url, "svc", registry=reg, prefix=unique_name)
    server.register("quote", quote)
    await server.start()
    async with await NatsRpcClient.connect(nats_url, registry=reg, prefix=unique_name, timeout=5) as client:
        result = await client.call("svc", "quote", GetQuote("c", 1))
    await server.aclose()
    assert result.value == Quote("c", 100)
    owned = client.transport
    assert isinstance(owned, NatsTransport) and owned.client.is_closed
