"""Behaviors and how a pipeline is composed.

A behavior runs around a handler: ``async def behavior(message, context, call_next) -> Result``. It
may inspect or change the message, short-circuit with its own :class:`~catga.result.Result`, or call
``await call_next(message, context)`` to run the rest of the pipeline and the handler.

The chain for a message type is composed **once**, the first time that type is dispatched, into
nested callables; the hot path is one dict lookup and plain calls. A behavior that subclasses
:class:`Behavior` may specialise itself per handler in :meth:`Behavior.wrap`, and skip itself
entirely (return ``call_next`` unchanged) when it has nothing to do for that type — e.g. validation
for a type without validators costs nothing at all.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeAlias

from catga.context import Context
from catga.errors import ConfigurationError
from catga.handlers import HandlerInfo
from catga.result import Result

__all__ = ("Behavior", "BehaviorFn", "BehaviorLike", "Next", "Pipeline", "compose")

Next: TypeAlias = Callable[[Any, Context], Awaitable[Result[Any]]]
"""The rest of the pipeline: ``await call_next(message, context)`` returns the handler's Result."""

BehaviorFn: TypeAlias = Callable[[Any, Context, Next], Awaitable[Result[Any]]]
"""A plain behavior function: ``async def behavior(message, context, call_next) -> Result``."""


class Behavior:
    """Base class for behaviors that specialise themselves per handler.

    Subclasses implement either:

    * ``async def __call__(self, message, context, call_next)`` — the simple form, or
    * :meth:`wrap` — called once per message type with its :class:`~catga.handlers.HandlerInfo`;
      returns the callable ``(message, context) -> Awaitable[Result]`` that runs in front of
      ``call_next``, or ``call_next`` itself to skip this behavior for that type.
    """

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Return the layer that runs this behavior in front of ``call_next`` for ``info``'s type."""
        if type(self).__call__ is Behavior.__call__:
            raise ConfigurationError(f"{type(self).__qualname__} must define __call__ or wrap()")
        return bind(self.__call__, call_next)

    async def __call__(self, message: Any, context: Context, call_next: Next) -> Result[Any]:
        """Run this behavior once (composing it ad hoc; the mediator uses :meth:`wrap` instead)."""
        if type(self).wrap is Behavior.wrap:
            raise ConfigurationError(f"{type(self).__qualname__} must define __call__ or wrap()")
        info = HandlerInfo(type(message), (), Any)
        return await self.wrap(info, call_next)(message, context)


BehaviorLike: TypeAlias = Behavior | BehaviorFn


def bind(behavior: BehaviorFn, call_next: Next) -> Next:
    """Close ``behavior`` over ``call_next``: one plain call per message, no extra coroutine."""

    def layer(message: Any, context: Context) -> Awaitable[Result[Any]]:
        return behavior(message, context, call_next)

    return layer


def compose(behaviors: Iterable[BehaviorLike], info: HandlerInfo, terminal: Next) -> Next:
    """Compose ``behaviors`` (outermost first) around ``terminal`` for one message type."""
    chain = terminal
    for b in reversed(tuple(behaviors)):
        chain = b.wrap(info, chain) if isinstance(b, Behavior) else bind(b, chain)
    return chain


class Pipeline:
    """An ordered list of behaviors, outermost first, with helpers to place new ones.

    Example:
        >>> from catga.pipeline import LoggingBehavior, RetryBehavior, Pipeline
        >>> p = Pipeline([LoggingBehavior()]).add(RetryBehavior(max_attempts=5))
    """

    def __init__(self, behaviors: Iterable[BehaviorLike] = ()) -> None:
        self._items: list[BehaviorLike] = []
        for b in behaviors:
            self.add(b)

    def add(self, behavior: BehaviorLike) -> Pipeline:
        """Append ``behavior`` (innermost so far: closest to the handler). Returns self."""
        self._items.append(_check(behavior))
        return self

    def insert(self, index: int, behavior: BehaviorLike) -> Pipeline:
        """Insert ``behavior`` at ``index`` (0 = outermost). Returns self."""
        self._items.insert(index, _check(behavior))
        return self

    def add_before(self, kind: type[Behavior], behavior: BehaviorLike) -> Pipeline:
        """Insert ``behavior`` just outside the first behavior of class ``kind`` (or append). Returns self."""
        for i, b in enumerate(self._items):
            if isinstance(b, kind):
                return self.insert(i, behavior)
        return self.add(behavior)

    def remove(self, kind: type[Behavior]) -> Pipeline:
        """Drop every behavior of class ``kind``. Returns self."""
        self._items = [b for b in self._items if not isinstance(b, kind)]
        return self

    def __iter__(self) -> Iterator[BehaviorLike]:
        return iter(tuple(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        names = ", ".join(type(b).__name__ if isinstance(b, Behavior) else repr(b) for b in self._items)
        return f"Pipeline([{names}])"


def _check(behavior: object) -> BehaviorLike:
    if isinstance(behavior, Behavior) or callable(behavior):
        return behavior
    raise ConfigurationError(
        f"{behavior!r} is not a behavior: pass an async (message, context, call_next) callable "
        "or a catga.pipeline.Behavior"
    )
