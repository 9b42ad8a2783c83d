"""Event fan-out: running the handlers of one published event, each isolated from the others.

In turn (the default: each handler awaited after the previous one, no task created) or concurrently
(``asyncio.gather``, one task per handler). Either way a failing handler becomes a failed Result of its
own (through the mediator's safe-handler path) and the others still run; the publish's Result lists every
failure as a :class:`HandlerFailure`. :meth:`catga.mediator.Mediator.publish` inlines the in-turn loop
when no behavior applies.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from catga.handlers import HandlerInfo, Registration
from catga.pipeline.base import Next
from catga.result import _SUCCESS, Result

if TYPE_CHECKING:
    from catga.context import Context
    from catga.mediator import Mediator

__all__ = ("HandlerFailure", "call_isolated", "gather", "in_turn", "publish_failure")

#: How a handler is called: ``fn(event)``, ``fn(event, ctx)``, or a terminal returning a Result.
_NO_CTX, _WITH_CTX, _INSTANCE = 0, 1, 2
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


async def call_isolated(
    mediator: Mediator, reg: Registration, fn: Callable[..., Any], mode: int, event: Any, ctx: Context
) -> Result[Any] | None:
    """Run one event handler; None on success, else its failed Result."""
    try:
        if mode == _WITH_CTX:
            await fn(event, ctx)
        elif mode == _NO_CTX:
            await fn(event)
        else:
            result: Result[Any] = await fn(event, ctx)
            return None if result.ok else result
        return None
    except Exception as exc:
        return await mediator._failed(event, ctx, exc, reg, None)


def in_turn(mediator: Mediator, info: HandlerInfo, handlers: _Handlers) -> Next:
    async def in_turn(event: Any, ctx: Context) -> Result[Any]:
        failed: list[tuple[Registration, Result[Any]]] | None = None
        for reg, fn, mode in handlers:
            try:
                if mode == _WITH_CTX:
                    await fn(event, ctx)
                elif mode == _NO_CTX:
                    await fn(event)
                else:
                    result = await fn(event, ctx)
                    if not result.ok:
                        failed = [*(failed or ()), (reg, result)]
            except Exception as exc:
                failed = [*(failed or ()), (reg, await mediator._failed(event, ctx, exc, reg, None))]
        return _SUCCESS if failed is None else publish_failure(info, ctx, failed)

    return in_turn


def gather(mediator: Mediator, info: HandlerInfo, handlers: _Handlers) -> Next:
    async def gather(event: Any, ctx: Context) -> Result[Any]:
        outcomes = await asyncio.gather(
            *[call_isolated(mediator, reg, fn, mode, event, ctx) for reg, fn, mode in handlers]
        )
        failed = [(h[0], r) for h, r in zip(handlers, outcomes, strict=True) if r is not None]
        return _SUCCESS if not failed else publish_failure(info, ctx, failed)

    return gather
