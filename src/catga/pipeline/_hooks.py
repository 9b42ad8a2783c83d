"""The hidden hooks between the mediator and its built-in behaviors, declared.

Three function attributes let the mediator and the built-in behaviors shorten the chain without a
coroutine layer per behavior; each is declared here as a :class:`~typing.Protocol` and set or read
only through the helpers below:

* ``__catga_fuse__`` (:class:`Fusable`) — set by the mediator on a handler's terminal: a behavior
  sitting right around the handler (retry, idempotency on the in-memory store) asks the terminal for
  a copy with its work *fused* in (a :class:`RetryPolicy` loop, a synchronous :class:`Guard`).
* ``__catga_bypass__`` (:class:`Bypassable`) — set by the logging behavior: while
  ``probe(key) is False`` (a C-level dict lookup, no frame) the layer would only call ``inner``, so
  the mediator may call ``inner`` itself.
* ``__catga_direct__`` (:class:`DirectCallable`) — set by the mediator on a function handler's
  terminal: what :meth:`Mediator.send <catga.mediator.Mediator.send>` needs to run the first attempt
  in its own frame (:class:`Direct`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol, cast

from catga.context import Context
from catga.pipeline.base import Next
from catga.result import Result

__all__ = (
    "Bypass",
    "Bypassable",
    "Direct",
    "DirectCallable",
    "Fusable",
    "FuseHook",
    "Guard",
    "GuardHooks",
    "RetryPolicy",
    "bypass_of",
    "direct_of",
    "fuse",
    "set_bypass",
    "set_direct",
    "set_fuse",
)


class RetryPolicy(Protocol):
    """What the mediator needs to fuse a retry loop into a handler's terminal."""

    max_attempts: int

    def delay(self, attempt: int) -> float: ...
    def sleep(self, seconds: float) -> Awaitable[Any]: ...


class Guard(Protocol):
    """Synchronous hooks around a handler call, fused into its terminal (no coroutine of their own).

    ``enter`` returns a Result to answer without running the handler, or None to proceed;
    ``leave`` sees the final Result (after retries); ``abort`` runs when an exception or a
    cancellation escapes instead.
    """

    def enter(self, message: Any, ctx: Context) -> Result[Any] | None: ...
    def leave(self, message: Any, ctx: Context, result: Result[Any]) -> None: ...
    def abort(self, message: Any, ctx: Context) -> None: ...


class GuardHooks(NamedTuple):
    """A :class:`Guard`'s bound methods, looked up once."""

    enter: Callable[[Any, Context], Result[Any] | None]
    leave: Callable[[Any, Context, Result[Any]], None]
    abort: Callable[[Any, Context], None]


class FuseHook(Protocol):
    """``__catga_fuse__(retry=..., guard=...)``: the terminal with that work fused in, or None (no room)."""

    def __call__(self, *, retry: RetryPolicy | None = None, guard: Guard | None = None) -> Next | None: ...


class Fusable(Protocol):
    """A handler terminal that built-in behaviors may fuse into."""

    __catga_fuse__: FuseHook

    def __call__(self, message: Any, ctx: Context, /) -> Awaitable[Result[Any]]: ...


class Bypass(NamedTuple):
    """A layer that may be skipped: while ``probe(key) is False`` it would only call ``inner``.

    Anything else from the probe (None, True) means: run the layer, which checks for itself.
    """

    probe: Callable[[Any], Any] | None
    key: Any
    inner: Next


class Bypassable(Protocol):
    """A behavior layer that advertises when it has nothing to do."""

    __catga_bypass__: Bypass

    def __call__(self, message: Any, ctx: Context, /) -> Awaitable[Result[Any]]: ...


Recover = Callable[[Any, Context, Exception, Any], Awaitable[Result[Any]]]
"""``recover(message, ctx, exc, instance)``: everything after a failed first attempt (hooks, retries)."""


class Direct(NamedTuple):
    """What a function handler's terminal lets the mediator run inline."""

    fn: Callable[..., Any]
    """The handler function."""
    takes_ctx: bool
    """Call it as ``fn(message, ctx)`` (else ``fn(message)``)."""
    guard: GuardHooks | None
    """The fused guard's hooks, if any."""
    recover: Recover
    """The terminal's path after the first attempt raised."""


class DirectCallable(Protocol):
    """A terminal whose first attempt the mediator may run in its own frame."""

    __catga_direct__: Direct

    def __call__(self, message: Any, ctx: Context, /) -> Awaitable[Result[Any]]: ...


def fuse(call_next: Next, *, retry: RetryPolicy | None = None, guard: Guard | None = None) -> Next | None:
    """``call_next`` with ``retry`` or ``guard`` fused in, or None when it is not a :class:`Fusable`
    terminal (or has no room left): then the behavior adds its own layer."""
    hook: FuseHook | None = getattr(call_next, "__catga_fuse__", None)
    return None if hook is None else hook(retry=retry, guard=guard)


def set_fuse(terminal: Next, hook: FuseHook) -> Fusable:
    """Make ``terminal`` :class:`Fusable` through ``hook``."""
    fusable = cast(Fusable, terminal)
    fusable.__catga_fuse__ = hook
    return fusable


def bypass_of(chain: Next) -> Bypass:
    """``chain``'s :class:`Bypass`, or ``Bypass(None, None, chain)`` when it has none."""
    bypass: Bypass | None = getattr(chain, "__catga_bypass__", None)
    return Bypass(None, None, chain) if bypass is None else bypass


def set_bypass(layer: Next, bypass: Bypass) -> Bypassable:
    """Make ``layer`` :class:`Bypassable`."""
    bypassable = cast(Bypassable, layer)
    bypassable.__catga_bypass__ = bypass
    return bypassable


def direct_of(chain: Next) -> Direct | None:
    """``chain``'s :class:`Direct`, or None."""
    direct: Direct | None = getattr(chain, "__catga_direct__", None)
    return direct


def set_direct(terminal: Next, direct: Direct) -> DirectCallable:
    """Make ``terminal`` a :class:`DirectCallable`."""
    callable_ = cast(DirectCallable, terminal)
    callable_.__catga_direct__ = direct
    return callable_
