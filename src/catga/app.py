"""``catga.App``: one object that wires a mediator to backends and runs their lifecycle.

::

    app = catga.App()                     # in-memory defaults

    @app.handler
    async def place_order(cmd: PlaceOrder, ctx: catga.Context) -> str: ...

    async with app:                       # start components, run start-up hooks
        result = await app.send(PlaceOrder("c-1", 42))
    # shutdown hooks, then components closed in reverse order (shielded, time-limited)

Components are objects with an optional ``async start()`` and an ``async aclose()``: they are started
in the order they were added and closed in reverse. The idempotency store of the default pipeline is
one. Backends other than ``memory://`` are wired here as they become available; for now a URL naming
another backend raises :class:`~catga.errors.ConfigurationError`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from types import ModuleType
from typing import Any, Protocol, TypeVar

from catga.errors import ConfigurationError
from catga.handlers import Compensate, Lifetime
from catga.mediator import ErrorHook, Mediator
from catga.memory.idempotency import MemoryIdempotencyStore
from catga.messages import Metadata, Request
from catga.pipeline import BehaviorLike, default_pipeline
from catga.protocols import IdempotencyStore
from catga.result import Result

__all__ = ("App",)

R = TypeVar("R")
T = TypeVar("T")
Hook = Callable[[], Awaitable[None] | None]
_log = logging.getLogger("catga.app")
_MEMORY = ("memory://", "memory")


class _Send(Protocol):
    def __call__(
        self, request: Request[R], *, metadata: Metadata | None = None
    ) -> Coroutine[Any, Any, Result[R]]: ...


class _Publish(Protocol):
    def __call__(
        self, event: object, *, metadata: Metadata | None = None, concurrent: bool | None = None
    ) -> Coroutine[Any, Any, Result[None]]: ...


def _memory_only(kind: str, value: object) -> None:
    if value is None or (isinstance(value, str) and value.lower() in _MEMORY):
        return
    if isinstance(value, str):
        scheme = value.split("://", 1)[0] if "://" in value else value
        raise ConfigurationError(
            f"{kind} {value!r} is not supported yet ({scheme!r} backend): use None or 'memory://' "
            f"for now, or pass a backend object built yourself"
        )


class App:
    """A catga application: mediator, pipeline, backends and lifecycle.

    Args:
        transport: None or ``"memory://"`` (default), or a transport object.
        store: None or ``"memory://"`` (default), or an event store object.
        mediator: use this mediator instead of building one (``behaviors`` is then ignored).
        behaviors: the pipeline; default logging → validation → idempotency → retry.
        idempotency_store: store of the default pipeline's idempotency behavior (memory by default).
        concurrent_events: run an event's handlers concurrently (see :class:`~catga.mediator.Mediator`).
        on_business_error: mediator hook, see :class:`~catga.mediator.Mediator`.
        on_unexpected_error: mediator hook, see :class:`~catga.mediator.Mediator`.
        shutdown_timeout: seconds the whole shutdown may take before remaining steps are abandoned.

    Raises:
        ConfigurationError: a URL names a backend that is not supported yet.
    """

    def __init__(
        self,
        transport: str | object | None = None,
        store: str | object | None = None,
        *,
        mediator: Mediator | None = None,
        behaviors: Iterable[BehaviorLike] | None = None,
        idempotency_store: IdempotencyStore | None = None,
        concurrent_events: bool = False,
        on_business_error: ErrorHook | None = None,
        on_unexpected_error: ErrorHook | None = None,
        shutdown_timeout: float = 30.0,
    ) -> None:
        _memory_only("transport", transport)
        _memory_only("store", store)
        if shutdown_timeout <= 0:
            raise ConfigurationError(f"shutdown_timeout must be > 0 seconds, got {shutdown_timeout}")
        self.components: list[Any] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._started: list[Any] = []
        self._running = False
        self._stop_requested: asyncio.Event | None = None
        self.transport = None if isinstance(transport, str) else transport
        self.store = None if isinstance(store, str) else store
        for backend in (self.transport, self.store):
            if backend is not None:
                self.add_component(backend)
        self.idempotency_store: IdempotencyStore = (
            idempotency_store if idempotency_store is not None else MemoryIdempotencyStore()
        )
        self.add_component(self.idempotency_store)
        if mediator is None:
            mediator = Mediator(
                behaviors=behaviors if behaviors is not None else default_pipeline(self.idempotency_store),
                concurrent_events=concurrent_events,
                on_business_error=on_business_error,
                on_unexpected_error=on_unexpected_error,
            )
        self.mediator = mediator
        # The mediator's own bound methods: no extra call per message.
        self.send: _Send = mediator.send
        """Send a command or query: :meth:`Mediator.send <catga.mediator.Mediator.send>`."""
        self.publish: _Publish = mediator.publish
        """Publish an event: :meth:`Mediator.publish <catga.mediator.Mediator.publish>`."""
        self.shutdown_timeout = shutdown_timeout

    # -- handlers and dispatch (delegated to the mediator) ----------------------------------------

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
        """Register a handler: ``@app.handler`` or ``@app.handler(...)``. See :meth:`Mediator.register`."""
        return self.mediator.handler(
            target, message_type=message_type, factory=factory, lifetime=lifetime, compensate=compensate
        )

    def scan(self, package: str | ModuleType) -> int:
        """Register every marked handler of a package. See :meth:`Mediator.scan`."""
        return self.mediator.scan(package)

    def behavior(self, fn: T) -> T:
        """Add an ``async (message, context, call_next)`` behavior (innermost)."""
        return self.mediator.behavior(fn)

    def send_batch(
        self, requests: Iterable[Request[R]], *, max_concurrency: int | None = None
    ) -> Coroutine[Any, Any, list[Result[R]]]:
        """Send many requests. See :meth:`Mediator.send_batch`."""
        return self.mediator.send_batch(requests, max_concurrency=max_concurrency)

    def publish_batch(
        self, events: Iterable[object], *, max_concurrency: int | None = None
    ) -> Coroutine[Any, Any, list[Result[None]]]:
        """Publish many events. See :meth:`Mediator.publish_batch`."""
        return self.mediator.publish_batch(events, max_concurrency=max_concurrency)

    def send_stream(
        self,
        requests: AsyncIterable[Request[R]] | Iterable[Request[R]],
        *,
        max_concurrency: int | None = None,
    ) -> AsyncIterator[Result[R]]:
        """Send a stream of requests; results in order. See :meth:`Mediator.send_stream`."""
        return self.mediator.send_stream(requests, max_concurrency=max_concurrency)

    # -- lifecycle --------------------------------------------------------------------------------

    def add_component(self, component: Any) -> Any:
        """Manage ``component``: ``await start()`` (if it has one) on start, ``await aclose()`` on stop.

        Returns:
            ``component``.

        Raises:
            ConfigurationError: it has no ``aclose``, or the app is already running.
        """
        if self._running:
            raise ConfigurationError("add components before the app starts")
        if not callable(getattr(component, "aclose", None)):
            raise ConfigurationError(f"component {component!r} has no aclose() method")
        if all(c is not component for c in self.components):
            self.components.append(component)
        return component

    def on_startup(self, fn: Hook) -> Hook:
        """Decorator: run ``fn()`` (sync or async) after the components started, in registration order."""
        self._startup.append(fn)
        return fn

    def on_shutdown(self, fn: Hook) -> Hook:
        """Decorator: run ``fn()`` (sync or async) first on shutdown, in registration order."""
        self._shutdown.append(fn)
        return fn

    @property
    def running(self) -> bool:
        """True between a successful :meth:`start` and :meth:`aclose`."""
        return self._running

    async def start(self) -> None:
        """Start components in order, then run start-up hooks. Idempotent.

        If anything fails, what was started is stopped again (in reverse) and the error re-raised.
        """
        if self._running:
            return
        try:
            for component in self.components:
                start = getattr(component, "start", None)
                if start is not None:
                    await start()
                self._started.append(component)
            self._running = True
            for hook in self._startup:
                await _call(hook)
        except BaseException:
            started_hooks = self._running
            self._running = False
            await asyncio.shield(self._shutdown_all(hooks=started_hooks))
            raise

    async def aclose(self) -> None:
        """Run shutdown hooks, then close components in reverse order. Idempotent.

        The shutdown is shielded from cancellation. Each step may take the time left of
        ``shutdown_timeout`` but at least ``shutdown_timeout / steps``, so the whole shutdown takes at
        most twice ``shutdown_timeout``; a step that fails or overruns is logged and the next one runs.
        """
        if not self._running:
            return
        self._running = False
        task = asyncio.ensure_future(self._shutdown_all())
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await asyncio.wait({task})  # finish the (time-limited) shutdown, then propagate
            raise

    async def _shutdown_all(self, hooks: bool = True) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.shutdown_timeout
        steps: list[tuple[str, Callable[[], Any]]] = []
        if hooks:
            steps += [(f"shutdown hook {h!r}", h) for h in self._shutdown]
        steps += [(f"component {c!r}", c.aclose) for c in reversed(self._started)]
        self._started.clear()
        grace = self.shutdown_timeout / max(1, len(steps))
        for name, step in steps:
            # The time left, but never less than a fair share: one hanging step cannot stop the
            # later ones from closing their connections.
            limit = max(deadline - loop.time(), grace)
            try:
                async with asyncio.timeout(limit):
                    await _call(step)
            except TimeoutError:
                _log.error("%s did not stop within %.3g s; moving on", name, limit)
            except Exception:
                _log.exception("%s failed during shutdown", name)

    async def __aenter__(self) -> App:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- running as a service ---------------------------------------------------------------------

    def request_stop(self) -> None:
        """Ask :meth:`serve` / :meth:`run` to shut down (what SIGTERM and SIGINT do)."""
        if self._stop_requested is not None:
            self._stop_requested.set()

    async def serve(self, main: Callable[[], Awaitable[T]] | None = None) -> T | None:
        """Start, then run ``main()`` (or wait) until it returns or a stop is requested; then stop.

        SIGTERM and SIGINT request a stop (when called from the main thread). A stop cancels ``main``.

        Returns:
            what ``main`` returned, or None when it was stopped or not given.
        """
        self._stop_requested = stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                installed.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / platform
                pass
        try:
            async with self:
                waiter = asyncio.ensure_future(stop.wait())
                work = asyncio.ensure_future(main()) if main is not None else None
                try:
                    await asyncio.wait({waiter} | ({work} if work else set()), return_when="FIRST_COMPLETED")
                finally:
                    waiter.cancel()
                    if work is not None and not work.done():
                        work.cancel()
                        await asyncio.wait({work})
                if work is not None and not work.cancelled():
                    return work.result()
                return None
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            self._stop_requested = None

    def _on_signal(self, sig: signal.Signals) -> None:
        _log.info("received %s: shutting down", sig.name)
        self.request_stop()

    def run(self, main: Callable[[], Awaitable[T]] | None = None) -> T | None:
        """Blocking convenience: ``asyncio.run(app.serve(main))``. Stops on SIGTERM/SIGINT."""
        return asyncio.run(self.serve(main))

    def __repr__(self) -> str:
        return f"App(components={len(self.components)}, running={self._running})"


async def _call(fn: Callable[[], Any]) -> None:
    out = fn()
    if inspect.isawaitable(out):
        await out
