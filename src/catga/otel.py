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
* makes exported events (:meth:`catga.App.export`, through the outbox too) carry the current trace
  context in their headers (``traceparent``/``tracestate``, the global propagator's format, W3C by
  default); the consuming app's span for that event continues the publisher's trace.
* records two metrics: ``catga.messages.handled`` (counter) and ``catga.message.duration`` (histogram,
  seconds), both with attributes ``catga.message.type`` and ``catga.outcome`` (``ok`` / ``failed``).

Cost: with the OpenTelemetry API alone (no SDK) or a span that is sampled out, a no-op span is
started and ended per message (no context switch, no attributes; figure in ``docs/benchmarks.md``,
*Design figures*); with an SDK recording the span, what its processors cost on top. Apps that are not
instrumented pay nothing.
"""

from __future__ import annotations

import time
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from catga import __version__
from catga.context import Context
from catga.errors import ConfigurationError
from catga.handlers import HandlerInfo
from catga.pipeline.base import Behavior, Next
from catga.pipeline.logging import LoggingBehavior
from catga.result import Result

if TYPE_CHECKING:
    from catga.app import App

__all__ = ("TracingBehavior", "inject", "instrument")


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
            "catga.message.duration", unit="s", description="Time to handle a message through the pipeline"
        )

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the tracing layer for one message type."""
        tracer, handled, duration = self.tracer, self.handled, self.duration
        is_event = info.is_event
        span_name = f"{'publish' if is_event else 'send'} {info.name}"
        kind = SpanKind.CONSUMER if is_event else SpanKind.INTERNAL
        ok_labels = {"catga.message.type": info.name, "catga.outcome": "ok"}
        failed_labels = {"catga.message.type": info.name, "catga.outcome": "failed"}
        clock = time.perf_counter

        async def traced(message: Any, ctx: Context) -> Result[Any]:
            md = ctx._metadata  # set when the message arrived with metadata (from a transport)
            headers = md.headers if md is not None else None
            parent = propagate.extract(headers) if headers and "traceparent" in headers else None
            start = clock()
            span = tracer.start_span(span_name, context=parent, kind=kind)
            if not span.is_recording():  # no SDK (or sampled out): no context switch, no attributes
                span.end()
                result = await call_next(message, ctx)
            else:
                span.set_attributes(_attributes(info.name, ctx))
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
    app.add_header_hook(inject)
    return behavior
