"""OpenTelemetry for catga: a span and metrics per handled message, W3C trace context across processes.

Install with ``pip install "catga[otel]"`` (the OpenTelemetry API; configure an SDK and exporters as
for any application). Then::

    app = catga.App(transport="nats://127.0.0.1:4222", name="orders")
    catga.otel.instrument(app)              # before the app handles its first message

What :func:`instrument` does:

* adds a :class:`TracingBehavior` to the app's pipeline, right after logging (the place
  ``docs/pipeline.md`` keeps for tracing): every handled message gets a span ``send <Type>`` (commands
  and queries) or ``publish <Type>`` (events), with the message id, type, correlation and causation ids
  as attributes; a failed Result sets the span's status to ERROR with the error code (and records the
  exception, if any). A message sent from inside a handler gets a child span (OpenTelemetry's context
  follows the same ``contextvars`` as catga's correlation).
* records two metrics: ``catga.messages.handled`` (counter) and ``catga.message.duration`` (histogram,
  seconds), both with attributes ``catga.message.type`` and ``catga.outcome`` (``ok`` / ``failed``).
* installs the process-wide backend probe (:func:`instrument_backends`): spans and metrics following
  OpenTelemetry's messaging semantic conventions for what crosses a transport -- ``send <dest>``
  (PRODUCER) around each exported event, ``create <dest>`` when it goes to an outbox and ``send <dest>``
  when the relay publishes it, ``process <dest>`` (CONSUMER) around each delivery a subscription handles,
  with the delivery policy's verdict as ``catga.outcome`` -- plus event-store reads and appends of a
  :class:`~catga.eventsourcing.Repository`, the outbox relay's counts and dead letters. The producer
  span's context travels in the message headers (``traceparent``/``tracestate``, the global
  propagator's format, W3C by default), so a consumer's ``process`` span, and the handler spans under it,
  continue the publisher's trace on every transport.

Span attributes from message fields (the origin's ``[TraceTag]``): decorate the message class with
:func:`trace_tags`.

Cost: with the OpenTelemetry API alone (no SDK) or a span that is sampled out, a no-op span is
started and ended per message (no context switch, no attributes; figure in ``docs/benchmarks.md``,
*Design figures*); with an SDK recording the span, what its processors cost on top. Apps that are not
instrumented pay nothing but one check per transport operation (see :mod:`catga._observe`).

This module is over 400 lines because it is one concept: everything catga reports to OpenTelemetry.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, MutableMapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from catga import __version__, _observe
from catga.context import Context
from catga.errors import ConfigurationError
from catga.handlers import HandlerInfo
from catga.messages import H_CORRELATION, H_ID
from catga.pipeline.base import Behavior, Next
from catga.pipeline.logging import LoggingBehavior
from catga.result import Result

if TYPE_CHECKING:
    from catga.app import App

__all__ = (
    "DURATION_BUCKETS",
    "BackendProbe",
    "TracingBehavior",
    "inject",
    "instrument",
    "instrument_backends",
    "trace_tags",
    "uninstrument_backends",
)

M = TypeVar("M", bound=type)

DURATION_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Bucket bounds (seconds) advised for every duration histogram catga records.

The SDK's default bounds (0, 5, 10, 25... meant for milliseconds) would put every catga operation in the
first bucket. A view configured in your meter provider still overrides them.
"""

#: The class attribute :func:`trace_tags` sets: ``((field, attribute name), ...)``.
_TAGS = "__catga_trace_tags__"


def trace_tags(*fields: str, **renamed: str) -> Callable[[M], M]:
    """Class decorator: copy these message fields onto the message's spans as attributes.

    The ``[TraceTag]`` of the origin. ``@trace_tags("order_id")`` adds ``catga.message.order_id``;
    ``@trace_tags(order_id="order.id")`` names the attribute. Values are converted with ``str()``
    (ints, floats and bools are kept). Read once per message type when the pipeline is built, and set
    only on spans that record.

    Example::

        @catga.otel.trace_tags("order_id", customer="customer.id")
        @dataclass(frozen=True)
        class PlaceOrder(Command[str]):
            order_id: str
            customer: str

    Raises:
        ConfigurationError: no field named, or an attribute name that is empty.
    """
    pairs = tuple((f, f"catga.message.{f}") for f in fields) + tuple(renamed.items())
    if not pairs or any(not f or not name for f, name in pairs):
        raise ConfigurationError("trace_tags() needs field names (and non-empty attribute names)")

    def decorate(cls: M) -> M:
        inherited: tuple[tuple[str, str], ...] = getattr(cls, _TAGS, ())
        setattr(cls, _TAGS, inherited + pairs)
        return cls

    return decorate


