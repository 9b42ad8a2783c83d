"""Durable workflows: plain async Python whose steps are recorded and replayed.

::

    app = catga.App()

    @app.workflow
    async def place_order(wf: Workflow, order: Order) -> str:
        payment = await wf.send(ChargeCard(order.id, order.total), compensate=RefundCard(order.id))
        await wf.step(reserve_stock, order, compensate=release_stock)
        await wf.sleep(timedelta(hours=1))                 # no task runs while it sleeps
        a, b = await wf.all(wf.step(email, order), wf.step(invoice, order))
        return payment

    async with app:
        wid = await app.start_workflow("place_order", Order(...), id="order-o-1")   # idempotent by id
        state = await app.wait_workflow(wid)                                        # completed, ...

See ``docs/workflows.md``: the engine (:class:`WorkflowEngine`), the ``wf`` object
(:class:`Workflow`), the store protocol (:class:`WorkflowStore`) and the statuses.
"""

from catga.workflows._values import current_step_key, step_message_id
from catga.workflows.context import Workflow
from catga.workflows.engine import WorkflowEngine
from catga.workflows.store import (
    ACTIVE,
    CANCELLED,
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SLEEPING,
    STATUSES,
    HistoryEntry,
    WorkflowInstance,
    WorkflowStore,
)
from catga.workflows.waits import Expectation

__all__ = (
    "ACTIVE",
    "CANCELLED",
    "COMPENSATED",
    "COMPENSATING",
    "COMPLETED",
    "Expectation",
    "FAILED",
    "FINISHED",
    "PENDING",
    "RUNNING",
    "SLEEPING",
    "STATUSES",
    "HistoryEntry",
    "Workflow",
    "WorkflowEngine",
    "WorkflowInstance",
    "WorkflowStore",
    "current_step_key",
    "step_message_id",
)
