# Over 500 lines on purpose: send and publish each carry an inline copy of the chain's first step (one
# coroutine frame per message less; figures in docs/benchmarks.md), next to the registration and the
# safe-handler policy they use. The handler calls, fan-out and hooks live in catga._terminal,
# catga._fanout and catga.pipeline._hooks.
"""The in-process mediator: dispatches commands, queries and events to their handlers through a pipeline.

* ``send(command | query) -> Result[R]``: exactly one handler; never raises for handler failures (only
  ``CancelledError`` propagates). No handler → a failed Result with code ``handler_not_found``.
* ``publish(event) -> Result[None]``: every handler of the event's type (and of its base classes)
  runs, each isolated: one failing handler is logged with the message id and reported in the returned
  Result's ``metadata["failures"]`` (a tuple of :class:`HandlerFailure`), the others still run. No
  handler → success.
* ``send_batch`` / ``publish_batch`` / ``send_stream``: many messages, results in input order,
  at most ``max_concurrency`` in flight.

Event fan-out is sequential by default: each handler is awaited in turn, isolated by try/except, with no
task created, much cheaper than ``asyncio.gather`` (which creates one Task per handler); the trade-off
is that a handler that waits on I/O delays the next one. ``Mediator(concurrent_events=True)`` or
``publish(event, concurrent=True)`` runs the handlers concurrently with ``asyncio.gather`` instead.
Figures: ``docs/benchmarks.md`` (*mediator*, *Design figures*).

Safe handler semantics: a :class:`~catga.errors.HandlerError` raised by a handler becomes a failed
Result with its code and message; so does any other catga error (``unavailable``, ``timeout`` and
``too_large`` for a backend that is down, slow or refuses a message: catga's messages name what failed,
never internals). Backend errors are logged once per outage, then counted (see :mod:`catga._outage`);
other catga errors are logged with their traceback and the message id. Any other exception becomes an
``internal error`` Result that leaks no internals, logged with its traceback and the message id.
Before the Result is returned the handler's compensation hook runs (``compensate(msg, ctx, exc)``),
then :meth:`Mediator.on_business_error` or :meth:`Mediator.on_unexpected_error`, which may replace
the Result.

Dispatch is a dict lookup: each message type's chain (behaviors + handler) is composed on its first
dispatch and cached; behaviors cannot be added after that. When that chain is only a function handler
with fused behaviors (retry, in-memory idempotency) behind a quiet logging layer, as with ``App()``'s
default pipeline, ``send`` runs the handler call in its own frame (see :func:`catga._terminal.terminal_of`).
Not thread-safe: use one mediator per event loop, and register handlers before serving traffic.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from types import ModuleType
from typing import Any, Literal, TypeVar

from catga._fanout import HandlerFailure, _Handlers, gather, in_turn, publish_failure
from catga._outage import OutageLog
from catga._terminal import _INSTANCE, _NO_CTX, _WITH_CTX, call_handler, terminal_of
from catga.context import Context, _current
from catga.errors import (
    BackendError,
    CatgaError,
    ConfigurationError,
    DuplicateHandlerError,
    HandlerError,
    HandlerNotFoundError,
    PayloadTooLargeError,
)
from catga.handlers import Compensate, HandlerInfo, Lifetime, Registration, find_marked, inspect_handler
from catga.ids import new_id as _default_new_id
from catga.messages import Event, Metadata, Query, Request
from catga.pipeline._hooks import Guard, Recover, RetryPolicy, bypass_of, direct_of
from catga.pipeline.base import BehaviorLike, Next, Pipeline, compose
from catga.result import _SUCCESS, Result

__all__ = ("CURRENT", "ErrorHook", "Guard", "HandlerFailure", "Mediator", "RetryPolicy")

R = TypeVar("R")
T = TypeVar("T")
H = TypeVar("H")
ErrorHook = Callable[[Any, Context, BaseException], Awaitable["Result[Any] | None"]]
"""``async (message, context, exc) -> Result | None``: return a Result to replace the failed one."""

_log = logging.getLogger("catga.mediator")


class _Parent(enum.Enum):
    CURRENT = "the current handler's context"


#: ``send(parent=...)`` / ``publish(parent=...)`` default: the context of the handler running in this
#: task, if any (compared by identity: no call when a caller passes its own parent).
CURRENT: Literal[_Parent.CURRENT] = _Parent.CURRENT


class Mediator:
    """Routes messages to handlers through a pipeline of behaviors.

    Args:
        behaviors: behaviors, outermost first (a list or a :class:`~catga.pipeline.Pipeline`).
        pipeline: same as ``behaviors`` (use one of the two).
        id_factory: returns new message ids (default: the process Snowflake generator).
        concurrent_events: run the handlers of one event concurrently (``asyncio.gather``) instead
            of one after another.
        max_concurrency: default bound of in-flight messages for batches and streams.
        on_business_error: hook run after a handler raised a business error.
        on_unexpected_error: hook run after a handler (or behavior) raised an unexpected exception.

    Example:
        >>> mediator = Mediator()
        >>> @mediator.handler
        ... async def place(cmd: PlaceOrder, ctx: Context) -> str: ...
        >>> result = await mediator.send(PlaceOrder("c-1", 42))  # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        behaviors: Iterable[BehaviorLike] | None = None,
        pipeline: Iterable[BehaviorLike] | None = None,
        id_factory: Callable[[], int] | None = None,
        concurrent_events: bool = False,
        max_concurrency: int = 16,
        on_business_error: ErrorHook | None = None,
        on_unexpected_error: ErrorHook | None = None,
    ) -> None:
        if behaviors is not None and pipeline is not None:
            raise ConfigurationError("pass behaviors= or pipeline=, not both")
        if max_concurrency < 1:
            raise ConfigurationError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self._behaviors: list[BehaviorLike] = list(Pipeline(behaviors or pipeline or ()))
        self.new_id: Callable[[], int] = id_factory if id_factory is not None else _default_new_id
        self.concurrent_events = concurrent_events
        self.max_concurrency = max_concurrency
        self._business_hook = on_business_error
        self._unexpected_hook = on_unexpected_error
        self._requests: dict[type, Registration] = {}
        self._events: dict[type, list[Registration]] = {}
        self._request_chains: dict[type, _RequestRow] = {}
        self._event_chains: dict[type, _EventRow] = {}
        self._outages: dict[str, OutageLog] = {}  # by backend name: handler failures it caused
        self._frozen = False

    # -- registration -----------------------------------------------------------------------------

    def register(
        self,
        handler: H,
        message_type: type | None = None,
        *,
        factory: Callable[..., Any] | None = None,
        lifetime: Lifetime = "transient",
        compensate: Compensate | None = None,
    ) -> H:
        """Register a handler function, class or instance (see :mod:`catga.handlers`).

        Registering the same handler for the same type again is a no-op.

        Returns:
            ``handler`` unchanged.

        Raises:
            DuplicateHandlerError: the command/query type already has another handler.
            ConfigurationError: the handler cannot be inspected (not async, no annotation...).
        """
        reg = inspect_handler(
            handler, message_type, factory=factory, lifetime=lifetime, compensate=compensate
        )
        mt = reg.message_type
        if not issubclass(mt, (Request, Event)):
            raise ConfigurationError(
                f"handler {reg.name} handles {mt.__qualname__}, which is not a catga message: make "
                "it inherit catga.Command[R] or catga.Query[R] (one handler, returns R) or catga.Event "
                "(any number of handlers)"
            )
        if issubclass(mt, Event):
            regs = self._events.setdefault(mt, [])
            if any(r.target == reg.target for r in regs):
                return handler
            regs.append(reg)
        else:
            existing = self._requests.get(mt)
            if existing is not None:
                if existing.target == reg.target:
                    return handler
                raise DuplicateHandlerError(mt, existing.name, reg.name)
            self._requests[mt] = reg
        self._request_chains.clear()
        self._event_chains.clear()
        return handler

    def message_types(self) -> tuple[type, ...]:
        """Every message type with a registered handler (commands, queries and events)."""
        return (*self._requests, *self._events)

    def handler(
        self,
        target: Any = None,
        /,
        *,
        message_type: type | None = None,
        factory: Callable[..., Any] | None = None,
        lifetime: Lifetime = "transient",
        compensate: Compensate | None = None,
    ) -> Any:
        """Decorator form of :meth:`register`: ``@mediator.handler`` or ``@mediator.handler(...)``."""

        def apply(obj: H) -> H:
            return self.register(obj, message_type, factory=factory, lifetime=lifetime, compensate=compensate)

        return apply if target is None else apply(target)

    def scan(self, package: str | ModuleType) -> int:
        """Import ``package`` and its submodules and register every handler marked with
        :func:`catga.handlers.handler`. Call once at start-up.

        Returns:
            how many handlers were found.
        """
        found = find_marked(package)
        for obj, options in found:
            self.register(obj, **options)
        return len(found)

    def handlers_for(self, message_type: type) -> tuple[Registration, ...]:
        """The registrations that would handle ``message_type`` (base classes included for events)."""
        if issubclass(message_type, Event):
            return tuple(r for k in message_type.__mro__ for r in self._events.get(k, ()))
        for klass in message_type.__mro__:
            reg = self._requests.get(klass)
            if reg is not None:
                return (reg,)
        return ()

    # -- behaviors --------------------------------------------------------------------------------

    @property
    def behaviors(self) -> tuple[BehaviorLike, ...]:
        """The behaviors, outermost first."""
        return tuple(self._behaviors)

    def add_behavior(self, behavior: BehaviorLike, *, index: int | None = None) -> None:
        """Add a behavior (innermost by default, or at ``index``; 0 = outermost).

        Raises:
            ConfigurationError: a message was already dispatched (chains are composed once).
        """
        if self._frozen:
            raise ConfigurationError(
                "cannot add a behavior after the first message was dispatched: chains are composed "
                "once; add behaviors at start-up"
            )
        pipeline = Pipeline(self._behaviors)
        if index is None:
            pipeline.add(behavior)
        else:
            pipeline.insert(index, behavior)
        self._behaviors = list(pipeline)

    def behavior(self, fn: T) -> T:
        """Decorator: add an ``async (message, context, call_next)`` function as the innermost behavior."""
        self.add_behavior(fn)  # type: ignore[arg-type]
        return fn

    # -- dispatch ---------------------------------------------------------------------------------

    # send and publish serve both a root message and one caused by a handler (``parent``): the
    # default is a sentinel compared by identity, so a handler's ``ctx.send`` costs no extra call.
    # ``parent`` is positional-or-keyword on purpose: CPython 3.11 fills a missing positional default
    # from a tuple, a missing keyword-only one with a dict lookup (a few % of a bare send, measured).
    # Each runs the common case (a function handler, or an event's handlers, with nothing but fused or
    # quiet behaviors) inline: a coroutine per message less (see docs/benchmarks.md).

    async def send(
        self,
        request: Request[R],
        parent: Context | Literal[_Parent.CURRENT] | None = CURRENT,
        *,
        metadata: Metadata | None = None,
    ) -> Result[R]:
        """Send a command or query to its handler.

        Args:
            request: the command or query.
            parent: the message that caused this one: default the context of the handler running in
                this task (:data:`CURRENT`); None for a root message. Ignored with ``metadata``.
            metadata: the message's metadata (message id, correlation...) when it came from elsewhere;
                by default a new id is generated and correlation taken from ``parent``.

        Returns:
            the handler's Result; failures (no handler, validation, business or unexpected errors)
            are failed Results, never exceptions (``CancelledError`` propagates).
        """
        try:
            entry = self._request_chains[type(request)]
        except KeyError:  # first message of its type
            entry = self._compile_request(type(request))
        if metadata is None:
            if parent is CURRENT:
                parent = _current.get()
            if parent is None:
                mid = self.new_id()
                ctx = Context(self, mid, mid)
            else:  # the parent's id first: a lazy event id must stay below its children's
                cause = parent.message_id
                ctx = Context(self, self.new_id(), parent.correlation_id, cause)
        else:
            ctx = Context.from_metadata(self, metadata)
        chain, fn, takes_ctx, recover, enter, leave, abort, probe, key = entry
        token = _current.set(ctx)
        try:
            if fn is None or (probe is not None and probe(key) is not False):
                return await chain(request, ctx)
            # The handler is a function and nothing but fusable behaviors applies (or the only
            # other one is quiet): run the handler's terminal right here (see terminal_of).
            if enter is not None:
                early = enter(request, ctx)
                if early is not None:
                    return early
            try:
                value = await (fn(request, ctx) if takes_ctx else fn(request))
            except Exception as exc:
                return await recover(request, ctx, exc, None)  # type: ignore[misc]  # set with fn
            except BaseException:
                if abort is not None:
                    abort(request, ctx)
                raise
            result = _SUCCESS if value is None else Result(True, value)
            if leave is not None:
                leave(request, ctx, result)
            return result
        except Exception as exc:  # raised by a behavior, a guard or an error hook
            return await self._failed(request, ctx, exc, None, None)
        finally:
            _current.reset(token)

    async def publish(
        self,
        event: object,
        parent: Context | Literal[_Parent.CURRENT] | None = CURRENT,
        *,
        metadata: Metadata | None = None,
        concurrent: bool | None = None,
    ) -> Result[None]:
        """Publish an event to all its handlers.

        Args:
            event: the event.
            parent: as for :meth:`send`.
            metadata: as for :meth:`send`.
            concurrent: override ``concurrent_events`` for this publish.

        Returns:
            success, or a failure listing each failed handler in ``metadata["failures"]``
            (:class:`HandlerFailure` tuples).
        """
        try:
            entry = self._event_chains[type(event)]
        except KeyError:  # first message of its type
            entry = self._compile_event(type(event))
        if metadata is None:  # an event's id is drawn when first read (see Context.message_id)
            if parent is CURRENT:
                parent = _current.get()
            if parent is None:
                ctx = Context(self)
            else:
                ctx = Context(self, None, parent.correlation_id, parent.message_id)
        else:
            ctx = Context.from_metadata(self, metadata)
        chain, other, direct, info, probe, key = entry
        token = _current.set(ctx)
        try:
            if concurrent is not None and concurrent != self.concurrent_events:
                return await other(event, ctx)
            if direct is None or (probe is not None and probe(key) is not False):
                return await chain(event, ctx)
            # No behavior applies: fan out in turn right here (catga._fanout.in_turn, with the two
            # plain calling conventions inlined).
            failed: list[tuple[Registration, Result[Any]]] | None = None
            for reg, fn, mode in direct:
                try:
                    if mode == _WITH_CTX:
                        await fn(event, ctx)
                    elif mode == _NO_CTX:
                        await fn(event)
                    else:
                        result = await call_handler(self._failed, reg, mode, event, ctx)
                        if not result.ok:
                            failed = [*(failed or ()), (reg, result)]
                except Exception as exc:
                    failed = [*(failed or ()), (reg, await self._failed(event, ctx, exc, reg, None))]
            return _SUCCESS if failed is None else publish_failure(info, ctx, failed)
        except Exception as exc:
            return await self._failed(event, ctx, exc, None, None)
        finally:
            _current.reset(token)

    async def send_batch(
        self, requests: Iterable[Request[R]], *, max_concurrency: int | None = None
    ) -> list[Result[R]]:
        """Send many requests; results in input order, at most ``max_concurrency`` in flight."""
        return [r async for r in self.send_stream(requests, max_concurrency=max_concurrency)]

    async def publish_batch(
        self, events: Iterable[object], *, max_concurrency: int | None = None
    ) -> list[Result[None]]:
        """Publish many events; results in input order, at most ``max_concurrency`` in flight."""
        parent = _current.get()
        return [
            r
            async for r in _ordered(
                events,
                lambda e: self.publish(e, parent),
                self.max_concurrency if max_concurrency is None else max_concurrency,
            )
        ]

    def send_stream(
        self,
        requests: AsyncIterable[Request[R]] | Iterable[Request[R]],
        *,
        max_concurrency: int | None = None,
    ) -> AsyncIterator[Result[R]]:
        """Send requests as they arrive; yield their results in input order.

        At most ``max_concurrency`` (default the mediator's) requests are in flight; the source is read
        only as fast as results are consumed. Closing the iterator early cancels the ones in flight.
        """
        parent = _current.get()
        return _ordered(
            requests,
            lambda r: self.send(r, parent),
            self.max_concurrency if max_concurrency is None else max_concurrency,
        )

    # -- error hooks ------------------------------------------------------------------------------

    async def on_business_error(self, message: Any, ctx: Context, exc: BaseException) -> Result[Any] | None:
        """Called after a handler raised a business error; return a Result to replace the failure.

        Default: the ``on_business_error=`` callback if one was given, else None. Override in a subclass.
        """
        hook = self._business_hook
        return None if hook is None else await hook(message, ctx, exc)

    async def on_unexpected_error(self, message: Any, ctx: Context, exc: BaseException) -> Result[Any] | None:
        """Called after a handler raised an unexpected exception (already logged with its traceback).

        Default: the ``on_unexpected_error=`` callback if one was given, else None. Override in a subclass.
        """
        hook = self._unexpected_hook
        return None if hook is None else await hook(message, ctx, exc)

    def backend_recovered(self, backend: str) -> None:
        """Report that ``backend`` (``"nats"``, ``"redis"``...) works again after handlers failed on it.

        Handler failures caused by a backend (a :class:`~catga.errors.BackendError`) are logged once
        per outage, then counted; this ends the outage with one "recovered" line. The app calls it
        when an exported event is published again; nothing happens when the backend was not failing.
        """
        outage = self._outages.get(backend)
        if outage is not None and outage.failing:
            outage.recovered()

    async def _failed(
        self, message: Any, ctx: Context, exc: Exception, reg: Registration | None, instance: Any
    ) -> Result[Any]:
        business = isinstance(exc, HandlerError)
        where = reg.name if reg is not None else "the pipeline"
        kind = type(message).__qualname__
        if business:
            level = logging.WARNING if isinstance(message, Event) else logging.DEBUG
            if _log.isEnabledFor(level):
                _log.log(
                    level,
                    "%s failed %s %s: [%s] %s",
                    where,
                    kind,
                    ctx.message_id,
                    exc.code,  # type: ignore[attr-defined]
                    exc,
                    extra={"catga_message_id": ctx.message_id, "catga_message_type": kind},
                )
            result: Result[Any] = Result.from_exception(exc)
        elif isinstance(exc, BackendError) and not isinstance(exc, PayloadTooLargeError):
            # A broker or store that is down fails every message alike: one line per outage (see
            # catga._outage), and the caller's Result says what happened (unavailable, timeout...).
            # A message over the payload limit is that message's problem: logged below, each time.
            outage = self._outages.get(exc.backend)
            if outage is None:
                what = (
                    f"handlers using the {exc.backend} backend" if exc.backend else "handlers using a backend"
                )
                outage = self._outages[exc.backend] = OutageLog(_log, what, level=logging.ERROR)
            outage.failure(exc, f"{where} handling {kind} {ctx.message_id}")
            result = Result.from_exception(exc)
        elif isinstance(exc, CatgaError):  # too_large, configuration, serialization...: said plainly
            _log.error(
                "%s failed handling %s %s: [%s] %s",
                where,
                kind,
                ctx.message_id,
                exc.code,
                exc,
                exc_info=exc,
                extra={"catga_message_id": ctx.message_id, "catga_message_type": kind},
            )
            result = Result.from_exception(exc)
        else:
            _log.error(
                "unexpected error in %s handling %s %s",
                where,
                kind,
                ctx.message_id,
                exc_info=exc,
                extra={"catga_message_id": ctx.message_id, "catga_message_type": kind},
            )
            result = Result.from_exception(exc, expose=False)
        hook = reg.compensate if reg is not None else None
        if hook is None and instance is not None:
            hook = getattr(instance, "compensate", None)
        if hook is not None:
            try:
                await hook(message, ctx, exc)
            except Exception:
                _log.exception("compensation of %s for %s %s failed", where, kind, ctx.message_id)
        replaced = await (self.on_business_error if business else self.on_unexpected_error)(message, ctx, exc)
        return result if replaced is None else replaced

    # -- composition ------------------------------------------------------------------------------

    def _compile_request(self, message_type: type) -> _RequestRow:
        self._frozen = True
        entry: _RequestRow
        misuse = _wrong_kind(message_type, "send")
        if misuse is not None:
            entry = (misuse, None, False, None, None, None, None, None, None)
            self._request_chains[message_type] = entry
            return entry
        regs = self.handlers_for(message_type)
        if not regs:
            not_found = HandlerNotFoundError(message_type)

            async def missing(message: Any, ctx: Context) -> Result[Any]:
                return Result(False, None, str(not_found), not_found.code, not_found)

            entry = (missing, None, False, None, None, None, None, None, None)
        else:
            reg = regs[0]
            info = HandlerInfo(message_type, regs, reg.return_type)
            chain = compose(self._behaviors, info, terminal_of(self._failed, reg))
            # A quiet outermost layer (logging) may be skipped while a probe says it has nothing to
            # do; what it wraps runs inline when it is a function handler's terminal.
            probe, key, inner = bypass_of(chain)
            direct = direct_of(inner)
            if direct is None:
                entry = (chain, None, False, None, None, None, None, None, None)
            else:
                enter, leave, abort = (None, None, None) if direct.guard is None else direct.guard
                entry = (chain, direct.fn, direct.takes_ctx, direct.recover, enter, leave, abort, probe, key)
        self._request_chains[message_type] = entry
        return entry

    def _compile_event(self, message_type: type) -> _EventRow:
        self._frozen = True
        misuse = _wrong_kind(message_type, "publish")
        if misuse is not None:
            row: _EventRow = (misuse, misuse, None, HandlerInfo(message_type, (), None), None, None)
            self._event_chains[message_type] = row
            return row
        regs = self.handlers_for(message_type)
        info = HandlerInfo(message_type, regs, None)
        handlers = tuple(
            (
                reg,
                reg.target,
                _INSTANCE if reg.factory is not None else _WITH_CTX if reg.takes_context else _NO_CTX,
            )
            for reg in regs
        )
        sequential = in_turn(self, info, handlers)
        concurrent = gather(self, info, handlers) if len(handlers) > 1 else sequential
        chain_seq = compose(self._behaviors, info, sequential)
        chain_con = compose(self._behaviors, info, concurrent)
        # Fan out inline in publish when no behavior applies, or when the only one is a layer that
        # can be bypassed while it has nothing to do (the logging behavior while quiet).
        probe, key, inner = bypass_of(chain_seq)
        direct = handlers if inner is sequential else None
        entry: _EventRow = (
            (chain_con, chain_seq, None, info, None, None)
            if self.concurrent_events
            else (chain_seq, chain_con, direct, info, probe, key)
        )
        self._event_chains[message_type] = entry
        return entry