def _tag_value(value: Any) -> str | int | float | bool:
    return value if isinstance(value, str | int | float | bool) else str(value)


def inject(headers: MutableMapping[str, str]) -> None:
    """Write the current trace context into message ``headers`` (for messages you publish yourself)."""
    propagate.inject(headers)


class TracingBehavior(Behavior):
    """A span and metrics around each handled message (see the module docs).

    Args:
        tracer_provider: the provider to get the tracer from (default: the global one).
        meter_provider: the provider to get the meter from (default: the global one).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("catga", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("catga", __version__, meter_provider=meter_provider)
        self.handled = meter.create_counter(
            "catga.messages.handled", unit="{message}", description="Messages handled, by type and outcome"
        )
        self.duration = meter.create_histogram(
            "catga.message.duration",
            unit="s",
            description="Time to handle a message through the pipeline",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the tracing layer for one message type."""
        tracer, handled, duration = self.tracer, self.handled, self.duration
        is_event = info.is_event
        span_name = f"{'publish' if is_event else 'send'} {info.name}"
        kind = SpanKind.CONSUMER if is_event else SpanKind.INTERNAL
        tags: tuple[tuple[str, str], ...] = getattr(info.message_type, _TAGS, ())
        ok_labels = {"catga.message.type": info.name, "catga.outcome": "ok"}
        failed_labels = {"catga.message.type": info.name, "catga.outcome": "failed"}
        clock = time.perf_counter

        async def traced(message: Any, ctx: Context) -> Result[Any]:
            md = ctx._metadata  # set when the message arrived with metadata (from a transport)
            headers = md.headers if md is not None else None
            # From a transport: the context in its headers, unless the delivery's own span (the
            # backend probe's ``process``) is current already: then the handler span is its child.
            parent = None
            if headers and "traceparent" in headers and not trace.get_current_span().is_recording():
                parent = propagate.extract(headers)
            start = clock()
            span = tracer.start_span(span_name, context=parent, kind=kind)
            if not span.is_recording():  # no SDK (or sampled out): no context switch, no attributes
                span.end()
                result = await call_next(message, ctx)
            else:
                span.set_attributes(_attributes(info.name, ctx))
                for field, attribute in tags:
                    span.set_attribute(attribute, _tag_value(getattr(message, field, None)))
                with trace.use_span(span, end_on_exit=True):
                    result = await call_next(message, ctx)
                    if not result.ok:
                        span.set_status(Status(StatusCode.ERROR, result.error))
                        if result.code:
                            span.set_attribute("catga.error.code", result.code)
                        if result.exception is not None:
                            span.record_exception(result.exception)
            labels = ok_labels if result.ok else failed_labels
            handled.add(1, labels)
            duration.record(clock() - start, labels)
            return result

        return traced


def _attributes(type_name: str, ctx: Context) -> dict[str, str]:
    attributes = {
        "messaging.system": "catga",
        "messaging.message.id": str(ctx.message_id),
        "catga.message.type": type_name,
        "catga.correlation_id": str(ctx.correlation_id),
    }
    if ctx.causation_id is not None:
        attributes["catga.causation_id"] = str(ctx.causation_id)
    return attributes


