"""How a handler is called: its calling convention, its terminal, and the one generic call.

* :func:`terminal_of` builds the innermost callable of a request type's chain: the handler's first
  attempt written out, with the built-in behaviors that sit right around the handler (the retry loop,
  one synchronous guard) *fused* in rather than each adding a coroutine layer; a failed attempt goes
  to ``recover`` (error hooks, retries, the guard's ``leave``).
* :func:`call_handler` is the handler-call switch for everything off the hot path (retries, event
  fan-out under behaviors or concurrent, handlers made by a factory). The hot paths —
  :meth:`Mediator.send <catga.mediator.Mediator.send>`, :meth:`Mediator.publish
  <catga.mediator.Mediator.publish>` and the terminal's first attempt — inline their own copy: a
  coroutine frame per message less (see ``docs/benchmarks.md``, *Design figures*).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from catga.context import Context
from catga.handlers import Registration
from catga.pipeline._hooks import Direct, Guard, GuardHooks, RetryPolicy, set_direct, set_fuse
from catga.pipeline.base import Next
from catga.result import _SUCCESS, Result

__all__ = ("Failed", "call_handler", "terminal_of")

#: How a handler is called: ``fn(message)``, ``fn(message, ctx)``, or ``handle`` on an instance made
#: by its factory.
_NO_CTX, _WITH_CTX, _INSTANCE = 0, 1, 2

Failed = Callable[[Any, Context, Exception, "Registration | None", Any], Awaitable[Result[Any]]]
"""The mediator's safe-handler path: ``failed(message, ctx, exc, registration, instance) -> Result``."""


async def call_handler(
    failed: Failed, reg: Registration, mode: int, message: Any, ctx: Context
) -> Result[Any]:
    """Run ``reg``'s handler once by its calling convention ``mode``; its Result, failures included.

    The one copy of the handler-call switch off the hot path (retries, event fan-out under behaviors
    or concurrent, handlers with a factory): the mediator's ``send``, ``publish`` and terminal inline
    their own. An exception becomes ``failed(message, ctx, exc, reg, instance)``'s Result.
    """
    instance = None
    try:
        if mode == _WITH_CTX:
            value = await reg.target(message, ctx)
        elif mode == _NO_CTX:
            value = await reg.target(message)
        else:
            make = reg.factory
            instance = make(ctx) if reg.factory_takes_context else make()  # type: ignore[misc]
            handle = instance.handle
            value = await (handle(message, ctx) if reg.takes_context else handle(message))
    except Exception as exc:
        return await failed(message, ctx, exc, reg, instance)
    return _SUCCESS if value is None else Result(True, value)


def terminal_of(
    failed: Failed, reg: Registration, retry: RetryPolicy | None = None, guard: Guard | None = None
) -> Next:
    """The innermost callable of ``reg``'s chain: run the handler, turn exceptions into Results
    (through ``failed``, the mediator's safe-handler path).

    Built-in behaviors that sit right around the handler may be *fused* into it instead of adding
    a coroutine layer each (same semantics, measured in ``docs/benchmarks.md``): the retry loop
    (``retry``) and one synchronous :class:`Guard` outside it (``guard``: the idempotency behavior
    on the in-memory store). A behavior fuses itself through :func:`catga.pipeline._hooks.fuse`.

    The first attempt is written out in ``terminal``; everything after a failure (error hooks,
    retries, then the guard's ``leave``) is in ``recover``, so the common path stays short. A
    function handler's terminal is also a :class:`~catga.pipeline._hooks.DirectCallable`:
    :meth:`Mediator.send <catga.mediator.Mediator.send>` then runs that first attempt in its own
    frame, with no coroutine for the terminal.
    """
    fn, takes_ctx, make = reg.target, reg.takes_context, reg.factory
    mode = _INSTANCE if make is not None else _WITH_CTX if takes_ctx else _NO_CTX
    make_takes_ctx = reg.factory_takes_context
    max_attempts = 1 if retry is None else retry.max_attempts
    sleep = None if retry is None else retry.sleep
    delay = None if retry is None else retry.delay
    hooks = None if guard is None else GuardHooks(guard.enter, guard.leave, guard.abort)
    enter, leave, abort = (None, None, None) if hooks is None else hooks

    async def recover(message: Any, ctx: Context, exc: Exception, instance: Any) -> Result[Any]:
        """After the first attempt raised ``exc``: failure hooks, retries, then ``leave``."""
        attempt = 1
        try:
            result = await failed(message, ctx, exc, reg, instance)
            while attempt < max_attempts and not result.ok and result.retryable:
                await sleep(delay(attempt))  # type: ignore[misc]
                attempt += 1
                result = await call_handler(failed, reg, mode, message, ctx)
        except BaseException:
            if abort is not None:
                abort(message, ctx)
            raise
        if leave is not None:
            leave(message, ctx, result)
        return result

    async def terminal(message: Any, ctx: Context) -> Result[Any]:
        if enter is not None:
            early = enter(message, ctx)
            if early is not None:
                return early
        instance = None
        try:
            if mode == _WITH_CTX:
                value = await fn(message, ctx)
            elif mode == _NO_CTX:
                value = await fn(message)
            else:
                instance = make(ctx) if make_takes_ctx else make()  # type: ignore[misc]
                handle = instance.handle
                value = await (handle(message, ctx) if takes_ctx else handle(message))
        except Exception as exc:
            return await recover(message, ctx, exc, instance)
        except BaseException:
            if abort is not None:
                abort(message, ctx)
            raise
        result = _SUCCESS if value is None else Result(True, value)
        if leave is not None:
            leave(message, ctx, result)
        return result

    def fuse(*, retry: RetryPolicy | None = None, guard: Guard | None = None) -> Next | None:
        # Retry must stay innermost, and there is room for one guard.
        if terminal_guard is not None or (retry is not None and terminal_retry is not None):
            return None
        return terminal_of(failed, reg, retry or terminal_retry, guard)

    terminal_retry, terminal_guard = retry, guard
    set_fuse(terminal, fuse)
    if mode != _INSTANCE:
        set_direct(terminal, Direct(fn, takes_ctx, hooks, recover))
    return terminal
