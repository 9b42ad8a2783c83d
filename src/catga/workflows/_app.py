"""How an :class:`~catga.App` runs workflows: its engine, the engine's URL options, and the
scheduler timer that wakes sleeping workflows."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode

import msgspec

from catga._urls import redact_url
from catga.errors import ConfigurationError
from catga.messages import Command, message_name
from catga.workflows.engine import WorkflowEngine
from catga.workflows.store import WorkflowStore

if TYPE_CHECKING:
    from catga.app import App

__all__ = ("ENGINE_OPTIONS", "WakeWorkflow", "app_engine", "engine_options")

#: The engine settings a ``workflows=`` URL may carry (``?lease=10&poll_interval=0.5``), with the
#: type and the smallest value each takes (the minimum itself excluded for the floats).
ENGINE_OPTIONS: dict[str, tuple[type, float]] = {
    "lease": (float, 0.0),
    "poll_interval": (float, 0.0),
    "step_retries": (int, 0),
    "retry_backoff": (float, 0.0),
}


_KINDS = {float: "a number of seconds", int: "a whole number"}


@message_name("catga.WakeWorkflow")
class WakeWorkflow(msgspec.Struct, Command[None], frozen=True):
    """The scheduled command that wakes a sleeping workflow (its ``wf.sleep`` is over)."""

    workflow_id: str


def engine_options(url: str) -> tuple[str, dict[str, Any]]:
    """Split the engine's settings (:data:`ENGINE_OPTIONS`) off a ``workflows=`` URL.

    Returns:
        the URL without them (for the store) and the settings, e.g.
        ``("redis://h:6379/0?prefix=p", {"lease": 10.0})``.

    Raises:
        ConfigurationError: a setting that is not a number, or out of range (lease and poll_interval
            > 0 s, step_retries >= 0, retry_backoff >= 0 s).
    """
    base, sep, query = url.partition("?")
    if not sep:
        return url, {}
    kept: list[tuple[str, str]] = []
    found: dict[str, Any] = {}
    for key, raw in parse_qsl(query, keep_blank_values=True):
        spec = ENGINE_OPTIONS.get(key)
        if spec is None:
            kept.append((key, raw))
            continue
        kind, low = spec
        try:
            value = kind(raw)
        except ValueError:
            value = None
        strict = key in ("lease", "poll_interval")
        if value is None or not math.isfinite(value) or not (value > low if strict else value >= low):
            bound = f"> {low:g}" if strict else f">= {low:g}"
            raise ConfigurationError(
                f"workflows URL {redact_url(url)!r}: {key} must be {_KINDS[kind]} {bound}, got {raw!r}"
            )
        found[key] = value
    return base + (f"?{urlencode(kept)}" if kept else ""), found


def app_engine(app: App, store: WorkflowStore, options: dict[str, Any] | None = None) -> WorkflowEngine:
    """The engine of ``app``: runs on ``store`` with ``options`` (see :func:`engine_options`), sends
    through the app's mediator, and wakes sleepers with a :class:`WakeWorkflow` on the app's
    scheduler."""

    async def timer(workflow_id: str, wake_at: float, timer_id: str) -> None:
        await app.schedule(WakeWorkflow(workflow_id), at=wake_at, id=timer_id)

    engine = WorkflowEngine(store, app.mediator, timer=timer, registry=app._registry(), **(options or {}))

    async def wake(command: WakeWorkflow) -> None:
        engine.resume(command.workflow_id)

    app.mediator.register(wake, WakeWorkflow)
    return engine