def instrument(app: App, *, tracer_provider: Any = None, meter_provider: Any = None) -> TracingBehavior:
    """Trace and measure ``app``'s messages and propagate trace context on exported events.

    Call it before the app handles its first message (the pipeline is fixed then).

    Returns:
        the behavior added to the pipeline.

    Raises:
        ConfigurationError: the app already dispatched messages, or is running.
    """
    if app.running:
        raise ConfigurationError("instrument the app before it starts")
    behavior = TracingBehavior(tracer_provider, meter_provider)
    behaviors = app.mediator.behaviors
    index = 1 if behaviors and isinstance(behaviors[0], LoggingBehavior) else 0
    app.mediator.add_behavior(behavior, index=index)
    instrument_backends(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return behavior


def instrument_backends(*, tracer_provider: Any = None, meter_provider: Any = None) -> BackendProbe:
    """Report transport, outbox, dead-letter and event-store work of this process to OpenTelemetry.

    Process-wide (like OpenTelemetry's own library instrumentations): every app, subscription and
    relay in the process reports through the providers of the latest call. :func:`instrument` calls it;
    call it yourself to trace catga's backends without the per-message pipeline spans.

    Returns:
        the installed probe.
    """
    probe = BackendProbe(tracer_provider, meter_provider)
    _observe.probe = probe
    return probe


def uninstrument_backends() -> None:
    """Remove the backend probe: catga's backends report nothing from now on."""
    _observe.probe = None


# -- the backend probe ------------------------------------------------------------------------------


class _Scope:
    """One operation's span (current while the operation runs) and the metrics recorded at its end."""

    __slots__ = ("_count", "_counter", "_duration", "_labels", "_outcome", "_span", "_start", "_token")

    def __init__(self, span: Any, duration: Any, counter: Any, labels: dict[str, str]) -> None:
        self._span = span
        self._duration = duration
        self._counter = counter
        self._labels = labels
        self._outcome: str | None = None
        self._count = 1
        self._token: object = None
        self._start = 0.0

    def outcome(self, outcome: str) -> None:
        self._outcome = outcome

    def count(self, n: int) -> None:
        self._count = n
        if self._span.is_recording():
            self._span.set_attribute("catga.count", n)

    def __enter__(self) -> _Scope:
        if self._span.is_recording():
            self._token = otel_context.attach(trace.set_span_in_context(self._span))
        self._start = time.perf_counter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed = time.perf_counter() - self._start
        span, labels = self._span, self._labels
        if exc is not None:
            labels = {**labels, "error.type": type(exc).__qualname__}
            if span.is_recording():
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                span.record_exception(exc)
                span.set_attribute("error.type", type(exc).__qualname__)
        elif self._outcome is not None:
            labels = {**labels, "catga.outcome": self._outcome}
            if span.is_recording():
                span.set_attribute("catga.outcome", self._outcome)
                if self._outcome in ("retry", "dead", "keep"):
                    span.set_status(Status(StatusCode.ERROR, f"delivery {self._outcome}"))
        span.end()
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
        self._duration.record(elapsed, labels)
        if self._counter is not None:
            self._counter.add(self._count, labels)


class BackendProbe:
    """The OpenTelemetry implementation of catga's backend probe (installed by :func:`instrument_backends`).

    Spans follow the messaging semantic conventions: names ``send <destination>``, ``create
    <destination>``, ``process <destination>``; attributes ``messaging.system`` (``memory``, ``nats``,
    ``redis``), ``messaging.destination.name``, ``messaging.operation.type`` and
    ``messaging.operation.name``, ``messaging.message.id``, ``messaging.message.conversation_id`` (the
    correlation id); ``catga.delivery.attempt`` and ``catga.outcome`` (the delivery policy's verdict:
    ``ack``, ``retry``, ``wait``, ``dead``, ``keep``) on ``process`` spans.

    Metrics (attributes ``messaging.system``, ``messaging.destination.name``,
    ``messaging.operation.name``, and ``catga.outcome`` or ``error.type``):
    ``messaging.client.operation.duration`` and ``messaging.client.sent.messages`` (producers),
    ``messaging.process.duration`` and ``messaging.client.consumed.messages`` (deliveries),
    ``catga.dead_letters`` (by ``catga.reason``), ``catga.outbox.messages`` (by ``catga.outcome``:
    ``published``, ``failed``, ``dead``), ``catga.event_store.duration`` and ``catga.event_store.events``
    (by ``db.system.name`` and ``db.operation.name``: ``read``, ``append``), ``catga.lock.wait.duration``
    (by ``catga.lock.system`` and ``catga.outcome=acquired`` or ``error.type``, e.g.
    ``LockNotAcquiredError``).

    Args:
        tracer_provider: the provider to get the tracer from (default: the global one).
        meter_provider: the provider to get the meter from (default: the global one).
    """

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self.tracer = trace.get_tracer("catga", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("catga", __version__, meter_provider=meter_provider)
        self._client_duration = meter.create_histogram(
            "messaging.client.operation.duration",
            unit="s",
            description="Time to send a message",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._sent = meter.create_counter(
            "messaging.client.sent.messages", unit="{message}", description="Messages sent or stored"
        )
        self._process_duration = meter.create_histogram(
            "messaging.process.duration",
            unit="s",
            description="Time to process a delivery",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._consumed = meter.create_counter(
            "messaging.client.consumed.messages", unit="{message}", description="Deliveries processed"
        )
        self._dead = meter.create_counter(
            "catga.dead_letters", unit="{message}", description="Messages dead-lettered"
        )
        self._outbox = meter.create_counter(
            "catga.outbox.messages", unit="{message}", description="Outbox messages by relay outcome"
        )
        self._store_duration = meter.create_histogram(
            "catga.event_store.duration",
            unit="s",
            description="Time of an event-store read or append",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._lock_wait = meter.create_histogram(
            "catga.lock.wait.duration",
            unit="s",
            description="Time to acquire a lock, or to give up",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._store_events = meter.create_counter(
            "catga.event_store.events", unit="{event}", description="Events read or appended"
        )

    def produce(
        self,
        operation: str,
        system: str,
        destination: str,
        headers: dict[str, str],
        *,
        command: bool = False,
        inject: bool = True,
        message_id: object = None,
        correlation_id: object = None,
    ) -> _Scope:
        """A ``send``/``create`` PRODUCER span (see :class:`catga._observe.Probe`)."""
        name = "send" if command else "publish" if operation == "send" else operation
        parent = None if inject else propagate.extract(headers)
        span = self.tracer.start_span(f"{operation} {destination}", context=parent, kind=SpanKind.PRODUCER)
        labels = {
            "messaging.system": system,
            "messaging.destination.name": destination,
            "messaging.operation.name": name,
        }
        if span.is_recording():
            span.set_attributes(_message_attributes(labels, operation, headers, message_id, correlation_id))
        if inject:
            propagate.inject(headers, context=trace.set_span_in_context(span))
        return _Scope(span, self._client_duration, self._sent, labels)

    def process(
        self, system: str, destination: str, headers: Mapping[str, str], attempts: int, *, command: bool
    ) -> _Scope:
        """A ``process`` CONSUMER span, child of the context in ``headers``."""
        parent = propagate.extract(headers) if "traceparent" in headers else None
        span = self.tracer.start_span(f"process {destination}", context=parent, kind=SpanKind.CONSUMER)
        labels = {
            "messaging.system": system,
            "messaging.destination.name": destination,
            "messaging.operation.name": "process",
        }
        if span.is_recording():
            span.set_attributes(_message_attributes(labels, "process", headers))
            span.set_attribute("catga.delivery.attempt", attempts)
            span.set_attribute("catga.message.kind", "command" if command else "event")
        return _Scope(span, self._process_duration, self._consumed, labels)

    def store(self, operation: str, system: str, stream_id: str) -> _Scope:
        """An event-store ``read``/``append`` CLIENT span."""
        span = self.tracer.start_span(f"{operation} events", kind=SpanKind.CLIENT)
        labels = {"db.system.name": system, "db.operation.name": operation}
        if span.is_recording():
            span.set_attributes(labels)
            span.set_attribute("catga.stream.id", stream_id)
        return _Scope(span, self._store_duration, self._store_events, labels)

    def lock(self, system: str, key: str, wait: float) -> _Scope:
        """An ``acquire lock`` CLIENT span; the time to get the lock (or give up) is the wait metric."""
        span = self.tracer.start_span("acquire lock", kind=SpanKind.CLIENT)
        labels = {"catga.lock.system": system}
        if span.is_recording():
            span.set_attributes(labels)
            span.set_attribute("catga.lock.key", key)
            span.set_attribute("catga.lock.wait", wait)
        return _Scope(span, self._lock_wait, None, labels)

    def dead_lettered(self, system: str, destination: str, reason: str) -> None:
        """Count a dead letter; an event on the current span."""
        labels = {
            "messaging.system": system,
            "messaging.destination.name": destination,
            "catga.reason": reason,
        }
        self._dead.add(1, labels)
        span = trace.get_current_span()
        if span.is_recording():
            span.add_event("catga.dead_lettered", labels)

    def outbox(self, outcome: str, n: int) -> None:
        """Count ``n`` outbox messages that reached ``outcome``."""
        self._outbox.add(n, {"catga.outcome": outcome})


def _message_attributes(
    labels: dict[str, str],
    operation: str,
    headers: Mapping[str, str],
    message_id: object = None,
    correlation_id: object = None,
) -> dict[str, str]:
    attributes = {**labels, "messaging.operation.type": operation}
    mid = headers.get(H_ID) if message_id is None else str(message_id)
    if mid:
        attributes["messaging.message.id"] = mid
    correlation = headers.get(H_CORRELATION) if correlation_id is None else str(correlation_id)
    if correlation:
        attributes["messaging.message.conversation_id"] = correlation
    return attributes
