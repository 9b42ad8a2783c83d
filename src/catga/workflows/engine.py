"""The workflow engine: registers workflow functions, starts instances and runs them to the end.

A run takes the instance's lease (a fencing token), loads its history, calls the workflow function
with a fresh :class:`~catga.workflows.Workflow` (recorded steps replay, new ones run and are
recorded), and renews the lease while it runs. It ends when the function

* returns: ``completed`` with the result;
* sleeps: ``sleeping`` until the wake time; a durable timer on the app's scheduler (and, as a
  fallback, the engine's sweep) starts a new run then; no task runs meanwhile;
* raises (a failed step, an error in its own code, a cancel): the compensations of the completed
  steps run in reverse order, each recorded, and it ends ``compensated`` (``cancelled`` after a
  cancel), or ``failed`` when there was nothing to compensate or a compensation failed after its
  retries;
* meets other steps than the history recorded: ``failed`` with a
  :class:`~catga.errors.NonDeterminismError` (nothing mis-replayed).

A runner that dies leaves its lease to expire; every engine sweeps the store every
``poll_interval`` for instances with work to do and no live lease, and takes them over: a new run
replays the history and goes on from the first unrecorded step. A step cut short by the crash runs
again (key its effect with :func:`~catga.workflows.current_step_key`; ``wf.send`` does that itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import logging
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from catga._outage import OutageLog
from catga.clock import get_clock
from catga.errors import (
    ConfigurationError,
    NonDeterminismError,
    StaleFencingTokenError,
    WorkflowCancelledError,
    WorkflowError,
)
from catga.messages import Event
from catga.protocols import validate_identifier
from catga.serialization import TypeRegistry, default_registry
from catga.workflows._values import NEVER, RunAborted, Suspend, decode_value, encode_value
from catga.workflows.context import Workflow
from catga.workflows.events import EventWaits
from catga.workflows.store import (
    CANCELLED,
    COMPENSATED,
    COMPENSATING,
    COMPLETED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    SLEEPING,
    HistoryEntry,
    WorkflowInstance,
    WorkflowStore,
)

if TYPE_CHECKING:
    from catga.mediator import Mediator

__all__ = ("WorkflowEngine", "WorkflowFunction", "Timer")

logger = logging.getLogger("catga.workflows")

#: ``async def my_workflow(wf: Workflow, input: T) -> R``
WorkflowFunction = Callable[[Workflow, Any], Awaitable[Any]]
#: Schedules a wake-up of a workflow: ``await timer(workflow_id, wake_at, timer_id)``.
Timer = Callable[[str, float, str], Awaitable[None]]


class _Registered:
    __slots__ = ("fn", "input_type", "name", "version")

    def __init__(self, name: str, version: int, fn: WorkflowFunction) -> None:
        self.name = name
        self.version = version
        self.fn = fn
        self.input_type = _input_type(fn)


def _input_type(fn: WorkflowFunction) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:
        return Any
    params = [p for p in hints if p != "return"]
    return hints[params[1]] if len(params) > 1 else Any


class WorkflowEngine(EventWaits):
    """Runs durable workflows on a :class:`~catga.workflows.WorkflowStore` (one per app).

    Args:
        store: where instances and histories are kept.
        mediator: sends the commands of ``wf.send``.
        timer: schedules the wake-up of a sleeping workflow (the app's scheduler); None: only the
            sweep wakes it.
        owner: this runner's name in leases (default a random one).
        lease: seconds a run's lease lasts (renewed every third of it while the run goes on); a
            runner that dies is taken over this long after its last renewal.
        poll_interval: seconds between sweeps for workflows with work and no runner.
        step_retries: default tries after the first of a raising ``wf.step`` (compensations are
            tried at least 4 times).
        registry: encodes and decodes the events ``wf.wait_for`` receives (default: catga's).
        retry_backoff: seconds before the first retry of a step, doubled per retry (30 s at most).

    Raises:
        ConfigurationError: a duration or count out of range.
    """

    def __init__(
        self,
        store: WorkflowStore,
        mediator: Mediator,
        *,
        timer: Timer | None = None,
        owner: str | None = None,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        step_retries: int = 0,
        retry_backoff: float = 0.2,
        registry: TypeRegistry | None = None,
    ) -> None:
        if not (lease > 0 and poll_interval > 0) or step_retries < 0:
            raise ConfigurationError("lease and poll_interval must be > 0 s, step_retries >= 0")
        self.store = store
        self.mediator = mediator
        self.timer = timer
        self.owner = owner or f"wf-{uuid.uuid4().hex[:12]}"
        self.lease = lease
        self.poll_interval = poll_interval
        self.step_retries = step_retries
        self.retry_backoff = retry_backoff
        self.registry = default_registry() if registry is None else registry
        self._listening: set[type[Event]] = set()
        self._workflows: dict[tuple[str, int], _Registered] = {}
        self._latest: dict[str, int] = {}
        self._runs: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()  # resumed while a run of it was under way here
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self._sweeps = OutageLog(logger, "workflow sweep", level=logging.ERROR)

    # -- registration ------------------------------------------------------------------------------

    def register(
        self,
        fn: WorkflowFunction,
        *,
        name: str | None = None,
        version: int = 1,
        events: Iterable[type[Event]] = (),
    ) -> WorkflowFunction:
        """Register ``async def fn(wf, input)`` as workflow ``name`` (default ``fn.__name__``).

        Several versions of one name may be registered: new instances start on the highest, running
        ones resume on the version that started them. ``events``: the event types the workflow
        ``wf.wait_for``-s, listened for from now on (see :meth:`listen`).

        Raises:
            ConfigurationError: not an async function, a bad version, or that name and version taken.
            InvalidIdentifierError: an invalid name.
        """
        if not asyncio.iscoroutinefunction(fn):
            raise ConfigurationError(f"a workflow must be an async def taking (wf, input), got {fn!r}")
        wf_name = validate_identifier(name or fn.__name__, "workflow name")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ConfigurationError(f"workflow {wf_name!r}: version must be an int >= 1, got {version!r}")
        key = (wf_name, version)
        if key in self._workflows and self._workflows[key].fn is not fn:
            raise ConfigurationError(f"workflow {wf_name!r} version {version} is already registered")
        self._workflows[key] = _Registered(wf_name, version, fn)
        self._latest[wf_name] = max(version, self._latest.get(wf_name, 0))
        for event_type in events:
            self.listen(event_type)
        return fn

    def names(self) -> dict[str, tuple[int, ...]]:
        """Registered workflow names and their versions."""
        found: dict[str, list[int]] = {}
        for name, version in self._workflows:
            found.setdefault(name, []).append(version)
        return {n: tuple(sorted(v)) for n, v in found.items()}

    # -- the public operations ----------------------------------------------------------------------

    async def start_workflow(
        self, workflow: str | WorkflowFunction, input: object = None, *, id: str | None = None
    ) -> str:
        """Start an instance of ``workflow`` with ``input`` and return its id (see ``App.start_workflow``)."""
        name = workflow if isinstance(workflow, str) else self._name_of(workflow)
        version = self._latest.get(name)
        if version is None:
            known = ", ".join(sorted(self._latest)) or "none"
            raise ConfigurationError(
                f"no workflow named {name!r} is registered (registered: {known}); "
                "decorate it with @app.workflow"
            )
        wid = f"wf-{uuid.uuid4().hex}" if id is None else validate_identifier(id, "workflow id")
        created = await self.store.create(
            WorkflowInstance(
                id=wid, name=name, version=version, input=encode_value(input), created_at=get_clock().time()
            )
        )
        if created:
            self.resume(wid)
        return wid

    def _name_of(self, fn: WorkflowFunction) -> str:
        for (name, _), reg in self._workflows.items():
            if reg.fn is fn:
                return name
        raise ConfigurationError(f"{fn!r} is not a registered workflow; decorate it with @app.workflow")

    async def cancel(self, id: str) -> bool:
        """Ask an unfinished workflow to stop: at its next step it raises
        :class:`~catga.errors.WorkflowCancelledError`, its compensations run and it ends ``cancelled``.

        Returns:
            True if it was unfinished; False if it is finished or unknown.
        """
        requested = await self.store.request_cancel(id)
        if requested:
            self.resume(id)
        return requested

    async def wait(self, id: str, timeout: float | None = 30.0) -> WorkflowInstance:
        """Wait until the workflow is finished (it may run on another replica); return its state.

        Raises:
            LookupError: no such workflow.
            TimeoutError: not finished within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                found = await self.store.get(id)
                if found is None:
                    raise LookupError(f"no workflow {id!r}")
                if found.status in FINISHED:
                    return found
                run = self._runs.get(id)
                if run is not None:
                    await asyncio.wait({run}, timeout=self.poll_interval)
                else:
                    await asyncio.sleep(min(0.05, self.poll_interval))

    async def get(self, id: str) -> WorkflowInstance | None:
        """The state of workflow ``id``, or None."""
        return await self.store.get(id)

    async def list_workflows(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """Up to ``limit`` workflows with that status (any if None), oldest first."""
        return await self.store.list_instances(status, limit)

    async def history(self, id: str) -> list[HistoryEntry]:
        """The recorded steps of workflow ``id``, in order."""
        return await self.store.history(id)

    def result(self, instance: WorkflowInstance, typ: Any = Any) -> Any:
        """The decoded result of a completed instance (plain JSON types unless ``typ`` is given)."""
        return decode_value(instance.result or b"null", typ)

    # -- running ------------------------------------------------------------------------------------

    def resume(self, id: str) -> None:
        """Start a run of ``id`` in this engine's task set; if one is under way here, it makes one
        more attempt when it ends (the wake-up may have come after its last look at the store)."""
        if self._closing:
            return
        run = self._runs.get(id)
        if run is not None and not run.done():
            self._again.add(id)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(id), name=f"catga-workflow-{id}", context=contextvars.Context()
        )
        self._runs[id] = task
        task.add_done_callback(lambda t: self._runs.pop(id, None) if self._runs.get(id) is t else None)

    async def _run(self, id: str) -> None:
        try:
            while not self._closing:
                self._again.discard(id)
                again = await self._attempt(id)
                if not again and id not in self._again:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the store failed: the sweep tries again later
            logger.exception("workflow %s: run failed; it is retried by the sweep", id)
        finally:
            self._again.discard(id)

    async def _attempt(self, id: str) -> bool:
        """One run; True when the instance should run again at once (a cancel came in)."""
        token = await self.store.acquire(id, self.owner, self.lease)
        if token is None:
            return False
        work = asyncio.ensure_future(self._execute(id, token))
        try:
            while True:
                done, _ = await asyncio.wait({work}, timeout=self.lease / 3)
                if done:
                    break
                try:
                    kept = await self.store.renew(id, token, self.lease)
                except Exception as exc:  # keep going: a taken-over lease refuses our writes
                    logger.warning("workflow %s: lease renewal failed: %s", id, exc)
                    continue
                if not kept:
                    logger.warning("workflow %s: lease lost to another runner; stopping here", id)
                    work.cancel()
                    await asyncio.wait({work})
                    return False
        except asyncio.CancelledError:  # the app stops: give the workflow back at once
            if not work.done():
                work.cancel()
                await asyncio.wait({work})
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.lease / 3):
                    await asyncio.shield(self.store.release(id, token))
            raise
        try:
            return work.result()
        finally:  # also when the run failed (the store, say): the sweep takes it up again at once
            try:
                await self.store.release(id, token)
            except Exception as exc:
                logger.warning("workflow %s: lease release failed (it expires): %s", id, exc)

    async def _execute(self, id: str, token: int) -> bool:
        instance = await self.store.get(id)
        if instance is None or instance.status in FINISHED:
            return False
        reg = self._workflows.get((instance.name, instance.version))
        if reg is None:
            await self.store.update(
                id,
                token,
                FAILED,
                error=f"workflow {instance.name!r} version {instance.version} is not registered in this "
                "app; register that version (keep old versions until their workflows finish)",
            )
            return False
        history = await self.store.history(id)
        compensating = instance.status == COMPENSATING
        status = COMPENSATING if compensating else RUNNING  # a running one's open wait stays armed
        await self.store.update(id, token, status, wait_for=instance.wait_for, wait_spec=instance.wait_spec)
        cancel_seen = instance.cancel_requested

        async def cancelled() -> bool:
            nonlocal cancel_seen
            if not cancel_seen:
                found = await self.store.get(id)
                cancel_seen = found is not None and found.cancel_requested
            return cancel_seen

        wf = Workflow(
            id=id,
            name=instance.name,
            version=instance.version,
            store=self.store,
            token=token,
            history=history,
            mediator=self.mediator,
            cancelled=cancelled,
            step_retries=self.step_retries,
            retry_backoff=self.retry_backoff,
            registry=self.registry,
            listen=self.listen,
            armed=None if compensating else instance.wait_spec,
        )
        try:
            value = await reg.fn(wf, decode_value(instance.input, reg.input_type))
            left = [e for e in wf.unvisited() if e.kind != "compensate"]
            if left:
                first = left[0]
                raise NonDeterminismError(id, first.seq, f"{first.kind} {first.name}", "")
            await self.store.update(id, token, COMPLETED, result=encode_value(value))
            return False
        except Suspend as sleep:
            await self.store.update(
                id, token, SLEEPING, wake_at=sleep.wake_at, wait_for=sleep.wait_for, wait_spec=sleep.wait_spec
            )
            found = await self.store.get(id)
            if found is not None and found.status == PENDING:
                return True  # cancelled while going to sleep
            if sleep.outcome >= 0 and any(e.seq == sleep.outcome for e in await self.store.history(id)):
                return True  # the awaited event was offered while going to sleep
            if self.timer is not None and sleep.wake_at < NEVER:
                try:
                    await self.timer(id, sleep.wake_at, _timer_id(id, sleep.wake_at))
                except Exception as exc:  # the sweep wakes it all the same, within poll_interval
                    logger.warning(
                        "workflow %s: wake-up timer not scheduled (%s); the sweep wakes it", id, exc
                    )
            return False
        except RunAborted as aborted:
            _log_aborted(id, aborted)
            return False
        except NonDeterminismError as exc:
            logger.error("%s", exc)
            await self.store.update(id, token, FAILED, error=str(exc))
            return False
        except Exception as exc:
            return await self._compensate(wf, token, exc)

    async def _compensate(self, wf: Workflow, token: int, cause: Exception) -> bool:
        id = wf.id
        cancelled = isinstance(cause, WorkflowCancelledError)
        reason = str(cause) if isinstance(cause, WorkflowError) else f"{type(cause).__name__}: {cause}"
        if not wf.compensations:
            await self.store.update(id, token, CANCELLED if cancelled else FAILED, error=reason)
            return False
        await self.store.update(id, token, COMPENSATING, error=reason)
        try:
            await wf.run_compensations()
        except RunAborted as aborted:
            _log_aborted(id, aborted)
            return False
        except NonDeterminismError as exc:
            await self.store.update(id, token, FAILED, error=str(exc))
            return False
        except Exception as exc:
            logger.error("workflow %s: compensation failed: %s (after: %s)", id, exc, reason)
            await self.store.update(id, token, FAILED, error=f"{exc} (compensating after: {reason})")
            return False
        await self.store.update(id, token, CANCELLED if cancelled else COMPENSATED, error=reason)
        return False

    # -- the sweep and the lifecycle -----------------------------------------------------------------

    async def sweep(self) -> int:
        """Start runs for every instance with work to do and no live lease; return how many."""
        ids = await self.store.due()
        for wid in ids:
            self.resume(wid)
        return len(ids)

    async def _sweep_loop(self) -> None:
        while not self._closing:
            try:
                await self.sweep()
            except Exception as exc:
                self._sweeps.failure(exc, f"retrying every {self.poll_interval:g} s")
            else:
                if self._sweeps.failing:
                    self._sweeps.recovered()
            await asyncio.sleep(self.poll_interval)

    async def start(self) -> None:
        """Start the sweep (idempotent)."""
        self._closing = False
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(
                self._sweep_loop(), name="catga-workflow-sweep", context=contextvars.Context()
            )

    async def aclose(self) -> None:
        """Stop the sweep and cancel the runs under way (their leases are released when they end
        normally, else they expire; another runner resumes them from their history)."""
        self._closing = True
        tasks = [t for t in (self._sweeper, *self._runs.values()) if t is not None]
        self._sweeper = None
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def __aenter__(self) -> WorkflowEngine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"WorkflowEngine({len(self._workflows)} workflow(s), {len(self._runs)} running here)"


def _log_aborted(id: str, aborted: RunAborted) -> None:
    if isinstance(aborted.cause, StaleFencingTokenError):
        logger.warning("workflow %s: another runner took it over; stopping here", id)
    else:
        logger.warning("workflow %s: the store failed (%s); the run stops, the sweep retries it", id, aborted)


def _timer_id(workflow_id: str, wake_at: float) -> str:
    digest = hashlib.blake2b(f"{workflow_id}@{wake_at!r}".encode(), digest_size=12).hexdigest()
    return f"wf-wake-{digest}"
