"""Handler registration: inspect a handler once, mark handlers for scanning, find them in a package.

A handler is either

* an ``async def`` function whose first parameter is annotated with the message type, optionally
  followed by a :class:`~catga.context.Context` parameter::

      async def place_order(cmd: PlaceOrder, ctx: Context) -> str: ...

* a class with such an ``async def handle(self, msg, ctx?)`` method. By default a new instance is
  made per message (``cls()``); ``lifetime="singleton"`` makes one instance; ``factory=`` gives a
  callable (taking nothing, or the message's :class:`~catga.context.Context`) that builds the
  instance per message, e.g. from a DI container scope kept in ``ctx.items``;

* an instance of such a class (a singleton).

Everything is resolved here, once: message type (from the annotation via ``typing.get_type_hints``),
return type, whether the context is taken, the instance factory. The mediator's hot path only calls.

Compensation: a class handler may define ``async def compensate(self, msg, ctx, exc)``; a function
handler may be registered with ``compensate=``. It runs when the handler raised (business or unexpected
error), before the failed result is returned.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal, TypeVar

from catga.errors import ConfigurationError
from catga.messages import Event, Query

__all__ = (
    "Compensate",
    "HandlerInfo",
    "Lifetime",
    "Registration",
    "find_marked",
    "handler",
    "inspect_handler",
)

H = TypeVar("H")
Lifetime = Literal["transient", "singleton"]
Compensate = Callable[[Any, Any, BaseException], Awaitable[None]]
_MARK = "__catga_handler__"


@dataclass(frozen=True, slots=True)
class Registration:
    """One registered handler, fully resolved.

    Attributes:
        message_type: the message class it handles.
        target: the function, bound method or class registered.
        name: a readable name for logs (module-qualified).
        takes_context: whether the callable takes the context as second argument.
        return_type: the resolved return annotation (``typing.Any`` when missing).
        factory: for per-message class handlers, builds the instance; None for functions/singletons.
        factory_takes_context: whether ``factory`` takes the context.
        compensate: a hook run when a function handler raises (class handlers use their method).
    """

    message_type: type
    target: Any
    name: str
    takes_context: bool
    return_type: Any
    factory: Callable[..., Any] | None = None
    factory_takes_context: bool = False
    compensate: Compensate | None = None


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """What a behavior knows about the handler(s) of one message type, when the chain is composed.

    Attributes:
        message_type: the message class dispatched.
        registrations: its handlers (one for requests, any number for events).
        return_type: the handler's return type (``None`` for events, ``typing.Any`` when unknown).
    """

    message_type: type
    registrations: tuple[Registration, ...]
    return_type: Any

    @property
    def is_event(self) -> bool:
        """True for events (fan-out, no response)."""
        return issubclass(self.message_type, Event)

    @property
    def is_query(self) -> bool:
        """True for queries."""
        return issubclass(self.message_type, Query)

    @property
    def name(self) -> str:
        """The message type's qualified name, for logs."""
        return self.message_type.__qualname__


def _describe(obj: Any) -> str:
    mod = getattr(obj, "__module__", None) or "?"
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{mod}.{qual}"


def _positional_count(fn: Callable[..., Any]) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # builtins without a signature
        return 0
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(1 for p in sig.parameters.values() if p.kind in kinds)


def _hints(fn: Callable[..., Any], where: str, explicit: type | None) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn)
    except Exception as exc:  # NameError for unresolvable forward references, TypeError...
        if explicit is not None:
            return {}
        raise ConfigurationError(
            f"cannot resolve the type annotations of {where}: {exc}; define the message types at "
            "module level or pass message_type= explicitly"
        ) from exc


