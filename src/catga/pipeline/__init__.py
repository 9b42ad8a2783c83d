"""The mediator's pipeline: behaviors that run around every handler.

:func:`default_pipeline` (what ``catga.App()`` uses) is, outermost first::

    logging → validation → idempotency → retry → handler

When you add the others, the documented order is (see ``docs/pipeline.md``)::

    logging → (tracing) → validation → idempotency → retry → timeout → caching → (inbox, outbox) → handler

Build one with :class:`Pipeline` or a plain list; add your own ``async (message, context, call_next)``
functions anywhere in it. A :class:`Pipeline` keeps the order it is given.
"""

from typing import TYPE_CHECKING

from catga.pipeline.base import Behavior, BehaviorFn, BehaviorLike, Next, Pipeline, compose
from catga.pipeline.caching import CachingBehavior, cached
from catga.pipeline.idempotency import IdempotencyBehavior
from catga.pipeline.logging import LoggingBehavior
from catga.pipeline.retry import RetryBehavior
from catga.pipeline.timeout import TimeoutBehavior
from catga.pipeline.validation import ValidationBehavior, Validator

if TYPE_CHECKING:
    from catga.protocols import IdempotencyStore

__all__ = (
    "Behavior",
    "BehaviorFn",
    "BehaviorLike",
    "CachingBehavior",
    "IdempotencyBehavior",
    "LoggingBehavior",
    "Next",
    "Pipeline",
    "RetryBehavior",
    "TimeoutBehavior",
    "ValidationBehavior",
    "Validator",
    "cached",
    "compose",
    "default_pipeline",
)


def default_pipeline(
    idempotency_store: "IdempotencyStore", *, unit_of_work: BehaviorLike | None = None
) -> Pipeline:
    """The App's default pipeline: logging → validation → idempotency → retry.

    With a ``unit_of_work`` behavior (``App(unit_of_work=...)``): logging → validation → retry → unit
    of work → idempotency, so the idempotency record commits in the handler's transaction and each
    retry is a fresh transaction.

    Args:
        idempotency_store: where idempotency records go (``catga.App`` passes its
            ``idempotency_store``; for a bare mediator, e.g. ``catga.memory.MemoryIdempotencyStore()``).
        unit_of_work: the behavior that runs a handler in a transaction (e.g.
            ``PostgresUnitOfWork.behavior()``), or None.
    """
    if unit_of_work is not None:
        return Pipeline(
            [
                LoggingBehavior(),
                ValidationBehavior(),
                RetryBehavior(),
                unit_of_work,
                IdempotencyBehavior(idempotency_store),
            ]
        )
    return Pipeline(
        [LoggingBehavior(), ValidationBehavior(), IdempotencyBehavior(idempotency_store), RetryBehavior()]
    )
