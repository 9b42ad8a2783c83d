"""The ``wf`` object a workflow function receives, and deterministic replay of its steps.

Every step the code asks for (``wf.step``, ``wf.send``, ``wf.sleep``, the choice of ``wf.any``) takes
the next sequence number **when it is called** (not when awaited), so the numbering follows the code
and is the same on every run. A step whose number is in the history returns (or raises) what was
recorded, after checking that the recorded kind and name are the ones asked for
(:class:`~catga.errors.NonDeterminismError` otherwise); a new step runs, its outcome is recorded
under the runner's fencing token, and only then is it returned.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from catga._delivery import retry_delay
from catga.clock import get_clock
from catga.errors import (
    ConfigurationError,
    NonDeterminismError,
    WorkflowCancelledError,
    WorkflowStepError,
)
from catga.messages import Event, Metadata, Request, type_name
from catga.workflows._values import (
    CommandFailed,
    RunAborted,
    Suspend,
    decode_value,
    encode_value,
    error_type,
    result_type,
    return_type,
    step_key,
    step_message_id,
)
from catga.workflows.store import HistoryEntry, WorkflowStore
from catga.workflows.waits import Expectation, WaitSteps, racing

if TYPE_CHECKING:
    from catga.mediator import Mediator
    from catga.serialization import TypeRegistry

__all__ = ("Workflow",)

T = TypeVar("T")
E = TypeVar("E", bound=Event)


class _Compensation:
    __slots__ = ("call", "name", "seq")

    def __init__(self, seq: int, name: str, call: Callable[[int], Awaitable[object]]) -> None:
        self.seq = seq
        self.name = name
        self.call = call


class Workflow(WaitSteps):
    """What a workflow function gets as ``wf``: its id and input, and the step primitives.

    Attributes:
        id: the workflow instance id.
        name: the workflow's registered name.
        version: the version of the code running it.
    """

    def __init__(
        self,
        *,
        id: str,
        name: str,
        version: int,
        store: WorkflowStore,
        token: int,
        history: list[HistoryEntry],
        mediator: Mediator,
        cancelled: Callable[[], Awaitable[bool]],
        step_retries: int = 0,
        retry_backoff: float = 0.2,
        registry: TypeRegistry | None = None,
        listen: Callable[[type[Event]], None] | None = None,
        armed: bytes | None = None,
    ) -> None:
        self.id = id
        self._registry = registry
        self._listen = listen
        self._armed = armed
        self.name = name
        self.version = version
        self._store = store
        self._token = token
        self._history = {e.seq: e for e in history}
        self._visited: set[int] = set()
        self._next = 0
        self._mediator = mediator
        self._cancelled = _aborting(cancelled)
        self._step_retries = step_retries
        self._retry_backoff = retry_backoff
        self.compensations: list[_Compensation] = []
        self._open: Expectation[Any] | None = None
        self._reserved: set[int] = set()

    # -- the primitives ---------------------------------------------------------------------------

    def step(
        self,
        fn: Callable[..., Awaitable[T]],
        /,
        *args: Any,
        name: str | None = None,
        compensate: Callable[[T], Awaitable[object]] | None = None,
        retries: int | None = None,
        **kwargs: Any,
    ) -> Coroutine[Any, Any, T]:
        """Run ``await fn(*args, **kwargs)`` once, durably: its result is recorded before the workflow
        goes on, and returned from the record on every later run.

        Args:
            fn: an async function returning data (JSON-encodable; decoded back into its return
                annotation on replay).
            name: the step's name in the history (default ``fn.__qualname__``); replay checks it.
            compensate: ``async def undo(result)``, run with the step's result when the workflow
                fails or is cancelled after this step completed (in reverse order of the steps).
            retries: how often a raising ``fn`` is tried again (default the engine's ``step_retries``).

        Returns:
            an awaitable of ``fn``'s result; the sequence number is taken now, at the call.

        Raises:
            WorkflowStepError: (when awaited) ``fn`` raised on its last try, now or when recorded.
        """
        step_name = name or getattr(fn, "__qualname__", None) or type(fn).__name__
        seq = self._take()
        rtype = return_type(fn)
        undo = None if compensate is None else (lambda value, _seq: compensate(value))
        return self._run_step(seq, "step", step_name, lambda: fn(*args, **kwargs), rtype, undo, retries)

    def send(
        self, command: Request[T], /, *, compensate: Request[Any] | None = None
    ) -> Coroutine[Any, Any, T]:
        """Send a command (or query) through the app's pipeline once, durably; returns its value.

        The command's message id is derived from the workflow id and the step's sequence number, so
        the idempotency behavior runs its handler once even when a crash makes the step run again.

        Args:
            command: the command.
            compensate: a command sent (the same way) to undo it when the workflow fails or is
                cancelled later.

        Raises:
            WorkflowStepError: (when awaited) the Result failed.
        """
        seq = self._take()
        name = type_name(type(command))
        undo = None
        if compensate is not None:
            undo_command = compensate

            async def undo(_: object, undo_seq: int) -> object:
                return await self._dispatch(undo_command, undo_seq)

        return self._run_step(
            seq, "send", name, lambda: self._dispatch(command, seq), result_type(type(command)), undo, 0
        )

    def sleep(self, delay: timedelta | float) -> Coroutine[Any, Any, None]:
        """Sleep durably: the workflow's run ends and a timer on the app's scheduler resumes it (on
        any replica) once ``delay`` has passed. Inside :meth:`all` / :meth:`any` the run waits
        instead (other branches are running), still until the recorded wake time.

        Raises:
            ConfigurationError: a negative or non-finite delay.
        """
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if not (seconds >= 0 and seconds != float("inf")):
            raise ConfigurationError(f"wf.sleep({delay!r}): the delay must be a finite time >= 0")
        seq = self._take()
        return self._sleep(seq, seconds)

    async def all(self, *steps: Awaitable[Any]) -> list[Any]:
        """Run steps concurrently and return their results in order; the first failure cancels the
        others (they run again on the next run unless recorded) and is raised."""
        token = racing.set(True)
        try:
            tasks = [asyncio.ensure_future(s) for s in steps]
        finally:
            racing.reset(token)
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def any(self, *steps: Awaitable[Any]) -> tuple[int, Any]:
        """Run steps concurrently until the first finishes; return ``(its index, its result)``.

        The winner is recorded, so a replay awaits only the winner (the others do not run again).
        The losers are cancelled; those cut short mid-step may have had effects (key them with
        :func:`current_step_key`). A sleep among them is a timeout::

            index, value = await wf.any(wf.send(Charge(...)), wf.sleep(timedelta(minutes=5)))

        Raises:
            Exception: what the winner raised (WorkflowStepError for a failed step).
        """
        seq = self._take()
        entry = self._replayed(seq, "any", "any")
        if entry is not None:
            index = int(decode_value(entry.value, int))
            for i, step in enumerate(steps):
                if i != index and inspect.iscoroutine(step):
                    step.close()
            return index, await steps[index]
        token = racing.set(True)
        try:
            tasks = [asyncio.ensure_future(s) for s in steps]
        finally:
            racing.reset(token)
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        index = min(i for i, t in enumerate(tasks) if t in done)
        for task in tasks:
            if task is not tasks[index]:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._record(HistoryEntry(seq=seq, kind="any", name="any", value=encode_value(index)))
        return index, tasks[index].result()

    # -- replay -------------------------------------------------------------------------------------

    def _take(self) -> int:
        seq = self._next
        self._next += 1
        return seq

    def _replayed(self, seq: int, kind: str, name: str) -> HistoryEntry | None:
        entry = self._history.get(seq)
        if entry is None:
            return None
        if entry.kind != kind or entry.name != name:
            raise NonDeterminismError(self.id, seq, f"{entry.kind} {entry.name}", f"{kind} {name}")
        self._visited.add(seq)
        return entry

    def unvisited(self) -> list[HistoryEntry]:
        """Recorded entries this run did not reach (the code asks for fewer steps than it did); an
        event offered to a wait this run opened but did not await is not one."""
        return [
            e
            for s, e in sorted(self._history.items())
            if s not in self._visited and not (s in self._reserved and e.kind == "event")
        ]

    async def _record(self, entry: HistoryEntry) -> None:
        try:
            await self._store.record(self.id, self._token, entry)
        except Exception as exc:  # the store failed or the lease is lost: not the workflow's failure
            raise RunAborted(exc) from exc
        self._history[entry.seq] = entry
        self._visited.add(entry.seq)

    async def _run_step(
        self,
        seq: int,
        kind: str,
        name: str,
        call: Callable[[], Awaitable[Any]],
        rtype: Any,
        undo: Callable[[Any, int], Awaitable[object]] | None,
        retries: int | None,
    ) -> Any:
        entry = self._replayed(seq, kind, name)
        if entry is None:
            if await self._cancelled():
                await self._record(
                    HistoryEntry(
                        seq=seq,
                        kind=kind,
                        name=name,
                        ok=False,
                        value=b"cancelled",
                        error_type="WorkflowCancelledError",
                    )
                )
                raise WorkflowCancelledError(self.id)
            entry = await self._execute(seq, kind, name, call, retries)
        if entry.error_type == "WorkflowCancelledError":
            raise WorkflowCancelledError(self.id)
        if not entry.ok:
            raise WorkflowStepError(
                self.id, seq, name, entry.error_type, entry.value.decode(errors="replace")
            )
        value = decode_value(entry.value, rtype)
        if undo is not None:
            self.compensations.append(_Compensation(seq, name, lambda undo_seq: undo(value, undo_seq)))
        return value

    async def _execute(
        self, seq: int, kind: str, name: str, call: Callable[[], Awaitable[Any]], retries: int | None
    ) -> HistoryEntry:
        tries = 1 + (self._step_retries if retries is None else retries)
        key = step_key.set(f"{self.id}:{seq}")
        try:
            for attempt in range(1, tries + 1):
                try:
                    value = await call()
                except (WorkflowStepError, WorkflowCancelledError, NonDeterminismError, Suspend):
                    raise
                except Exception as exc:
                    if attempt < tries:
                        await asyncio.sleep(retry_delay(self._retry_backoff, 30.0, attempt))
                        continue
                    entry = HistoryEntry(
                        seq=seq,
                        kind=kind,
                        name=name,
                        ok=False,
                        value=str(exc).encode(),
                        error_type=error_type(exc),
                    )
                    break
                entry = HistoryEntry(seq=seq, kind=kind, name=name, value=encode_value(value))
                break
        finally:
            step_key.reset(key)
        await self._record(entry)
        return entry

    async def _dispatch(self, command: Request[Any], seq: int) -> Any:
        mid = step_message_id(self.id, seq)
        metadata = Metadata(
            message_id=mid,
            correlation_id=step_message_id(self.id, -1),
            created_at=get_clock().time(),
        )
        result = await self._mediator.send(command, None, metadata=metadata)
        if not result.ok:
            raise CommandFailed(str(result.code), result.error or "")
        return result.value

    async def _sleep(self, seq: int, seconds: float) -> None:
        entry = self._replayed(seq, "sleep", "sleep")
        if entry is None:
            wake_at = get_clock().time() + seconds
            await self._record(HistoryEntry(seq=seq, kind="sleep", name="sleep", value=encode_value(wake_at)))
        else:
            wake_at = float(decode_value(entry.value, float))
        left = wake_at - get_clock().time()
        after = self._history.get(self._next)
        if after is not None and after.kind == "cancel":  # cancelled out of this sleep before
            self._visited.add(self._take())
            raise WorkflowCancelledError(self.id)
        if left <= 0:
            return
        if not racing.get() and await self._cancelled():
            seq = self._take()
            marker = HistoryEntry(
                seq=seq,
                kind="cancel",
                name="cancel",
                ok=False,
                value=b"cancelled",
                error_type="WorkflowCancelledError",
            )
            await self._record(marker)
            raise WorkflowCancelledError(self.id)
        if racing.get():
            await get_clock().sleep(left)
            return
        raise Suspend(wake_at, *self._sleeping_wait())

    async def run_compensations(self) -> None:
        """Run the compensations of the completed steps in reverse order, each once, durably (as
        ``compensate`` steps after the workflow's own steps).

        Raises:
            WorkflowStepError: a compensation failed after its retries.
        """
        # by step sequence number, not completion order: steps of wf.all() finish in any order
        for comp in sorted(self.compensations, key=lambda c: c.seq, reverse=True):
            seq = self._take()
            name = f"undo {comp.name}"
            entry = self._replayed(seq, "compensate", name)
            if entry is None:
                entry = await self._execute(
                    seq, "compensate", name, functools.partial(comp.call, seq), max(self._step_retries, 3)
                )
            if not entry.ok:
                raise WorkflowStepError(
                    self.id, seq, name, entry.error_type, entry.value.decode(errors="replace")
                )


def _aborting(check: Callable[[], Awaitable[bool]]) -> Callable[[], Awaitable[bool]]:
    """``check`` with a store failure turned into :class:`RunAborted`."""

    async def checked() -> bool:
        try:
            return await check()
        except Exception as exc:
            raise RunAborted(exc) from exc

    return checked