def _inspect_callable(
    fn: Callable[..., Any], where: str, explicit: type | None, skip_self: bool
) -> tuple[type, bool, Any]:
    """Return (message_type, takes_context, return_type) of an async handler callable."""
    if not inspect.iscoroutinefunction(fn):
        raise ConfigurationError(
            f"handler {where} must be an 'async def' function (or a class with 'async def handle')"
        )
    params = [
        p
        for p in inspect.signature(fn).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    if skip_self and params and not inspect.ismethod(fn):
        params = params[1:]
    if not 1 <= len(params) <= 2:
        raise ConfigurationError(
            f"handler {where} must take (message) or (message, context), got {len(params)} parameters"
        )
    hints = _hints(fn, where, explicit)
    message_type = explicit if explicit is not None else hints.get(params[0].name)
    if not isinstance(message_type, type):
        raise ConfigurationError(
            f"handler {where}: annotate its first parameter with the message class "
            f"(got {message_type!r}) or pass message_type="
        )
    return message_type, len(params) == 2, hints.get("return", Any)


def inspect_handler(
    target: Any,
    message_type: type | None = None,
    *,
    factory: Callable[..., Any] | None = None,
    lifetime: Lifetime = "transient",
    compensate: Compensate | None = None,
) -> Registration:
    """Resolve a function, class or instance handler into a :class:`Registration`.

    Raises:
        ConfigurationError: the handler is not async, has the wrong arity, has no usable message
            type annotation, or the options do not fit the kind of handler.
    """
    if lifetime not in ("transient", "singleton"):
        raise ConfigurationError(f"lifetime must be 'transient' or 'singleton', got {lifetime!r}")
    where = _describe(target)
    if inspect.isclass(target):
        handle = getattr(target, "handle", None)
        if handle is None:
            raise ConfigurationError(f"handler class {where} has no 'async def handle(self, msg)' method")
        mt, takes_ctx, ret = _inspect_callable(handle, f"{where}.handle", message_type, skip_self=True)
        if lifetime == "singleton":
            if factory is not None:
                raise ConfigurationError(f"{where}: pass either factory= or lifetime='singleton', not both")
            return Registration(mt, target, where, takes_ctx, ret, _Singleton(target), False, compensate)
        make: Callable[..., Any] = target if factory is None else factory
        return Registration(mt, target, where, takes_ctx, ret, make, _positional_count(make) >= 1, compensate)
    if factory is not None or lifetime != "transient":
        raise ConfigurationError(f"{where}: factory= and lifetime= apply to handler classes only")
    if inspect.isfunction(target) or inspect.ismethod(target):
        mt, takes_ctx, ret = _inspect_callable(target, where, message_type, skip_self=False)
        return Registration(mt, target, where, takes_ctx, ret, None, False, compensate)
    handle = getattr(target, "handle", None)
    if handle is not None and inspect.ismethod(handle):  # an instance: a singleton
        mt, takes_ctx, ret = _inspect_callable(handle, f"{where}.handle", message_type, skip_self=False)
        hook = compensate if compensate is not None else getattr(target, "compensate", None)
        return Registration(mt, handle, where, takes_ctx, ret, None, False, hook)
    raise ConfigurationError(
        f"cannot register {target!r} as a handler: expected an async function, a class with "
        "'async def handle', or an instance of one"
    )


class _Singleton:
    """A zero-argument factory that builds one instance on first call and returns it ever after."""

    __slots__ = ("_cls", "_instance")

    def __init__(self, cls: type) -> None:
        self._cls = cls
        self._instance: Any = None

    def __call__(self) -> Any:
        inst = self._instance
        if inst is None:
            inst = self._instance = self._cls()
        return inst


def handler(
    target: H | None = None,
    /,
    *,
    message_type: type | None = None,
    factory: Callable[..., Any] | None = None,
    lifetime: Lifetime = "transient",
    compensate: Compensate | None = None,
) -> Any:
    """Mark a function or class as a handler for :meth:`Mediator.scan <catga.mediator.Mediator.scan>`.

    Works bare (``@handler``) or with options (``@handler(lifetime="singleton")``). The object is
    returned unchanged; nothing is registered until a mediator scans its module.

    Example:
        >>> from catga.handlers import handler
        >>> @handler
        ... async def on_placed(event: "OrderPlaced") -> None: ...
    """
    options = {
        "message_type": message_type,
        "factory": factory,
        "lifetime": lifetime,
        "compensate": compensate,
    }

    def mark(obj: H) -> H:
        setattr(obj, _MARK, options)
        return obj

    return mark if target is None else mark(target)


def _walk(package: str | ModuleType) -> Iterator[ModuleType]:
    module = importlib.import_module(package) if isinstance(package, str) else package
    yield module
    path = getattr(module, "__path__", None)
    if path is None:
        return
    for info in pkgutil.walk_packages(path, prefix=module.__name__ + "."):
        yield importlib.import_module(info.name)


def find_marked(package: str | ModuleType) -> list[tuple[Any, dict[str, Any]]]:
    """Import ``package`` and all its submodules; return each marked handler once, with its options.

    Only objects defined in the scanned modules are returned (a handler imported into another module
    is found once, in its own module).

    Raises:
        ModuleNotFoundError: the package does not exist.
    """
    found: list[tuple[Any, dict[str, Any]]] = []
    seen: set[int] = set()
    for module in _walk(package):
        for obj in list(vars(module).values()):
            options = obj.__dict__.get(_MARK) if hasattr(obj, "__dict__") else None
            if options is None or getattr(obj, "__module__", None) != module.__name__:
                continue
            if id(obj) not in seen:
                seen.add(id(obj))
                found.append((obj, options))
    return found
