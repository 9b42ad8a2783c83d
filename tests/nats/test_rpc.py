"""RPC over the transport: NatsRpcClient/NatsRpcServer on a real nats-server, and the same on memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from catga.memory import MemoryTransport
from catga.nats.rpc import NatsRpcClient, NatsRpcServer
from catga.nats.transport import NatsTransport
from catga.protocols import Transport
from catga.rpc import RpcClient, RpcServer
from rpc_shared import GetQuote, Quote, RpcCallTests, assert_raw_quote_works, quote, registry, serve_pricing


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
    async with serve_pricing(server):
        yield client, client_t
    await client_t.aclose()
    await server_t.aclose()


@pytest.fixture
def rpc_client(pair: tuple[RpcClient, Transport]) -> RpcClient:
    return pair[0]


class TestNatsAndMemoryRpcCalls(RpcCallTests):
    """The shared call tests on NATS and on memory (the ``pair`` fixture's two params)."""


async def test_replies_are_routed_to_their_caller(pair: tuple[RpcClient, Transport]) -> None:
    client, _ = pair
    results = await asyncio.gather(
        *(client.call("pricing", "quote", GetQuote(f"s{i}", i + 1)) for i in range(30))
    )
    assert [r.value for r in results] == [Quote(f"s{i}", 100 * (i + 1)) for i in range(30)]


async def test_request_wire_format(pair: tuple[RpcClient, Transport]) -> None:
    _, transport = pair
    await assert_raw_quote_works(transport, "pricing")


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