# The compiled rows are plain tuples, unpacked once per message into named locals. Not NamedTuples:
# CPython 3.11 unpacks only exact tuples on its fast path (a NamedTuple goes through the iterator
# protocol): about 20-30 % more instructions per bare send (callgrind; docs/benchmarks.md, Design figures).

_Probe = Callable[[Any], Any]

_RequestRow = tuple[
    Next,  # chain: the composed chain (behaviors + terminal)
    Callable[..., Any] | None,  # fn: the function handler run inline; None: always run chain
    bool,  # takes_ctx: call fn(message, ctx), else fn(message)
    Recover | None,  # recover: the terminal's path after fn raised (set with fn)
    Callable[[Any, Context], "Result[Any] | None"] | None,  # enter: the fused guard's, or None
    Callable[[Any, Context, "Result[Any]"], None] | None,  # leave
    Callable[[Any, Context], None] | None,  # abort
    _Probe | None,  # probe: with key, run inline only while probe(key) is False (None: always)
    Any,  # key
]
"""A request type's compiled dispatch (see :meth:`Mediator._compile_request`)."""

_EventRow = tuple[
    Next,  # chain: the default fan-out chain (in turn, or concurrent with concurrent_events)
    Next,  # other: the chain of the other fan-out mode (publish(concurrent=...))
    _Handlers | None,  # direct: the handlers to fan out inline, or None: always run chain
    HandlerInfo,  # info
    _Probe | None,  # probe: with key, fan out inline only while probe(key) is False (None: always)
    Any,  # key
]
"""An event type's compiled fan-out (see :meth:`Mediator._compile_event`)."""


