"""RPC on NATS: the backend-neutral :mod:`catga.rpc` layer plus a ``connect(url)`` shortcut.

Requests use core NATS request-reply on ``<prefix>.rpc.<service>``, shared by the ``group`` queue group;
replies go to a private inbox of the caller, so they reach the caller only.
"""

from __future__ import annotations

from typing import Any

from catga.rpc import H_RPC_CODE, H_RPC_METHOD, H_RPC_STATUS, RpcClient, RpcServer

__all__ = (
    "H_RPC_CODE",
    "H_RPC_METHOD",
    "H_RPC_STATUS",
    "NatsRpcClient",
    "NatsRpcServer",
    "RpcClient",
    "RpcServer",
)


class NatsRpcServer(RpcServer):
    """:class:`~catga.rpc.RpcServer` on a :class:`~catga.nats.NatsTransport`."""

    @classmethod
    async def connect(cls, url: str, service: str, **options: Any) -> NatsRpcServer:
        """A server on its own :class:`~catga.nats.NatsTransport` to ``url``, closed by :meth:`aclose`.

        ``options`` go to the transport (``prefix``, ``registry``, ``timeout``...).
        """
        from catga.nats.transport import NatsTransport

        transport = await NatsTransport.connect(url, **options)
        server = cls(transport, service, registry=transport.registry)
        server._owned = transport
        return server


class NatsRpcClient(RpcClient):
    """:class:`~catga.rpc.RpcClient` on a :class:`~catga.nats.NatsTransport`."""

    @classmethod
    async def connect(cls, url: str, *, timeout: float = 5.0, **options: Any) -> NatsRpcClient:
        """A client on its own :class:`~catga.nats.NatsTransport` to ``url``, closed by :meth:`aclose`."""
        from catga.nats.transport import NatsTransport

        transport = await NatsTransport.connect(url, **options)
        client = cls(transport, registry=transport.registry, timeout=timeout)
        client._owned = transport
        return client
