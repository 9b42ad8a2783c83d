"""HTTP endpoints for catga messages on Starlette (and so FastAPI): routes, problem+json, correlation ids.

Install with ``pip install "catga[fastapi]"`` (Starlette; FastAPI apps are Starlette apps)::

    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from catga.web import CorrelationIdMiddleware, Endpoints

    api = Endpoints(app)                                   # a catga.App (or Mediator)
    api.command("/orders", PlaceOrder)                     # POST, JSON body -> send -> 200 / 204
    api.query("/orders/{order_id}", GetOrder)              # GET, path + query params -> send -> 200
    api.event("/events/order-shipped", OrderShipped)       # POST, JSON body -> publish -> 202
    web = Starlette(routes=api.routes, middleware=[Middleware(CorrelationIdMiddleware)])
    # FastAPI: api.add_to(fastapi_app)   (routes, and their operations in /openapi.json and /docs)
    #          fastapi_app.add_middleware(CorrelationIdMiddleware)

**Input.** The message is built from the JSON body (commands, events; an object, or nothing) merged
with the path parameters, or from the path and query parameters (queries), and converted to the
message type in lax mode (``"42"`` fits an ``int`` field): msgspec Structs and dataclasses through
``msgspec.convert``, pydantic models through ``model_validate``. Input that is not JSON, not an object or
does not fit the type is answered ``422`` — never a 500, and the handler never runs.

**Output.** A successful command or query answers ``200`` with its value as JSON (``204`` when the value
is None); an event ``202``. A failed :class:`~catga.result.Result` answers an RFC 9457
``application/problem+json`` body ``{"type", "title", "status", "detail", "code", "correlation_id"}``
(plus ``"field_errors"`` for validation failures) with the status of its error code
(:data:`STATUS_BY_CODE`: validation 422, not_found 404, conflict/concurrency 409, unauthorized 401,
forbidden 403, timeout 504, retryable/backend 503, business 400, anything else 500). Internal errors
keep their details out of the response (the mediator already reduced them to "internal error").

**OpenAPI.** :meth:`Endpoints.openapi` describes every route from its message type (JSON Schema from
msgspec for Structs and dataclasses, from pydantic for its models): path and query parameters, the
request body, the success response (the type's result ``R`` of ``Command[R]``/``Query[R]``) and the
problem document of failures. :meth:`Endpoints.add_to` merges it into a FastAPI app's document.

**Correlation.** :class:`CorrelationIdMiddleware` reads ``X-Correlation-Id`` (a catga id, a UUID or
another token, see :func:`~catga.messages.parse_correlation_id`) or, without one, the trace id of a W3C
``traceparent`` header, and every message an endpoint sends during that request continues that
correlation; the response carries the correlation id actually used (the incoming one, or the new
message's own id).
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any, cast

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from catga._openapi import PROBLEM_JSON, Operation, openapi_document
from catga.errors import ConfigurationError, ErrorCode
from catga.ids import new_id
from catga.messages import Event, Metadata, parse_correlation_id, trace_id_of
from catga.messages import Request as MessageRequest
from catga.pipeline._codec import _enc_hook  # pydantic values through model_dump, as stored results
from catga.result import Result

__all__ = ("STATUS_BY_CODE", "CorrelationIdMiddleware", "Endpoints", "problem")

#: HTTP status for each error code of a failed Result (others: 500).
STATUS_BY_CODE: dict[str | None, int] = {
    ErrorCode.VALIDATION: 422,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.CONFLICT: 409,
    ErrorCode.CONCURRENCY: 409,
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.TIMEOUT: 504,
    ErrorCode.RETRYABLE: 503,
    ErrorCode.BACKEND: 503,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.BUSINESS: 400,
}
HEADER = "X-Correlation-Id"

# The request's correlation: [incoming id or None, id used by the first message sent or None].
_request: contextvars.ContextVar[list[int | str | None] | None] = contextvars.ContextVar(
    "catga_http_correlation", default=None
)


_encode = msgspec.json.Encoder(enc_hook=_enc_hook).encode


def problem(
    status: int, detail: str, code: str | None, *, correlation_id: int | str | None = None, **extra: Any
) -> Response:
    """An ``application/problem+json`` response (RFC 9457)."""
    body: dict[str, Any] = {
        "type": f"urn:catga:error:{code or 'internal'}",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if correlation_id is not None:
        body["correlation_id"] = str(correlation_id)
    body.update(extra)
    return Response(_encode(body), status_code=status, media_type=PROBLEM_JSON)


class Endpoints:
    """Routes that turn HTTP requests into catga messages (see the module docs).

    Args:
        dispatcher: a :class:`catga.App` or :class:`~catga.mediator.Mediator` (``send``/``publish``).

    ``command`` and ``query`` take Command/Query classes, ``event`` an Event class; another class is a
    :class:`~catga.errors.ConfigurationError` when the route is added (not a 500 on each request).
    """

    def __init__(self, dispatcher: Any) -> None:
        self.dispatcher = dispatcher
        self.routes: list[Route] = []
        self._operations: list[Operation] = []

    def openapi(self) -> dict[str, Any]:
        """The OpenAPI 3.1 ``paths`` and ``components`` of these routes (see the module docs).

        Merge it into a document of your own (Starlette), or let :meth:`add_to` do it (FastAPI).

        Raises:
            ConfigurationError: a message or result type has no JSON Schema (not a msgspec, dataclass
                or pydantic type).
        """
        return openapi_document(self._operations)

    def add_to(self, fastapi_app: Any) -> None:
        """Add the routes to a FastAPI app, and their operations to its ``/openapi.json`` (``/docs``).

        FastAPI describes only its own routes; this wraps ``fastapi_app.openapi`` so that the document
        it builds (once, cached) also has these paths and schemas. Declare the routes first: those
        declared on this object after the call are neither served nor described by that app.

        Raises:
            ConfigurationError: a message or result type has no JSON Schema (when the document is built).
        """
        routes, operations = list(self.routes), list(self._operations)
        fastapi_app.router.routes.extend(routes)
        original = fastapi_app.openapi

        def openapi() -> dict[str, Any]:
            if fastapi_app.openapi_schema is not None:
                return cast(dict[str, Any], fastapi_app.openapi_schema)
            document = dict(original())
            ours = openapi_document(operations)
            document["paths"] = {**document.get("paths", {}), **ours["paths"]}
            components = dict(document.get("components", {}))
            components["schemas"] = {**components.get("schemas", {}), **ours["components"]["schemas"]}
            document["components"] = components
            fastapi_app.openapi_schema = document
            return document

        fastapi_app.openapi = openapi

    def command(
        self, path: str, message_type: type, *, method: str = "POST", name: str | None = None
    ) -> Route:
        """``method path``: JSON body + path params → ``send`` → 200 with the value (204 for None)."""
        return self._add(path, message_type, method, name, from_body=True, event=False)

    def query(self, path: str, message_type: type, *, method: str = "GET", name: str | None = None) -> Route:
        """``method path``: path + query params → ``send`` → 200 with the value."""
        return self._add(path, message_type, method, name, from_body=False, event=False)

    def event(self, path: str, message_type: type, *, method: str = "POST", name: str | None = None) -> Route:
        """``method path``: JSON body + path params → ``publish`` → 202."""
        return self._add(path, message_type, method, name, from_body=True, event=True)

    def health(self, path: str = "/healthz", *, timeout: float = 2.0) -> Route:
        """``GET path``: :meth:`catga.App.health` as JSON, ``200`` when healthy, ``503`` when not."""
        dispatcher = self.dispatcher

        async def endpoint(request: Request) -> Response:
            report = await dispatcher.health(timeout)
            return Response(
                _encode(report), status_code=200 if report.ok else 503, media_type="application/json"
            )

        route = Route(path, endpoint, methods=["GET"], name="health")
        self.routes.append(route)
        return route

    def _add(
        self, path: str, message_type: type, method: str, name: str | None, *, from_body: bool, event: bool
    ) -> Route:
        _check_route_type(
            message_type, path, event=event, call="event" if event else "command" if from_body else "query"
        )
        build = _builder(message_type)
        dispatcher = self.dispatcher
        kind = "event" if event else "command" if from_body else "query"
        self._operations.append(Operation(path, method.lower(), message_type, kind))

        async def endpoint(request: Request) -> Response:
            data: dict[str, Any] = {}
            if from_body:
                raw = await request.body()
                if raw.strip():
                    try:
                        decoded = msgspec.json.decode(raw)
                    except msgspec.DecodeError as exc:
                        return problem(422, f"the body is not JSON: {exc}", ErrorCode.VALIDATION)
                    if not isinstance(decoded, dict):
                        return problem(422, "the body must be a JSON object", ErrorCode.VALIDATION)
                    data = decoded
            else:
                data = dict(request.query_params)
            data.update(request.path_params)
            try:
                message = build(data)
            except _InvalidInput as exc:
                return problem(422, exc.detail, ErrorCode.VALIDATION, field_errors=exc.field_errors)
            metadata = _metadata()
            if event:
                result: Result[Any] = await dispatcher.publish(message, metadata=metadata)
            else:
                result = await dispatcher.send(message, metadata=metadata)
            correlation = metadata.correlation_id if metadata is not None else None
            if not result.ok:
                return _failed(result, correlation)
            if event:
                return Response(status_code=202)
            if result.value is None:
                return Response(status_code=204)
            return Response(_encode(result.value), media_type="application/json")

        route = Route(path, endpoint, methods=[method], name=name or f"{method.lower()} {path}")
        self.routes.append(route)
        return route


def _metadata() -> Metadata | None:
    """Metadata continuing the request's correlation, or None (no middleware: the mediator decides)."""
    state = _request.get()
    if state is None:
        return None
    mid = new_id()
    incoming = state[0]
    correlation = mid if incoming is None else incoming
    if state[1] is None:
        state[1] = correlation
    return Metadata(message_id=mid, correlation_id=correlation)


