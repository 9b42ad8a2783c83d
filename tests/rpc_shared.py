"""What the RPC tests of every backend share: the messages, the 'pricing' service and the call tests.

A backend binds :class:`RpcCallTests` with a ``rpc_client`` fixture: an :class:`~catga.rpc.RpcClient`
whose ``pricing`` service runs a server set up by :func:`serve_pricing`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from catga.errors import ErrorCode, NotFoundError, OperationTimeoutError, ValidationError
from catga.messages import Query
from catga.protocols import Transport
from catga.rpc import H_RPC_METHOD, H_RPC_STATUS, RpcClient, RpcServer
from catga.serialization import TypeRegistry

__all__ = (
    "GetQuote",
    "Ping",
    "Quote",
    "RpcCallTests",
    "assert_raw_quote_works",
    "quote",
    "registry",
    "serve_pricing",
)


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


def serve_pricing(server: RpcServer) -> RpcServer:
    """Register the 'pricing' methods (``quote`` typed, ``plain`` by decorator) on ``server``."""
    server.register("quote", quote, request_type=GetQuote)
    server.method("plain")(plain)
    return server


async def assert_raw_quote_works(transport: Transport, service: str) -> None:
    """Call ``service``'s ``quote`` with hand-made wire bytes and headers; check the raw reply."""
    body, headers = await transport.request(
        service,
        msgspec.json.encode(GetQuote("raw", 2)),
        headers={H_RPC_METHOD: "quote", "Catga-Type": "GetQuote", "Catga-Id": "1"},
        timeout=5,
    )
    assert headers[H_RPC_STATUS] == "ok" and headers["Catga-Type"] == "Quote"
    assert msgspec.json.decode(body) == {"sku": "raw", "cents": 200}


class RpcCallTests:
    """Calls through :class:`~catga.rpc.RpcClient`: results, errors and timeouts as the caller sees them."""

    async def test_call_returns_the_typed_result(self, rpc_client: RpcClient) -> None:
        result = await rpc_client.call("pricing", "quote", GetQuote("abc", 3))
        assert result.ok and result.value == Quote("abc", 300)

    @pytest.mark.parametrize(("n", "expected"), [(0, None), (1, 42), (2, "two"), (3, {"a": [1, 2]})])
    async def test_call_returns_plain_values(self, rpc_client: RpcClient, n: int, expected: Any) -> None:
        result = await rpc_client.call("pricing", "plain", Ping(n))
        assert result.ok and result.value == expected

    async def test_remote_business_error_becomes_a_failed_result(self, rpc_client: RpcClient) -> None:
        result = await rpc_client.call("pricing", "quote", GetQuote("missing"))
        assert not result.ok
        assert result.code == ErrorCode.NOT_FOUND and result.error == "no sku 'missing'"
        with pytest.raises(NotFoundError):
            result.unwrap()

    async def test_remote_validation_error_keeps_field_errors(self, rpc_client: RpcClient) -> None:
        result = await rpc_client.call("pricing", "quote", GetQuote("abc", 0))
        assert result.code == ErrorCode.VALIDATION
        assert result.metadata is not None and result.metadata["field_errors"] == {"qty": ["must be >= 1"]}
        assert isinstance(result.exception, ValidationError)
        assert result.exception.field_errors == {"qty": ["must be >= 1"]}

    async def test_unexpected_remote_error_leaks_nothing(self, rpc_client: RpcClient) -> None:
        result = await rpc_client.call("pricing", "quote", GetQuote("crash"))
        assert result.code == ErrorCode.INTERNAL and result.error == "internal error"
        assert "secret" not in repr(result)

    async def test_unknown_method_and_wrong_request_type(self, rpc_client: RpcClient) -> None:
        result = await rpc_client.call("pricing", "nope", GetQuote("abc"))
        assert result.code == ErrorCode.HANDLER_NOT_FOUND and "'nope'" in (result.error or "")
        wrong = await rpc_client.call("pricing", "quote", Ping(1))
        assert wrong.code == ErrorCode.SERIALIZATION

    async def test_timeout_becomes_a_failed_result(self, rpc_client: RpcClient) -> None:
        slow = await rpc_client.call("pricing", "quote", GetQuote("slow"), timeout=0.2)
        assert slow.code == ErrorCode.TIMEOUT and slow.retryable
        assert isinstance(slow.exception, OperationTimeoutError)
        nobody = await rpc_client.call("no-such-service", "quote", GetQuote("x"), timeout=0.2)
        assert nobody.code == ErrorCode.TIMEOUT
        # the late reply of the slow call is dropped; the client keeps working
        assert (await rpc_client.call("pricing", "quote", GetQuote("ok"))).value == Quote("ok", 100)