def _wrong_kind(message_type: type, operation: Literal["send", "publish"]) -> Next | None:
    """For a type that ``operation`` does not take, the chain that fails every such message; else None.

    Checked once per type, when its chain is composed (the hot path never looks at markers): ``send``
    takes commands and queries, ``publish`` takes events. The misuse is logged once, at ERROR, and
    every such dispatch returns a failed Result (code ``configuration``) saying what to do.
    """
    name = message_type.__qualname__
    if operation == "send":
        if issubclass(message_type, Request):
            return None
        text = (
            f"{name} is an Event: publish it (app.publish / ctx.publish); send() takes commands and queries"
            if issubclass(message_type, Event)
            else f"{name} is not a command or query: send() takes classes that inherit catga.Command[R] "
            "or catga.Query[R]"
        )
    else:
        if issubclass(message_type, Event):
            return None
        text = (
            f"{name} is a {'Query' if issubclass(message_type, Query) else 'Command'}: send it "
            "(app.send / ctx.send) to run its one handler; publish() takes events"
            if issubclass(message_type, Request)
            else f"{name} is not an Event: publish() takes classes that inherit catga.Event"
        )
    error = ConfigurationError(text)
    _log.error("%s", text)

    async def refuse(message: Any, ctx: Context) -> Result[Any]:
        return Result(False, None, text, error.code, error)

    return refuse


async def _ordered(
    source: AsyncIterable[Any] | Iterable[Any],
    dispatch: Callable[[Any], Coroutine[Any, Any, Result[Any]]],
    limit: int,
) -> AsyncIterator[Result[Any]]:
    """Dispatch items with at most ``limit`` in flight; yield results in input order."""
    if limit < 1:
        raise ConfigurationError(f"max_concurrency must be >= 1, got {limit}")
    if limit == 1:
        if isinstance(source, AsyncIterable):
            async for item in source:
                yield await dispatch(item)
        else:
            for item in source:
                yield await dispatch(item)
        return
    pending: deque[asyncio.Task[Result[Any]]] = deque()
    try:
        if isinstance(source, AsyncIterable):
            async for item in source:
                pending.append(asyncio.ensure_future(dispatch(item)))
                if len(pending) >= limit:
                    yield await pending.popleft()
        else:
            for item in source:
                pending.append(asyncio.ensure_future(dispatch(item)))
                if len(pending) >= limit:
                    yield await pending.popleft()
        while pending:
            yield await pending.popleft()
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
