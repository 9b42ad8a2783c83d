"""RPC on Redis: ``call(service, method, request) -> Result`` over a transport's ``request``/``serve``.

:class:`RedisRpcClient` and :class:`RedisRpcServer` have the same API and wire format as the NATS
flavour (``Catga-Rpc-Method``, ``Catga-Rpc-Status``, ``Catga-Rpc-Code``, a JSON error body); on a
:class:`~catga.redis.RedisTransport` requests travel on the stream ``P:t:rpc:<service>`` and replies on
a list private to the caller (see :mod:`catga.redis._reqrep`), so replies reach the caller only.

Wire format of a call:

* request: headers ``Catga-Rpc-Method: <method>``, the request's metadata headers (``Catga-Type``,
  ``Catga-Id``, correlation...), body = the request encoded by the registry;
* success reply: ``Catga-Rpc-Status: ok``; a registered message type as result has ``Catga-Type`` and
  its registry encoding; a plain value (None, bool, int, float, str, list, dict) is encoded as is;
* error reply: ``Catga-Rpc-Status: error``, ``Catga-Rpc-Code: <ErrorCode>``, body = JSON
  ``{"message": ..., "code": ..., "field_errors": {...}}``.

A business error raised by a method comes back as a failed Result with its message and code; an
unexpected exception as ``"internal error"`` (logged on the server, no internals leak); no reply in time
as code ``timeout``; a transport failure as code ``backend``.

Example:
    >>> server = RedisRpcServer(transport, "pricing")  # doctest: +SKIP
    >>> @server.method("quote")
    ... async def quote(req: GetQuote) -> Quote: ...
    >>> await server.start()  # doctest: +SKIP
    >>> result = await RedisRpcClient(transport).call("pricing", "quote", GetQuote(sku="x"))  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from catga.redis.transport import RedisTransport
from catga.rpc import H_RPC_CODE, H_RPC_METHOD, H_RPC_STATUS, RpcClient, RpcServer

__all__ = ("H_RPC_CODE", "H_RPC_METHOD", "H_RPC_STATUS", "RedisRpcClient", "RedisRpcServer")


class RedisRpcServer(RpcServer):
    """:class:`~catga.rpc.RpcServer` on a :class:`~catga.redis.RedisTransport`."""

    @classmethod
    async def connect(cls, url: str, service: str, **options: Any) -> RedisRpcServer:
        """A server on its own :class:`~catga.redis.RedisTransport` to ``url``, closed by :meth:`aclose`.

        ``options`` go to :meth:`RedisTransport.connect <catga.redis.RedisTransport.connect>`.
        """
        transport = RedisTransport.connect(url, **options)
        server = cls(transport, service, registry=transport.registry)
        server._owned = transport
        return server


class RedisRpcClient(RpcClient):
    """:class:`~catga.rpc.RpcClient` on a :class:`~catga.redis.RedisTransport`."""

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 5.0, **options: Any) -> RedisRpcClient:
        """A client on its own :class:`~catga.redis.RedisTransport` to ``url``, closed by :meth:`aclose`."""
        transport = RedisTransport.connect(url, **options)
        client = cls(transport, registry=transport.registry, timeout=timeout)
        client._owned = transport
        return client