def _failed(result: Result[Any], correlation: int | str | None) -> Response:
    status = STATUS_BY_CODE.get(result.code, 500)
    extra: dict[str, Any] = {}
    field_errors = (result.metadata or {}).get("field_errors")
    if field_errors:
        extra["field_errors"] = field_errors
    return problem(
        status, result.error or HTTPStatus(status).phrase, result.code, correlation_id=correlation, **extra
    )


def _check_route_type(message_type: object, path: str, *, event: bool, call: str) -> None:
    """Refuse a route whose type is not the kind its method dispatches (events are published)."""
    wanted = Event if event else MessageRequest
    if isinstance(message_type, type) and issubclass(message_type, wanted):
        return
    name = getattr(message_type, "__qualname__", repr(message_type))
    if event:
        hint = "an event route takes a class that inherits catga.Event"
    elif isinstance(message_type, type) and issubclass(message_type, Event):
        hint = f"{name} is an Event: use Endpoints.event (events are published, answered 202)"
    else:
        hint = "it takes a class that inherits catga.Command[R] or catga.Query[R]"
    raise ConfigurationError(f"Endpoints.{call}({path!r}, {name}): {hint}")


class _InvalidInput(Exception):
    def __init__(self, detail: str, field_errors: dict[str, list[str]] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field_errors = field_errors or {}


def _builder(message_type: type) -> Callable[[dict[str, Any]], Any]:
    """``data -> message`` for msgspec Structs, dataclasses and pydantic models (lax conversion)."""
    validate = getattr(message_type, "model_validate", None)
    if validate is not None and hasattr(message_type, "model_dump"):  # pydantic v2

        def build_pydantic(data: dict[str, Any]) -> Any:
            try:
                return validate(data)
            except ValueError as exc:  # pydantic.ValidationError is a ValueError
                errors: dict[str, list[str]] = {}
                for err in getattr(exc, "errors", list)():
                    field = ".".join(str(p) for p in err.get("loc", ())) or "$"
                    errors.setdefault(field, []).append(str(err.get("msg", "")))
                raise _InvalidInput(f"invalid {message_type.__name__}", errors) from exc

        return build_pydantic

    def build(data: dict[str, Any]) -> Any:
        try:
            return msgspec.convert(data, message_type, strict=False)
        except msgspec.ValidationError as exc:
            raise _InvalidInput(f"invalid {message_type.__name__}: {exc}") from exc

    return build


class CorrelationIdMiddleware:
    """ASGI middleware: continue the ``X-Correlation-Id`` of a request, and answer with the one used.

    The header may carry a catga id (a positive integer), a UUID or another short token (see
    :func:`~catga.messages.parse_correlation_id`); without it, a W3C ``traceparent`` header's trace id
    is used, so the logs of a request share the id its trace has. Anything else is ignored (a new
    correlation starts).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], header: str = HEADER) -> None:
        self.app = app
        self.header = header.lower().encode()
        self.header_name = header.encode()

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming: int | str | None = None
        trace: str | None = None
        for key, value in scope.get("headers", ()):
            if key == self.header and incoming is None:
                incoming = parse_correlation_id(value.decode("latin-1"))
            elif key == b"traceparent" and trace is None:
                trace = trace_id_of(value.decode("latin-1"))
        state: list[int | str | None] = [incoming if incoming is not None else trace, None]
        token = _request.set(state)

        async def send_with_header(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                used = state[1] if state[1] is not None else state[0]
                if used is not None:
                    headers = list(message.get("headers", ()))
                    headers.append((self.header_name, str(used).encode()))
                    message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            _request.reset(token)
