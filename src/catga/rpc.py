"""RPC over any :class:`~catga.protocols.Transport`: ``call(service, method, request) -> Result``.

The layer uses only the transport's ``request``/``serve``, so it works on every backend; the backend
flavours (:class:`~catga.nats.NatsRpcClient`, :class:`~catga.redis.RedisRpcClient`...) only add a
``connect(url)`` shortcut that opens and owns a transport.

Wire format (readable by a plain client), on the destination named after the service:

* request: headers ``Catga-Rpc-Method: <method>``, the request's metadata headers (``Catga-Type``,
  ``Catga-Id``, correlation...), body = the request encoded by the registry;
* success reply: ``Catga-Rpc-Status: ok``; a registered message type as result has ``Catga-Type`` and
  its registry encoding; a plain value (None, bool, int, float, str, list, dict) is encoded as is in
  the registry's format with no ``Catga-Type``;
* error reply: ``Catga-Rpc-Status: error``, ``Catga-Rpc-Code: <ErrorCode>``, body = JSON
  ``{"message": ..., "code": ..., "field_errors": {...}}``.

A business error raised by a method (:class:`~catga.errors.HandlerError` and other catga errors) comes
back to the caller as a failed Result with its message and code; an unexpected exception is logged on
the server and comes back as ``"internal error"`` (no internals leak). No reply in time gives a failed
Result with code ``timeout``; a transport failure one with code ``backend``.

Example:
    >>> server = RpcServer(transport, "pricing")
    >>> @server.method("quote")
    ... async def quote(req: GetQuote) -> Quote: ...
    >>> await server.start()
    >>> result = await RpcClient(transport).call("pricing", "quote", GetQuote(sku="x"))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Self, TypeVar, overload

import msgspec

from catga.errors import (
    BackendError,
    CatgaError,
    ConfigurationError,
    ConflictError,
    ErrorCode,
    ForbiddenError,
    HandlerError,
    NotFoundError,
    OperationTimeoutError,
    RetryableError,
    SerializationError,
    UnauthorizedError,
    ValidationError,
)
from catga.ids import new_id
from catga.messages import H_ERROR, H_TYPE, Metadata, Request
from catga.protocols import Subscription, Transport, validate_identifier
from catga.result import Result
from catga.serialization import TypeRegistry, default_registry

__all__ = (
    "H_ERROR",
    "H_RPC_CODE",
    "H_RPC_METHOD",
    "H_RPC_STATUS",
    "RpcClient",
    "RpcServer",
)

R = TypeVar("R")
Handler = Callable[[Any], Awaitable[Any]]

H_RPC_METHOD = "Catga-Rpc-Method"
H_RPC_STATUS = "Catga-Rpc-Status"
H_RPC_CODE = "Catga-Rpc-Code"


_PLAIN = (type(None), bool, int, float, str, list, dict)
_REMOTE_ERRORS: dict[str, type[HandlerError]] = {
    ErrorCode.NOT_FOUND: NotFoundError,
    ErrorCode.CONFLICT: ConflictError,
    ErrorCode.UNAUTHORIZED: UnauthorizedError,
    ErrorCode.FORBIDDEN: ForbiddenError,
    ErrorCode.RETRYABLE: RetryableError,
    ErrorCode.BUSINESS: HandlerError,
}
_log = logging.getLogger("catga.rpc")


class _ErrorBody(msgspec.Struct, omit_defaults=True):
    message: str
    code: str
    field_errors: dict[str, list[str]] = msgspec.field(default_factory=dict)


_encode_error = msgspec.json.Encoder().encode
_decode_error = msgspec.json.Decoder(_ErrorBody).decode


class RpcServer:
    """Serves the methods of one service on a transport.

    Args:
        transport: any :class:`~catga.protocols.Transport`.
        service: the service name (the destination requests are sent to).
        registry: message types allowed on the wire (default :func:`~catga.serialization.default_registry`).
        group: servers sharing the load of the service (``None``: every server answers; the first reply
            wins).
    """

    def __init__(
        self,
        transport: Transport,
        service: str,
        *,
        registry: TypeRegistry | None = None,
        group: str | None = "rpc",
    ) -> None:
        self.transport = transport
        self.service = validate_identifier(service, "rpc service")
        self.registry = registry if registry is not None else default_registry()
        self.group = group
        self._methods: dict[str, tuple[Handler, type | None]] = {}
        self._subscription: Subscription | None = None

    def register(self, method: str, handler: Handler, *, request_type: type | None = None) -> None:
        """Serve ``method`` with ``async handler(request) -> result``.

        Args:
            method: the method name.
            handler: called with the decoded request; its return value is the reply.
            request_type: the only request type accepted (any registered type when None); it is
                registered in the registry.

        Raises:
            InvalidIdentifierError: a malformed method name.
            ConfigurationError: the method is registered already.
        """
        validate_identifier(method, "rpc method")
        if method in self._methods:
            raise ConfigurationError(f"rpc method {method!r} of service {self.service!r} is registered twice")
        if request_type is not None:
            self.registry.register(request_type)
        self._methods[method] = (handler, request_type)

    def method(self, name: str, *, request_type: type | None = None) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def apply(handler: Handler) -> Handler:
            self.register(name, handler, request_type=request_type)
            return handler

        return apply

    async def start(self) -> None:
        """Start answering requests (idempotent)."""
        if self._subscription is None:
            self._subscription = await self.transport.serve(self.service, self._dispatch, group=self.group)

    #: A transport opened by a backend's ``connect()`` shortcut, closed by :meth:`aclose`.
    _owned: Any = None

    async def aclose(self) -> None:
        """Stop answering (requests in flight finish first); close the transport only if ``connect()``
        opened it."""
        sub, self._subscription = self._subscription, None
        if sub is not None:
            await sub.aclose()
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _dispatch(self, body: bytes, headers: dict[str, str]) -> tuple[bytes, dict[str, str]]:
        method = headers.get(H_RPC_METHOD, "")
        entry = self._methods.get(method)
        if entry is None:
            return _error(
                f"service {self.service!r} has no method {method!r} (it serves {sorted(self._methods)})",
                ErrorCode.HANDLER_NOT_FOUND,
            )
        handler, request_type = entry
        try:
            type_name = headers.get(H_TYPE)
            if type_name is None:
                raise SerializationError(f"rpc request to {self.service}.{method} has no {H_TYPE} header")
            codec = self.registry.codec_named(type_name)
            if request_type is not None and codec.type is not request_type:
                raise SerializationError(
                    f"{self.service}.{method} takes {request_type.__qualname__}, got {type_name!r}"
                )
            request = codec.decode(body)
        except SerializationError as exc:
            return _error(str(exc), exc.code)
        try:
            value = await handler(request)
        except CatgaError as exc:
            return _error(str(exc), exc.code, getattr(exc, "field_errors", None))
        except Exception:
            _log.exception("rpc method %s.%s failed", self.service, method)
            return _error("internal error", ErrorCode.INTERNAL)
        try:
            if isinstance(value, _PLAIN):
                fmt = self.registry.format
                data = msgspec.json.encode(value) if fmt == "json" else msgspec.msgpack.encode(value)
                return data, {H_RPC_STATUS: "ok"}
            name, data = self.registry.encode(value)
        except (SerializationError, TypeError, msgspec.EncodeError) as exc:
            _log.exception("rpc method %s.%s returned an unencodable value", self.service, method)
            return _error(
                f"cannot encode the result of {self.service}.{method}: {exc}", ErrorCode.SERIALIZATION
            )
        return data, {H_RPC_STATUS: "ok", H_TYPE: name}


def _error(
    message: str, code: str, field_errors: dict[str, list[str]] | None = None
) -> tuple[bytes, dict[str, str]]:
    body = _encode_error(_ErrorBody(message, code, dict(field_errors or {})))
    return body, {H_RPC_STATUS: "error", H_RPC_CODE: code}


class RpcClient:
    """Calls methods of services served by :class:`RpcServer` over a transport.

    Args:
        transport: any :class:`~catga.protocols.Transport`.
        registry: message types allowed on the wire (default :func:`~catga.serialization.default_registry`).
        timeout: default seconds to wait for a reply.
    """

    #: A transport opened by a backend's ``connect()`` shortcut, closed by :meth:`aclose`.
    _owned: Any = None

    def __init__(
        self, transport: Transport, *, registry: TypeRegistry | None = None, timeout: float = 5.0
    ) -> None:
        self.transport = transport
        self.registry = registry if registry is not None else default_registry()
        self.timeout = timeout

    async def aclose(self) -> None:
        """Close the transport if ``connect()`` opened it (a transport passed in stays open)."""
        owned, self._owned = self._owned, None
        if owned is not None:
            await owned.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @overload
    async def call(
        self,
        service: str,
        method: str,
        request: Request[R],
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Result[R]: ...

    @overload
    async def call(
        self,
        service: str,
        method: str,
        request: object,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Result[Any]: ...

    async def call(
        self,
        service: str,
        method: str,
        request: object,
        *,
        timeout: float | None = None,
        metadata: Metadata | None = None,
    ) -> Result[Any]:
        """Call ``service.method(request)`` and return its result.

        Args:
            service: the service name.
            method: the method name.
            request: the request message (its type must be encodable by the registry).
            timeout: seconds to wait for the reply (default: the client's).
            metadata: ids and headers to send with the request (fresh ones by default).

        Returns:
            A success with the method's return value, or a failure: the remote error's message and code,
            ``timeout`` when no reply came in time, the transport error's code when the transport
            failed (``unavailable``, ``too_large``, ``backend``...), ``internal`` when the remote
            handler crashed.

        Raises:
            InvalidIdentifierError: a malformed service or method name.
            SerializationError: the request cannot be encoded.
        """
        validate_identifier(service, "rpc service")
        validate_identifier(method, "rpc method")
        seconds = self.timeout if timeout is None else timeout
        name, body = self.registry.encode(request)
        if metadata is None:
            metadata = Metadata(message_id=new_id(), created_at=time.time())
        headers = metadata.to_headers(name)
        headers[H_RPC_METHOD] = method
        where = {"service": service, "method": method}
        try:
            data, reply = await self.transport.request(service, body, headers=headers, timeout=seconds)
        except OperationTimeoutError as exc:
            return Result.failure(
                f"rpc call {service}.{method} got no reply within {seconds} s",
                ErrorCode.TIMEOUT,
                exc,
                where,
            )
        except BackendError as exc:  # unavailable, timeout, too_large...: the error's own code
            return Result.failure(f"rpc call {service}.{method} failed: {exc}", exc.code, exc, where)
        return self._result(service, method, data, reply, where)

    def _result(
        self, service: str, method: str, data: bytes, reply: dict[str, str], where: dict[str, Any]
    ) -> Result[Any]:
        status = reply.get(H_RPC_STATUS)
        if status == "ok":
            try:
                type_name = reply.get(H_TYPE)
                if type_name is not None:
                    return Result.success(self.registry.decode(type_name, data))
                fmt = self.registry.format
                return Result.success(
                    msgspec.json.decode(data) if fmt == "json" else msgspec.msgpack.decode(data)
                )
            except (SerializationError, msgspec.DecodeError) as exc:
                return Result.failure(
                    f"cannot decode the reply of {service}.{method}: {exc}",
                    ErrorCode.SERIALIZATION,
                    exc,
                    where,
                )
        if status == "error":
            try:
                err = _decode_error(data)
            except msgspec.DecodeError:
                err = _ErrorBody(data.decode("utf-8", "replace"), reply.get(H_RPC_CODE, ErrorCode.INTERNAL))
            meta: dict[str, Any] = dict(where)
            if err.field_errors:
                meta["field_errors"] = err.field_errors
            return Result.failure(err.message, err.code, _remote_exception(err), meta)
        if H_ERROR in reply:
            _log.warning("rpc %s.%s: the remote handler crashed: %s", service, method, reply[H_ERROR])
            return Result.failure(
                f"rpc call {service}.{method}: internal error", ErrorCode.INTERNAL, None, where
            )
        return Result.failure(
            f"rpc call {service}.{method}: the reply is not a catga rpc reply (no {H_RPC_STATUS} header)",
            ErrorCode.SERIALIZATION,
            None,
            where,
        )


def _remote_exception(err: _ErrorBody) -> CatgaError | None:
    """Rebuild the caller-side exception for well-known codes, so ``unwrap()`` raises something useful."""
    if err.code == ErrorCode.VALIDATION:
        invalid = ValidationError(err.message)
        invalid.field_errors = dict(err.field_errors)  # the message already lists them
        return invalid
    cls = _REMOTE_ERRORS.get(err.code)
    return cls(err.message) if cls is not None else None
