"""Several projection runners as one application component: started and stopped with the app, one
health check, and their lag as a metric.

::

    projections = app.add_component(Projections(orders_runner, totals_runner))

``App.start`` starts every runner (each competes for its lease when it has a lock), ``App.aclose`` stops
them before the backends close, ``App.health()`` shows a ``projections`` check (failed when a runner
stopped or failed; otherwise each runner's state, position and lag), and with OpenTelemetry installed
the observable gauge ``catga.projection.lag`` (unit ``{event}``, attribute ``catga.projection``) reports
the lag of the runners this process owns, as of their last event or health check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from catga.errors import ConfigurationError
from catga.eventsourcing.projections import ProjectionRunner

__all__ = ("Projections",)


class Projections:
    """A group of :class:`~catga.eventsourcing.ProjectionRunner` managed as one app component.

    Args:
        *runners: the runners (distinct names).
        meter_provider: OpenTelemetry meter provider for the lag gauge (default: the global one; no
            gauge when ``opentelemetry`` is not installed).

    Raises:
        ConfigurationError: no runner, or two with the same name.
    """

    health_name = "projections"

    def __init__(self, *runners: ProjectionRunner, meter_provider: Any = None) -> None:
        if not runners:
            raise ConfigurationError("Projections() needs at least one ProjectionRunner")
        names = [r.name for r in runners]
        if len(set(names)) != len(names):
            raise ConfigurationError(f"projection names must be distinct, got {names}")
        self.runners = runners
        self._meter_provider = meter_provider
        self._gauge: Any = None

    def __getitem__(self, name: str) -> ProjectionRunner:
        for runner in self.runners:
            if runner.name == name:
                return runner
        raise KeyError(name)

    async def start(self) -> None:
        """Start every runner that is not running yet (each in its own task), and the lag gauge."""
        for runner in self.runners:
            if not runner.running:
                runner.start()
        if self._gauge is None:
            self._gauge = self._observe()

    def _observe(self) -> Any:
        try:
            from opentelemetry import metrics
        except ImportError:  # metrics are optional (catga[otel])
            return False
        meter = metrics.get_meter("catga.eventsourcing", meter_provider=self._meter_provider)
        return meter.create_observable_gauge(
            "catga.projection.lag",
            callbacks=[self._lags],
            unit="{event}",
            description="Events stored but not yet handled by a projection this process owns",
        )

    def _lags(self, options: Any) -> Iterable[Any]:
        from opentelemetry.metrics import Observation

        return [Observation(r.lag, {"catga.projection": r.name}) for r in self.runners if r.owner]

    async def health_check(self) -> str:
        """Every runner's state (see :meth:`ProjectionRunner.health_check`).

        Raises:
            RuntimeError: a runner is not running; the message names each one and why.
        """
        results = await asyncio.gather(*(r.health_check() for r in self.runners), return_exceptions=True)
        failed = [str(r) for r in results if isinstance(r, BaseException)]
        if failed:
            raise RuntimeError("; ".join(failed))
        return "; ".join(str(r) for r in results)

    async def aclose(self) -> None:
        """Stop every runner (each finishes the event in hand and commits). Idempotent."""
        await asyncio.gather(*(r.stop() for r in self.runners))

    def __repr__(self) -> str:
        return f"Projections({', '.join(r.name for r in self.runners)})"
