"""Waiting for events inside a workflow: ``wf.expect`` and ``wf.wait_for``.

A wait takes two sequence numbers when it is called: ``opened`` (a ``wait`` entry whose value is
the deadline, 0 for none) and ``outcome`` (an ``event`` entry: the event, ``null`` after the
timeout, or a cancel).

**Opening** (``await wf.expect(...)``, or the first half of ``wf.wait_for``) records ``opened`` and
*arms* the instance while its run still holds the lease: the store record (status ``running``)
names the event type (``wait_for``) and the outcome's sequence number and match (``wait_spec``).
From then on the engine of any process listening for the type offers every matching event at
``outcome`` (:meth:`WorkflowStore.offer <catga.workflows.WorkflowStore.offer>`: insert-if-absent,
no lease, because the runner may be blocked in the very ``wf.send`` whose handler published it).

**Awaiting** the handle takes the outcome from the run's history; else from the store (one read:
an event offered since the history was loaded); else, past the deadline, records ``null`` and on a
cancel records the cancel, both insert-if-absent (an event offered first wins and is returned);
else the run ends ``sleeping``. After storing ``sleeping`` the engine reads the history once more
and runs again at once if the outcome came in between; an engine that offered an event reads the
instance afterwards and wakes it if it is ``sleeping`` on that outcome. Of these two reads one
always sees the other side's write, so an event published after the wait was opened is never lost.

Replay: both sequence numbers are taken at the call, the recorded ``wait`` gives the deadline back,
and the recorded outcome is returned without waiting.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from catga.clock import get_clock
from catga.errors import ConcurrencyError, ConfigurationError, WorkflowCancelledError
from catga.messages import Event, type_name
from catga.workflows._values import NEVER, RunAborted, Suspend, cancelled_entry, decode_value, encode_value
from catga.workflows.store import RUNNING, HistoryEntry, WorkflowStore

if TYPE_CHECKING:
    from catga.serialization import TypeRegistry

__all__ = ("Expectation",)

E = TypeVar("E", bound=Event)

#: True inside the branches of ``wf.all`` / ``wf.any`` (waits cannot end the run there).
racing: contextvars.ContextVar[bool] = contextvars.ContextVar("catga_wf_racing", default=False)


class Expectation(Generic[E]):
    """An open wait for an event: what ``await wf.expect(...)`` returns.

    Await it for the event (an instance of the expected type), or None when the timeout passed
    first; awaiting it again returns the same. Events published after ``wf.expect`` returned count,
    whenever the handle is awaited.

    Attributes:
        event_type: the expected event type.
        match: attribute name → value (JSON types) an event must have.
        deadline: unix time the wait ends (0.0: no timeout).
    """

    __slots__ = ("_armed_here", "_done", "_seconds", "_value", "_wf", "deadline", "event_type", "match",
                 "name", "opened", "outcome")  # fmt: skip

    def __init__(
        self,
        wf: WaitSteps,
        event_type: type[E],
        opened: int,
        outcome: int,
        match: dict[str, Any],
        seconds: float | None,
    ) -> None:
        self._wf = wf
        self.event_type = event_type
        self.name = type_name(event_type)
        self.opened = opened
        self.outcome = outcome
        self.match = match
        self._seconds = seconds
        self.deadline = 0.0
        self._done = False
        self._armed_here = False  # armed by this run and no step taken since (wait_for)
        self._value: E | None = None

    def spec(self, *, wake: bool = True) -> bytes:
        """The store's ``wait_spec``: the outcome's sequence number and the match (and ``wake:
        false`` while the run sleeps for another reason: a delivery records the event, and the
        run takes it when it wakes)."""
        spec: dict[str, Any] = {"seq": self.outcome, "match": self.match}
        if not wake:
            spec["wake"] = False
        return encode_value(spec)

    def __await__(self) -> Generator[Any, None, E | None]:
        return self._wf._receive(self).__await__()

    def __repr__(self) -> str:
        state = "received" if self._done else "open"
        return f"Expectation({self.name}, match={self.match!r}, {state})"


class WaitSteps:
    """The waiting primitives of :class:`~catga.workflows.Workflow` (a base class of it)."""

    id: str
    _store: WorkflowStore
    _token: int
    _history: dict[int, HistoryEntry]
    _visited: set[int]
    _next: int
    _registry: TypeRegistry | None
    _listen: Callable[[type[Event]], None] | None
    _cancelled: Callable[[], Awaitable[bool]]
    #: the expectation opened and not yet awaited (one at a time: the store keeps one wait_for)
    _open: Expectation[Any] | None
    #: outcome sequence numbers of the waits of this run (an offer may fill one never awaited)
    _reserved: set[int]
    #: the instance's wait_spec when the run started, or None: a replayed wait is never re-armed
    #: (a compensating run; a Workflow built outside the engine)
    _armed: bytes | None

    def _take(self) -> int:
        raise NotImplementedError

    def _replayed(self, seq: int, kind: str, name: str) -> HistoryEntry | None:
        raise NotImplementedError

    async def _record(self, entry: HistoryEntry) -> None:
        raise NotImplementedError

    def expect(
        self,
        event_type: type[E],
        /,
        *,
        match: Mapping[str, object] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Coroutine[Any, Any, Expectation[E]]:
        """Open a durable wait for an event **before** the step that causes it; await the returned
        handle for the event later::

            shipped = await wf.expect(ShipmentSent, match={"order_id": order_id}, timeout=timedelta(days=2))
            await wf.send(ShipOrder(order_id))  # its handler may publish ShipmentSent at once
            event = await shipped  # the event, or None after the timeout

        Every matching event published once the ``await wf.expect(...)`` returned counts, even one
        published by the handler of the next ``wf.send`` (which :meth:`wait_for` after that send
        would miss). Awaiting the handle ends the run while it waits, like :meth:`wait_for`; the
        timeout runs from the ``expect``.

        One wait is open at a time: await the handle before the next ``expect`` or ``wait_for``.
        A ``wf.sleep`` while it is open keeps it: an event that comes meanwhile is kept for the
        handle (it does not end the sleep early). Not inside ``wf.all()`` / ``wf.any()``.

        Args:
            event_type: a :class:`~catga.messages.Event` subclass; the process running the workflow
                listens for it from now on (declare it with ``@app.workflow(events=[...])`` so that
                every replica does).
            match: attribute name → value (compared after converting the event's attribute to
                JSON types): ``match={"order_id": order.id}``.
            timeout: the longest wait from now; None waits until the event comes (or a cancel).

        Returns:
            an awaitable of the :class:`Expectation` (the sequence numbers are taken now, at the
            call).

        Raises:
            ConfigurationError: not an event type, a bad timeout, another wait still open, or
                called inside ``all()`` / ``any()``.
            WorkflowCancelledError: (when awaited) the workflow was cancelled.
        """
        return self._opening(self._expectation("expect", event_type, match, timeout))

    def wait_for(
        self,
        event_type: type[E],
        /,
        *,
        match: Mapping[str, object] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Coroutine[Any, Any, E | None]:
        """Wait durably for an event of ``event_type`` whose attributes equal ``match``; return it,
        or None when ``timeout`` passed first. The run ends while it waits, like :meth:`sleep`.

        ``wf.wait_for(...)`` is ``await (await wf.expect(...))``: only events published **after**
        the call count. When the event is the effect of an earlier step (``await wf.send(Ship(...))``
        whose handler publishes ``Shipped``), it may come before the wait: open the wait first with
        :meth:`expect`.

        Args:
            event_type: a :class:`~catga.messages.Event` subclass (listened for from now on in the
                process running the workflow: declare it with ``@app.workflow(events=[...])``).
            match: attribute name → value (compared after converting the event's attribute to
                JSON types): ``match={"order_id": order.id}``.
            timeout: the longest wait; None waits until the event comes (or a cancel).

        Raises:
            ConfigurationError: not an event type, a bad timeout, another wait still open, or
                called inside ``all()`` / ``any()``.
        """
        return self._wait_for(self._expectation("wait_for", event_type, match, timeout))

    async def _wait_for(self, expectation: Expectation[E]) -> E | None:
        return await (await self._opening(expectation))

    def _expectation(
        self,
        what: str,
        event_type: type[E],
        match: Mapping[str, object] | None,
        timeout: timedelta | float | None,
    ) -> Expectation[E]:
        if not (isinstance(event_type, type) and issubclass(event_type, Event)):
            raise ConfigurationError(f"wf.{what}() takes an Event subclass, got {event_type!r}")
        seconds = None
        if timeout is not None:
            seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else float(timeout)
            if not (seconds >= 0 and seconds != float("inf")):
                raise ConfigurationError(f"wf.{what}(timeout={timeout!r}): a finite time >= 0, or None")
        if self._open is not None:
            raise ConfigurationError(
                f"wf.{what}({type_name(event_type)}): the wait for {self._open.name} opened by "
                "wf.expect() is still open; await its handle first (one wait at a time)"
            )
        if self._listen is not None:
            self._listen(event_type)
        wanted = msgspec.to_builtins(dict(match or {}))
        opened, outcome = self._take(), self._take()
        expectation = Expectation(self, event_type, opened, outcome, wanted, seconds)
        self._open = expectation
        self._reserved.add(outcome)
        return expectation

    async def _opening(self, x: Expectation[E]) -> Expectation[E]:
        try:
            if racing.get():
                raise ConfigurationError(
                    "wf.wait_for() / wf.expect() inside wf.all()/wf.any() is not supported: "
                    "give it timeout= instead"
                )
            entry = self._replayed(x.opened, "wait", x.name)
            if entry is None:
                if await self._cancelled():
                    await self._record(cancelled_entry(x.opened, "wait", x.name))
                    raise WorkflowCancelledError(self.id)
                x.deadline = 0.0 if x._seconds is None else get_clock().time() + x._seconds
                await self._record(
                    HistoryEntry(seq=x.opened, kind="wait", name=x.name, value=encode_value(x.deadline))
                )
                await self._arm(x)
            elif entry.error_type == "WorkflowCancelledError":
                raise WorkflowCancelledError(self.id)
            else:
                x.deadline = float(decode_value(entry.value, float))
                # The instance keeps wait_for while it runs and sleeps, until the outcome is in;
                # arm again only if the last run stopped between recording and arming the wait.
                if self._armed is not None and x.outcome not in self._history:
                    armed = decode_value(self._armed) if self._armed else None
                    if not (isinstance(armed, dict) and armed.get("seq") == x.outcome):
                        await self._arm(x)
        except BaseException:
            if self._open is x:
                self._open = None
            raise
        return x

    async def _arm(self, x: Expectation[Any]) -> None:
        """From here on an event is offered at ``x.outcome`` (see the module docs)."""
        try:
            await self._store.update(self.id, self._token, RUNNING, wait_for=x.name, wait_spec=x.spec())
        except Exception as exc:
            raise RunAborted(exc) from exc
        self._armed = x.spec()
        x._armed_here = True

    def _sleeping_wait(self) -> tuple[str, bytes]:
        """``wait_for`` and ``wait_spec`` for a run that sleeps with a wait open (else empty)."""
        x = self._open
        if x is None or x.outcome in self._history:
            return "", b""
        return x.name, x.spec(wake=False)

    async def _receive(self, x: Expectation[E]) -> E | None:
        if x._done:
            return x._value
        if racing.get():
            raise ConfigurationError(
                "awaiting a wf.expect() handle inside wf.all()/wf.any() is not supported: "
                "give expect() timeout= instead"
            )
        try:
            got = self._replayed(x.outcome, "event", x.name)
            if got is None:
                got = await self._settle(x)
        finally:
            if self._open is x:
                self._open = None
        if got.error_type == "WorkflowCancelledError":
            raise WorkflowCancelledError(self.id)
        value: E | None = None
        if got.value != b"null":
            if self._registry is None:
                raise ConfigurationError("wf.wait_for() needs the engine's type registry")
            value = self._registry.decode(x.name, got.value)
        x._value, x._done = value, True
        return value

    async def _settle(self, x: Expectation[Any]) -> HistoryEntry:
        """The outcome of a wait not in the run's history: an offered event, the timeout, a cancel;
        or the run ends (Suspend) until one comes."""
        if x.deadline and get_clock().time() >= x.deadline:
            expired = HistoryEntry(seq=x.outcome, kind="event", name=x.name, value=b"null")
            return await self._outcome(x, expired)
        # An event offered since the history was loaded (during the steps after ``expect``, say).
        # Not read right after arming (``wait_for``): one offered in that instant is found by the
        # engine's look after the run stored "sleeping", which runs it again.
        if not (x._armed_here and self._next == x.outcome + 1):
            got = await self._fetch(x)
            if got is not None:
                return got
        if await self._cancelled():
            return await self._outcome(x, cancelled_entry(x.outcome, "event", x.name))
        raise Suspend(x.deadline or NEVER, wait_for=x.name, wait_spec=x.spec(), outcome=x.outcome)

    async def _fetch(self, x: Expectation[Any]) -> HistoryEntry | None:
        """The wait's outcome from the store (an engine may have offered it), or None."""
        try:
            entries = await self._store.history(self.id)
        except Exception as exc:
            raise RunAborted(exc) from exc
        for entry in entries:
            if entry.seq == x.outcome:
                self._history[entry.seq] = entry
                return self._replayed(x.outcome, "event", x.name)
        return None

    async def _outcome(self, x: Expectation[Any], entry: HistoryEntry) -> HistoryEntry:
        """Record the runner's own outcome (timeout, cancel) unless an offered event came first."""
        try:
            await self._store.record(self.id, self._token, entry)
        except ConcurrencyError as exc:
            got = await self._fetch(x)
            if got is None:  # taken, yet not there: the store is inconsistent; the sweep retries
                raise RunAborted(exc) from exc
            return got
        except Exception as exc:
            raise RunAborted(exc) from exc
        self._history[entry.seq] = entry
        self._visited.add(entry.seq)
        return entry
