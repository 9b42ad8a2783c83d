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


def default_pipeline(idempotency_store: "IdempotencyStore") -> Pipeline:
    """The App's default pipeline: logging → validation → idempotency → retry.

    Args:
        idempotency_store: where idempotency records go (``catga.App`` passes its
            ``idempotency_store``; for a bare mediator, e.g. ``catga.memory.MemoryIdempotencyStore()``).
    """
    return Pipeline(
        [LoggingBehavior(), ValidationBehavior(), IdempotencyBehavior(idempotency_store), RetryBehavior()]
    )
