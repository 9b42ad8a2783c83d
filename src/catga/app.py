# Over 500 lines: App is the public entry point and most of this file is its documented API (wiring,
# lifecycle, serving). The cross-process bridge lives in catga._bridge, URL handling in catga.backends.
"""``catga.App``: one object that wires a mediator to backends and runs their lifecycle.

::

    app = catga.App()                                        # in-memory defaults
    app = catga.App(transport="nats://127.0.0.1:4222", store="redis://127.0.0.1:6379/0")

    @app.handler
    async def place_order(cmd: PlaceOrder, ctx: catga.Context) -> str: ...

    async with app:                       # open backends, start components, run start-up hooks
        result = await app.send(PlaceOrder("c-1", 42))
    # stop consumers, shutdown hooks, components, then backends closed in reverse (shielded, time-limited)

**Backends by URL** (:mod:`catga.backends`): ``transport=``, ``store=``, ``idempotency_store=`` and
``outbox=`` take ``memory://``, ``nats://`` / ``tls://`` or ``redis://`` / ``rediss://`` URLs, or ready
objects. The constructor checks the URLs and builds the real backend objects on connections that are
not open yet -- one per server, shared by everything on it -- so ``app.store`` is the event store
itself and ``Repository(app.store, Order)`` can be written at import time. :meth:`App.start` opens the
connections, :meth:`App.aclose` closes them, and a later start opens them again; a call before start
raises :class:`~catga.errors.ConfigurationError` ("not open"). Built and ready objects alike are
managed as components (started if they have ``start()``, closed on stop).

**Events across processes.** Local handlers always run when an event is published (``app.publish`` /
``ctx.publish``), exactly as without a transport. Two declarations connect apps through the transport:

* :meth:`App.export` — events of that type published in this app are *also* published on the transport,
  with their message id, correlation and causation, and an ``X-Catga-Origin`` header (the app's name);
* :meth:`App.consume` — at start the app subscribes to that type on the transport and dispatches what
  arrives to its local handlers (with the sender's metadata).

**Outbox.** With ``outbox=`` (a URL or an :class:`~catga.protocols.OutboxStore`) and a transport, an
exported event is not published directly: it is stored in the outbox (its id, destination, encoded body
and wire headers), and an :class:`~catga.outbox.OutboxRelay` that runs with the app (``app.relay``)
publishes it, retrying with backoff while the transport fails and dead-lettering it after
``max_attempts``; stopping the app makes one last relay pass. A publish then succeeds as soon as the
event is stored, whether or not the transport is reachable at that moment.

The rule that keeps an event from being handled twice: an app **never consumes events whose origin is
its own name** — the process that published the event already ran its handlers (so several replicas of
one named app handle each of their events once, where it was published), and an event received from the
transport is never exported again. Apps without a name get a unique origin per instance. With the
default ``memory://`` transport there is no transport at all (``app.transport is None``, the publish hot
path is untouched): ``export`` and ``consume`` are recorded and do nothing, so the same code runs in tests.

The bridge itself (export handler, origin header, inbound marker, subscriptions) lives in
:mod:`catga._bridge`; this module is the wiring and the lifecycle.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import signal
import uuid
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, Literal, Protocol, TypeVar

from catga._bridge import APP_NAME, H_ORIGIN, Bridge, Group
from catga._payload import DEFAULT_MAX_PAYLOAD
from catga._worker_ids import env_worker_id_set, process_worker_id
from catga.backends import Backends
from catga.context import Context
from catga.errors import ConfigurationError
from catga.handlers import Compensate, Lifetime
from catga.health import Health, Probe, component_checks, consumers_detail, counted, run_checks, server_checks
from catga.ids import SnowflakeIdGenerator, default_generator
from catga.mediator import CURRENT, ErrorHook, Mediator, _Parent
from catga.messages import Event, Metadata, QoS, Request
from catga.outbox import OutboxRelay
from catga.pipeline import BehaviorLike, default_pipeline
from catga.protocols import (
    DistributedLock,
    EventStore,
    IdempotencyStore,
    InboxStore,
    OutboxStore,
    ScheduleStore,
    Transport,
    validate_identifier,
)
from catga.result import Result
from catga.scheduling import Scheduler, new_schedule, pipeline_delivery
from catga.serialization import TypeRegistry, default_registry
from catga.workflows import WorkflowEngine, WorkflowInstance, WorkflowStore
from catga.workflows._app import app_engine, engine_options

__all__ = ("APP_NAME", "H_ORIGIN", "App")

R = TypeVar("R")
T = TypeVar("T")
E = TypeVar("E")
Hook = Callable[[], Awaitable[None] | None]
_log = logging.getLogger("catga.app")


class _Send(Protocol):
    def __call__(
        self,
        request: Request[R],
        parent: Context | Literal[_Parent.CURRENT] | None = CURRENT,
        *,
        metadata: Metadata | None = None,
    ) -> Coroutine[Any, Any, Result[R]]: ...


class _Publish(Protocol):
    def __call__(
        self,
        event: object,
        parent: Context | Literal[_Parent.CURRENT] | None = CURRENT,
        *,
        metadata: Metadata | None = None,
        concurrent: bool | None = None,
    ) -> Coroutine[Any, Any, Result[None]]: ...


class App:
    """A catga application: mediator, pipeline, backends and lifecycle.

    Args:
        transport: ``None`` / ``"memory://"`` (default: no transport, everything in process), a
            ``nats://`` / ``tls://`` / ``redis://`` / ``rediss://`` URL, or a transport object.
        store: the event store: ``None`` / ``"memory://"`` (default: a
            :class:`~catga.memory.MemoryEventStore`), a NATS or Redis URL, or an event store object.
        name: the app's name: the default consumer group of :meth:`consume` and the origin written on
            exported events (see the module docs). Default: none (a unique origin per instance).
        mediator: use this mediator instead of building one (``behaviors`` is then ignored).
        behaviors: the pipeline; default logging → validation → idempotency → retry.
        idempotency_store: store of the default pipeline's idempotency behavior: memory by default,
            or a NATS/Redis/``postgresql://`` URL, or an object.
        registry: message types allowed in the stores and on the wire of URL-built backends
            (default: :func:`~catga.serialization.default_registry`).
        concurrent_events: run an event's handlers concurrently (see :class:`~catga.mediator.Mediator`).
        on_business_error: mediator hook, see :class:`~catga.mediator.Mediator`.
        on_unexpected_error: mediator hook, see :class:`~catga.mediator.Mediator`.
        shutdown_timeout: seconds the whole shutdown may take before remaining steps are abandoned.
        connect_timeout: seconds to connect to each server at start, and the default timeout of the
            network calls of URL-built backends.
        worker_id: the Snowflake worker id of this process's ids (see :mod:`catga._worker_ids`).
            ``None`` (default): with a NATS or Redis URL — else a ``postgresql://`` store URL
            (table ``catga_locks``) — the app leases a unique one through that backend at start and
            releases it at stop, unless ``CATGA_WORKER_ID`` is set; in-memory apps keep the
            process-local id. An ``int`` uses that id (no lease); a
            :class:`~catga.protocols.DistributedLock` leases through it (for apps built from objects).
        max_payload: the largest message (encoded body) the URL-built transport, event store and outbox
            accept, in bytes (default 1 MiB, NATS's default; on NATS the server's own limit applies
            too). A larger exported event fails its publish with code ``too_large``, nothing sent.
        inbox: the inbox the transport's ``EXACTLY_ONCE`` consumers claim message ids in (key
            ``inbox.<consumer group>.<message id>``), instead of the transport's own. A
            :class:`~catga.postgres.PostgresInboxStore` runs each such delivery in one transaction with
            the handler's PostgreSQL writes (see :mod:`catga.postgres.unit_of_work`).
        unit_of_work: run every command and query handler in a transaction, e.g. a
            :class:`~catga.postgres.PostgresUnitOfWork`: the default pipeline becomes logging →
            validation → retry → unit of work → idempotency (with ``behaviors=``, place
            ``unit_of_work.behavior()`` yourself; with ``mediator=`` it is refused).
        scheduler: where :meth:`schedule` keeps scheduled messages: ``None`` / ``"memory://"``
            (default: in process, lost at exit), a ``nats://``, ``redis://`` or
            ``postgresql://`` URL, or a :class:`~catga.protocols.ScheduleStore`. With a URL or a
            store, the app runs a :class:`~catga.scheduling.Scheduler` delivering due schedules
            while it runs (see :mod:`catga.scheduling`).
        workflows: where durable workflows (:meth:`workflow`, :meth:`start_workflow`) are kept:
            ``None`` / ``"memory://"`` (default: in process, lost at exit), a ``nats://``,
            ``redis://`` or ``postgresql://`` URL, or a :class:`~catga.workflows.WorkflowStore`.
            Their sleeps wake through the scheduler (see :mod:`catga.workflows`). A URL may also
            carry the engine's settings, ``?lease=10&poll_interval=0.5&step_retries=2&retry_backoff=0.5``
            (see :class:`~catga.workflows.WorkflowEngine`).

    Attributes:
        transport: None (no transport) or the transport (for a URL, built on a connection that
            opens at :meth:`start`).
        store: the event store.
        idempotency_store: the idempotency store of the default pipeline.
        backends: what built the URL-named backends (its ``connections``, open while running).
        schedules: the schedule store (``App(scheduler=...)``; in memory by default).
        scheduler: the :class:`~catga.scheduling.Scheduler` delivering from it (None until it runs).
        workflows: the :class:`~catga.workflows.WorkflowEngine` running the app's workflows.

    Raises:
        ConfigurationError: a URL with an unsupported scheme or options, a backend whose optional
            dependency is missing, an invalid name or timeout.
    """

    def __init__(
        self,
        transport: str | object | None = None,
        store: str | object | None = None,
        *,
        name: str | None = None,
        mediator: Mediator | None = None,
        behaviors: Iterable[BehaviorLike] | None = None,
        idempotency_store: str | IdempotencyStore | None = None,
        outbox: str | OutboxStore | None = None,
        registry: TypeRegistry | None = None,
        concurrent_events: bool = False,
        on_business_error: ErrorHook | None = None,
        on_unexpected_error: ErrorHook | None = None,
        shutdown_timeout: float = 30.0,
        connect_timeout: float = 5.0,
        worker_id: int | DistributedLock | None = None,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        inbox: InboxStore | None = None,
        unit_of_work: _UnitOfWork | None = None,
        scheduler: str | ScheduleStore | None = None,
        workflows: str | WorkflowStore | None = None,
    ) -> None:
        if shutdown_timeout <= 0:
            raise ConfigurationError(f"shutdown_timeout must be > 0 seconds, got {shutdown_timeout}")
        if connect_timeout <= 0:
            raise ConfigurationError(f"connect_timeout must be > 0 seconds, got {connect_timeout}")
        self.name = None if name is None else validate_identifier(name, "app name")
        self.origin = name if name is not None else f"app-{uuid.uuid4().hex[:12]}"
        self.components: list[Any] = []
        self._startup: list[Hook] = []
        self._shutdown: list[Hook] = []
        self._started: list[Any] = []
        self._running = False
        self._stop_requested: asyncio.Event | None = None
        self.backends = Backends(
            name=self.origin, registry=registry, timeout=connect_timeout, max_payload=max_payload
        )
        built = self.backends.for_role
        self.transport: Transport | None = built("transport", transport)
        self.store: EventStore = built("store", store, "memory://")
        self.idempotency_store: IdempotencyStore = built("idempotency_store", idempotency_store, "memory://")
        self.outbox: OutboxStore | None = built("outbox", outbox)
        self.relay: OutboxRelay | None = None  # created at start when there is an outbox and a transport
        if inbox is not None and self.transport is None:
            raise ConfigurationError(
                "App(inbox=...) is for the transport's EXACTLY_ONCE consumers, and this app has no "
                "transport: pass transport= too, or drop inbox="
            )
        if unit_of_work is not None and (mediator is not None or behaviors is not None):
            raise ConfigurationError(
                "App(unit_of_work=...) builds the default pipeline around it; with your own behaviors= "
                "or mediator=, put unit_of_work.behavior() in the pipeline yourself (outside the "
                "idempotency behavior) and drop unit_of_work="
            )
        self.inbox = inbox
        self.schedules: ScheduleStore = built("scheduler", scheduler, "memory://")
        self.scheduler: Scheduler | None = None
        workflow_settings: dict[str, Any] = {}
        if isinstance(workflows, str):
            workflows, workflow_settings = engine_options(workflows)
        workflow_store: WorkflowStore = built("workflows", workflows, "memory://")
        self._schedules_used = scheduler is not None  # else the scheduler starts at the first schedule()
        for backend in (
            *self.backends.built,
            self.transport,
            self.store,
            self.idempotency_store,
            self.outbox,
            inbox,
            self.schedules,
            workflow_store,
        ):
            if backend is not None:
                self.add_component(backend)
        if mediator is None:
            mediator = Mediator(
                behaviors=behaviors
                if behaviors is not None
                else default_pipeline(
                    self.idempotency_store,
                    unit_of_work=None if unit_of_work is None else unit_of_work.behavior(),
                ),
                concurrent_events=concurrent_events,
                on_business_error=on_business_error,
                on_unexpected_error=on_unexpected_error,
            )
        self.mediator = mediator
        self.workflows: WorkflowEngine = app_engine(self, workflow_store, workflow_settings)
        self._bridge = Bridge(
            mediator,
            self.transport,
            origin=self.origin,
            name=self.name,
            outbox=self.outbox,
            registry=self.backends.registry,
            max_payload=self.backends.max_payload,
        )
        # The mediator's own bound methods: no extra call per message.
        self.send: _Send = mediator.send
        """Send a command or query: :meth:`Mediator.send <catga.mediator.Mediator.send>`."""
        self.publish: _Publish = mediator.publish
        """Publish an event: :meth:`Mediator.publish <catga.mediator.Mediator.publish>`."""
        self.shutdown_timeout = shutdown_timeout
        if isinstance(worker_id, int) and not isinstance(worker_id, bool):
            SnowflakeIdGenerator(worker_id)  # raises ConfigurationError when out of range
        elif worker_id is not None and not callable(getattr(worker_id, "acquire", None)):
            raise ConfigurationError(
                f"worker_id must be an int, a DistributedLock or None, got {type(worker_id).__name__}"
            )
        self._worker_id = worker_id
        self._worker_member: Any = None

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

    # -- events across processes ------------------------------------------------------------------

    def export(
        self, event_type: type[E], *, qos: QoS = QoS.AT_LEAST_ONCE, destination: str | None = None
    ) -> type[E]:
        """Also publish events of ``event_type`` (and subclasses) on the transport.

        The event keeps its message id, correlation and causation; the ``X-Catga-Origin`` header names
        this app. Local handlers run as always. The transport publish is one more handler of the event:
        if it fails, the publish's Result lists it as a failed handler (the others still ran), with the
        error's code: ``unavailable`` (the broker is down), ``timeout``, ``too_large`` (over
        ``max_payload``, nothing sent). A broker outage is logged once, then counted, and its end
        logged when an export goes through again. Without a transport this does nothing. Usable as a
        class decorator.

        Args:
            event_type: an :class:`~catga.messages.Event` class.
            qos: the delivery guarantee asked of the transport (at-least-once by default).
            destination: default: the type's wire name.

        Returns:
            ``event_type``.

        Raises:
            ConfigurationError: not an Event class, or the app is already running.
        """
        self._check_declarable("export", event_type)
        self._bridge.export(event_type, QoS(qos), destination)
        return event_type

    async def health(self, timeout: float = 2.0) -> Health:
        """Check the app: running, every server it uses answers ``PING``, consumers and relay alive.

        Each check runs concurrently within ``timeout`` seconds; nothing raises (see
        :mod:`catga.health`). Serve it over HTTP with :meth:`catga.web.Endpoints.health`.
        """

        async def running() -> str:
            if not self._running:
                raise RuntimeError("the app is not started")
            return counted(len(self.components), "component")

        probes: list[tuple[str, Probe]] = [("app", running)]
        backends = (self.transport, self.store, self.idempotency_store, self.outbox, self.schedules)
        probes += server_checks([*self.backends.connections, *backends, *self.components])
        probes += component_checks(self.components)  # components with their own health_check()
        if self._worker_member is not None:

            async def worker_id() -> str:
                lease = process_worker_id().lease
                if lease is None or not lease.valid:
                    raise RuntimeError("the worker id lease was lost: ids are refused until it is renewed")
                return f"worker id {lease.worker_id} leased"

            probes.append(("worker_id", worker_id))
        bridge = self._bridge
        if bridge.consumers:

            async def consumers() -> str:
                live = len(bridge.subscriptions)
                if live < len(bridge.consumers):
                    raise RuntimeError(f"{live} of {len(bridge.consumers)} consume() subscriptions are live")
                return consumers_detail(bridge.subscriptions)

            probes.append(("consumers", consumers))
        scheduler = self.scheduler
        if scheduler is not None:

            async def scheduler_alive() -> str:
                if not scheduler.running:
                    raise RuntimeError("the scheduler is not running")
                return f"delivered {scheduler.delivered}, failed {scheduler.failed}, dead {scheduler.dead}"

            probes.append(("scheduler", scheduler_alive))
        relay = self.relay
        if relay is not None:

            async def relay_alive() -> str:
                if not relay.running:
                    raise RuntimeError("the outbox relay is not running")
                return f"published {relay.published}, failed {relay.failed}, dead {relay.dead}"

            probes.append(("outbox relay", relay_alive))
        return await run_checks(probes, timeout)

    def add_header_hook(self, hook: Callable[[dict[str, str]], None]) -> None:
        """Let ``hook`` add headers to every exported event (e.g. trace context, see :mod:`catga.otel`).

        It runs in the exporting handler's context, on a copy of the event's headers.
        """
        self._bridge.header_hooks.append(hook)

    def consume(
        self,
        event_type: type[E],
        *,
        qos: QoS = QoS.AT_LEAST_ONCE,
        group: Group = APP_NAME,
        destination: str | None = None,
        max_in_flight: int = 64,
        max_deliver: int = 5,
    ) -> type[E]:
        """Dispatch events of ``event_type`` arriving on the transport to this app's handlers.

        Subscribes at :meth:`start`. Events whose origin is this app's name are acknowledged without
        running anything (their publisher ran the handlers). If a handler fails, the delivery fails:
        the transport redelivers it (all handlers of the event run again: at-least-once) and after
        ``max_deliver`` deliveries dead-letters it. Without a transport this does nothing. Usable as a
        class decorator.

        Args:
            event_type: an :class:`~catga.messages.Event` class.
            qos: the subscription's delivery guarantee (``EXACTLY_ONCE`` adds an inbox check).
            group: the consumer group sharing one copy of each event; default the app's name (a
                private copy when the app has no name); None for a private copy.
            destination: default: the type's wire name.
            max_in_flight: events handled at once.
            max_deliver: deliveries before a failing event is dead-lettered.

        Returns:
            ``event_type``.

        Raises:
            ConfigurationError: not an Event class, or the app is already running.
        """
        self._check_declarable("consume", event_type)
        self._bridge.consume(event_type, QoS(qos), group, destination, max_in_flight, max_deliver)
        return event_type

    def _check_declarable(self, what: str, event_type: object) -> None:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise ConfigurationError(f"{what}() takes an Event class, got {event_type!r}")
        if self._running:
            raise ConfigurationError(
                f"{what}({event_type.__qualname__}) must be declared before the app starts"
            )

    # -- scheduled messages -----------------------------------------------------------------------

    async def schedule(
        self,
        message: object,
        *,
        at: datetime | float | None = None,
        after: timedelta | float | None = None,
        every: timedelta | float | None = None,
        cron: str | None = None,
        id: str | None = None,
    ) -> str:
        """Deliver ``message`` at a time: a command or query is sent, an event published (see
        :mod:`catga.scheduling`).

        The message is encoded now, with its metadata (a new message id; correlation and causation
        from the handler running in this task, if any), and kept in the app's schedule store until
        it is due. Delivery is at least once, never before the due time, once per schedule across
        replicas; it survives restarts when the store does (not ``memory://``).

        Args:
            message: a :class:`~catga.messages.Request` or :class:`~catga.messages.Event`.
            at: when: an aware datetime or unix seconds (in the past: due at once).
            after: or a delay from now: a timedelta or seconds.
            every: make it recurring: delivered again every ``every`` (timedelta or seconds) after
                the first due time, until cancelled; alone (no ``at`` / ``after``), first due one
                interval from now.
            cron: or recurring on a cron expression, in UTC (``"*/15 * * * *"``, ``"0 8 * * mon-fri"``,
                ``"@daily"``; five fields, see :mod:`catga._cron`): first due at its first minute
                after now (or after ``at`` / ``after`` when given), then at each following one.
            id: the schedule's id (validated like a stream id). Scheduling an id that is already
                scheduled changes nothing and returns it (idempotent). Default: a new unique id.

        Returns:
            the schedule id, for :meth:`cancel_schedule`.

        Raises:
            ConfigurationError: not exactly one of ``at`` / ``after`` (none is fine with ``every`` or
                ``cron``), a naive datetime, a bad interval or cron expression, not a message, the
                app is not running.
            InvalidIdentifierError: an invalid ``id``.
            PayloadTooLargeError: the encoded message is over ``max_payload``.
            BackendError: the store failed (nothing scheduled).
        """
        if not self._running:
            raise ConfigurationError("schedule() needs a running app: call it inside `async with app:`")
        schedule = new_schedule(
            self.mediator, self._registry(), self.backends.max_payload, message,
            at=at, after=after, every=every, cron=cron, id=id,
        )  # fmt: skip
        await self.schedules.add(schedule)
        if self.scheduler is None:
            self._schedules_used = True
            await self._start_scheduler()
        return schedule.id

    async def cancel_schedule(self, id: str) -> bool:
        """Cancel a schedule (every future occurrence of a recurring one).

        Returns:
            True if it was scheduled; False if there is no such schedule (unknown, delivered or
            cancelled already). An occurrence being delivered at this moment may still arrive once.

        Raises:
            ConfigurationError: the app is not running.
            BackendError: the store failed.
        """
        if not self._running:
            raise ConfigurationError(
                "cancel_schedule() needs a running app: call it inside `async with app:`"
            )
        return await self.schedules.cancel(id)

    # -- durable workflows (see catga.workflows) ---------------------------------------------------

    def workflow(
        self, fn: Any = None, *, name: str | None = None, version: int = 1, events: Iterable[type] = ()
    ) -> Any:
        """Decorator: register ``async def fn(wf, input)`` as a durable workflow (``@app.workflow``
        or ``@app.workflow(name=..., version=2, events=[PaymentReceived])``); see
        :meth:`WorkflowEngine.register <catga.workflows.WorkflowEngine.register>`."""
        if fn is None:
            return lambda f: self.workflows.register(f, name=name, version=version, events=events)
        return self.workflows.register(fn, name=name, version=version, events=events)

    async def start_workflow(self, workflow: Any, input: object = None, *, id: str | None = None) -> str:
        """Start a workflow (by name or function) with ``input``; return its id.

        Idempotent by ``id``: starting an id that exists changes nothing and returns it. The input is
        stored as JSON and decoded into the type of the function's second parameter.

        Raises:
            ConfigurationError: the app is not running, or no such workflow is registered.
            InvalidIdentifierError: an invalid ``id``.
        """
        if not self._running:
            raise ConfigurationError("start_workflow() needs a running app: call it inside `async with app:`")
        return await self.workflows.start_workflow(workflow, input, id=id)

    async def workflow_status(self, id: str) -> WorkflowInstance | None:
        """The state of workflow ``id`` (status, result, error...), or None if unknown."""
        return await self.workflows.store.get(id)

    async def cancel_workflow(self, id: str) -> bool:
        """Cancel workflow ``id`` (compensations run, it ends ``cancelled``); False if finished/unknown."""
        return await self.workflows.cancel(id)

    async def wait_workflow(self, id: str, timeout: float | None = 30.0) -> WorkflowInstance:
        """Wait until workflow ``id`` is finished (on any replica) and return its state.

        Raises:
            LookupError: no such workflow.
            TimeoutError: not finished within ``timeout`` seconds.
        """
        return await self.workflows.wait(id, timeout)

    def _registry(self) -> TypeRegistry:
        registry = self.backends.registry
        return default_registry() if registry is None else registry

    async def _start_scheduler(self) -> None:
        self.scheduler = Scheduler(
            self.schedules,
            pipeline_delivery(self.mediator, self._registry()),
            dead_letters=None if self.transport is None else _dead_letters_of(self.transport),
        )
        await self.scheduler.start()

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
        """Open URL-named backends, start components in order, run start-up hooks, then subscribe the
        :meth:`consume` declarations. Idempotent.

        If anything fails, what was started or opened is stopped again (in reverse) and the error
        re-raised.

        Raises:
            BackendUnavailableError: a server named by a URL cannot be reached.
            ConfigurationError: a server refused the credentials or the configuration.
        """
        if self._running:
            return
        try:
            await self.backends.open()
            if self.inbox is not None and self.transport is not None:
                _give_inbox(self.transport, self.inbox)
            await self._lease_worker_id()
            if self.relay is None and self.outbox is not None and self.transport is not None:
                self.relay = OutboxRelay(
                    self.outbox, self.transport, dead_letters=_dead_letters_of(self.transport)
                )
                self.components.append(self.relay)  # started last, so stopped (and flushed) first
                self._bridge.relay = self.relay
            for component in self.components:
                start = getattr(component, "start", None)
                if start is not None:
                    await start()
                self._started.append(component)
            self._running = True
            for hook in self._startup:
                await _call(hook)
            await self._bridge.subscribe()
            if self._schedules_used:
                await self._start_scheduler()
            await self.workflows.start()
        except BaseException:
            started_hooks = self._running
            self._running = False
            await asyncio.shield(self._shutdown_all(hooks=started_hooks))
            raise

    async def aclose(self) -> None:
        """Stop consuming, run shutdown hooks, close components in reverse order, then close the
        backends the app opened (last opened first). Idempotent.

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
        subscriptions = self._bridge.subscriptions
        steps: list[tuple[str, Callable[[], Any]]] = [
            (f"consumer {s!r}", s.aclose)
            for s in subscriptions  # first: stop taking new work
        ]
        subscriptions.clear()
        if self.scheduler is not None:
            steps.insert(0, ("the scheduler", self.scheduler.aclose))
            self.scheduler = None
        steps.insert(0, ("the workflow runs", self.workflows.aclose))
        if hooks:
            steps += [(f"shutdown hook {h!r}", h) for h in self._shutdown]
        steps += [(f"component {c!r}", c.aclose) for c in reversed(self._started)]
        self._started.clear()
        if self._worker_member is not None:
            member, self._worker_member = self._worker_member, None
            steps.append(("releasing the worker id", lambda: process_worker_id().leave(member)))
        steps += self.backends.closers()
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

    async def _lease_worker_id(self) -> None:
        """Take part in the process's worker id (see :mod:`catga._worker_ids`)."""
        choice = self._worker_id
        if isinstance(choice, int):
            default_generator()._adopt(choice, None)
            return
        if choice is None:
            if env_worker_id_set():
                return
            found = await self.backends.worker_id_lock()
            if found is None:
                return  # in-memory (or objects only): the process-local id
            where, lock = found
        else:
            where, lock = repr(choice), choice
        self._worker_member = await process_worker_id().join(f"{self.origin} via {where}", lock)

    @property
    def worker_id(self) -> int:
        """The Snowflake worker id of the ids this process draws now (leased while the app runs)."""
        return default_generator().worker_id

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
        return f"App(name={self.name!r}, components={len(self.components)}, running={self._running})"


class _UnitOfWork(Protocol):
    """What ``App(unit_of_work=...)`` takes: something that gives a pipeline behavior."""

    def behavior(self) -> BehaviorLike: ...


def _give_inbox(transport: Transport, inbox: InboxStore) -> None:
    """Make ``inbox`` the one the transport's ``EXACTLY_ONCE`` subscriptions claim in.

    Raises:
        ConfigurationError: the transport takes no inbox this way.
    """
    target: Any = transport
    if not hasattr(target, "inbox"):
        raise ConfigurationError(
            f"App(inbox=...) needs a transport with an `inbox` (NATS or Redis), got {type(target).__name__}; "
            "pass the inbox to the transport object instead"
        )
    target.inbox = inbox


def _dead_letters_of(transport: Transport) -> Any:
    """The transport's dead-letter queue, or None."""
    return getattr(transport, "dead_letters", None)


async def _call(fn: Callable[[], Any]) -> None:
    out = fn()
    if inspect.isawaitable(out):
        await out
