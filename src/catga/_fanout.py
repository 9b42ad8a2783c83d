"""Event fan-out: running the handlers of one published event, each isolated from the others.

In turn (the default: each handler awaited after the previous one, no task created) or concurrently
(``asyncio.gather``, one task per handler). Either way a failing handler becomes a failed Result of its
own (through the mediator's safe-handler path) and the others still run; the publish's Result lists every
failure as a :class:`HandlerFailure`. :meth:`catga.mediator.Mediator.publish` inlines the in-turn loop
when no behavior applies; everything else calls handlers through
:func:`catga._terminal.call_handler`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from catga._terminal import call_handler
from catga.handlers import HandlerInfo, Registration
from catga.pipeline.base import Next
from catga.result import _SUCCESS, Result

if TYPE_CHECKING:
    from catga.context import Context
    from catga.mediator import Mediator

__all__ = ("HandlerFailure", "gather", "in_turn", "publish_failure")

#: An event's handlers: (registration, its target, calling convention).
_Handlers = tuple[tuple[Registration, Callable[..., Any], int], ...]


class HandlerFailure(NamedTuple):
    """One event handler that failed during a publish.

    Attributes:
        handler: the handler's name.
        code: the failure's error code.
        error: its message.
        exception: the exception raised by the handler.
    """

    handler: str
    code: str | None
    error: str | None
    exception: BaseException | None


def publish_failure(
    info: HandlerInfo, ctx: Context, failed: list[tuple[Registration, Result[Any]]]
) -> Result[None]:
    """The failed Result of a publish: the first failure's code and exception, every failure listed."""
    details = tuple(HandlerFailure(reg.name, r.code, r.error, r.exception) for reg, r in failed)
    listing = "; ".join(f"{d.handler}: [{d.code}] {d.error}" for d in details)
    first = failed[0][1]
    total = len(info.registrations)
    return Result(
        False,
        None,
        f"{len(failed)} of {total} handlers of {info.name} {ctx.message_id} failed: {listing}",
        first.code,
        first.exception,
        {"failures": details},
    )


def in_turn(mediator: Mediator, info: HandlerInfo, handlers: _Handlers) -> Next:
    """Each handler awaited after the previous one; a failure does not stop the others."""
    failed = mediator._failed

    async def in_turn(event: Any, ctx: Context) -> Result[Any]:
        failures: list[tuple[Registration, Result[Any]]] | None = None
        for reg, _, mode in handlers:
            result = await call_handler(failed, reg, mode, event, ctx)
            if not result.ok:
                failures = [*(failures or ()), (reg, result)]
        return _SUCCESS if failures is None else publish_failure(info, ctx, failures)

    return in_turn


def gather(mediator: Mediator, info: HandlerInfo, handlers: _Handlers) -> Next:
    """The handlers run concurrently (one task each); a failure does not stop the others."""
    failed = mediator._failed

    async def gather(event: Any, ctx: Context) -> Result[Any]:
        results = await asyncio.gather(
            *[call_handler(failed, reg, mode, event, ctx) for reg, _, mode in handlers]
        )
        failures = [(h[0], r) for h, r in zip(handlers, results, strict=True) if not r.ok]
        return _SUCCESS if not failures else publish_failure(info, ctx, failures)

    return gather
