"""How an :class:`~catga.App` runs workflows: its engine, and the scheduler timer that wakes them."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from catga.messages import Command, message_name
from catga.workflows.engine import WorkflowEngine
from catga.workflows.store import WorkflowStore

if TYPE_CHECKING:
    from catga.app import App

__all__ = ("WakeWorkflow", "app_engine")


@message_name("catga.WakeWorkflow")
class WakeWorkflow(msgspec.Struct, Command[None], frozen=True):
    """The scheduled command that wakes a sleeping workflow (its ``wf.sleep`` is over)."""

    workflow_id: str


def app_engine(app: App, store: WorkflowStore) -> WorkflowEngine:
    """The engine of ``app``: runs on ``store``, sends through the app's mediator, and wakes
    sleepers with a :class:`WakeWorkflow` on the app's scheduler."""

    async def timer(workflow_id: str, wake_at: float, timer_id: str) -> None:
        await app.schedule(WakeWorkflow(workflow_id), at=wake_at, id=timer_id)

    engine = WorkflowEngine(store, app.mediator, timer=timer, registry=app._registry())

    async def wake(command: WakeWorkflow) -> None:
        engine.resume(command.workflow_id)

    app.mediator.register(wake, WakeWorkflow)
    return engine
