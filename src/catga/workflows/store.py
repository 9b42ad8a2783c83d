"""What a workflow store keeps: instances, their recorded history, and the runner's lease.

A :class:`WorkflowStore` holds, per workflow instance:

* a :class:`WorkflowInstance`: name, version, input, status, result or error, when to wake it, and
  whether a cancel was requested;
* its history: one :class:`HistoryEntry` per step, keyed by the step's sequence number. Recording is
  insert-if-absent by sequence number (optimistic concurrency: a second writer of the same step gets
  :class:`~catga.errors.ConcurrencyError`);
* a lease with a fencing token: one runner at a time. :meth:`WorkflowStore.acquire` returns a token
  higher than any before it; every write (:meth:`~WorkflowStore.record`,
  :meth:`~WorkflowStore.update`) carries it and is refused with
  :class:`~catga.errors.StaleFencingTokenError` once a newer runner has taken over. One write
  needs no lease: :meth:`~WorkflowStore.offer`, the insert-if-absent of an awaited event.

The in-memory reference is :class:`catga.memory.MemoryWorkflowStore`; the conformance suite is
:class:`catga.testing.contracts.WorkflowStoreContract`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = (
    "ACTIVE",
    "CANCELLED",
    "COMPENSATED",
    "COMPENSATING",
    "COMPLETED",
    "FAILED",
    "FINISHED",
    "PENDING",
    "RUNNING",
    "SLEEPING",
    "STATUSES",
    "HistoryEntry",
    "WorkflowInstance",
    "WorkflowStore",
)

PENDING = "pending"  #: started, no runner has taken it yet (or it is due again: woken, cancelled)
RUNNING = "running"  #: a runner holds its lease and is executing it
SLEEPING = "sleeping"  #: waiting for its ``wake_at`` (no task runs for it; a timer wakes it)
COMPENSATING = "compensating"  #: a step failed or it was cancelled: compensations are running
COMPLETED = "completed"  #: returned a result
COMPENSATED = "compensated"  #: failed or cancelled, every compensation ran
CANCELLED = "cancelled"  #: cancelled; no step had a compensation to run
FAILED = "failed"  #: failed and could not be compensated (or replay found different code)

#: Every status, in the order above.
STATUSES = (PENDING, RUNNING, SLEEPING, COMPENSATING, COMPLETED, COMPENSATED, CANCELLED, FAILED)
#: The statuses of a workflow that still has work to do.
ACTIVE = frozenset({PENDING, RUNNING, SLEEPING, COMPENSATING})
#: The final statuses: nothing runs for such a workflow again.
FINISHED = frozenset({COMPLETED, COMPENSATED, CANCELLED, FAILED})


@dataclass(frozen=True, slots=True)
class WorkflowInstance:
    """One workflow run's state (what :meth:`WorkflowStore.get` returns).

    Attributes:
        id: the instance id (a valid identifier, given by the caller or generated).
        name: the workflow's registered name.
        version: the version of the code that started it (resumed with that version's code).
        input: the encoded input (JSON).
        status: one of :data:`STATUSES`.
        result: the encoded result (JSON) once completed, else ``b""``.
        error: why it failed, was compensated or cancelled, else ``""``.
        created_at: unix time it was started.
        updated_at: unix time of its last status change.
        wake_at: unix time a sleeping workflow is due again (0.0: not sleeping).
        cancel_requested: :meth:`WorkflowStore.request_cancel` was called.
        token: the fencing token of its latest lease (0: never leased).
        owner: who holds (or last held) the lease, ``""`` if nobody.
        lease_until: unix time the lease ends (0.0: not leased).
        wait_for: the event type name a sleeping workflow, or a running one with a wait open,
            waits for (``""``: none).
        wait_spec: what the engine needs to deliver that event (opaque to the store).
    """

    id: str
    name: str
    version: int
    input: bytes
    status: str = PENDING
    result: bytes = b""
    error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    wake_at: float = 0.0
    cancel_requested: bool = False
    token: int = 0
    owner: str = ""
    lease_until: float = 0.0
    wait_for: str = ""
    wait_spec: bytes = b""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One recorded step of a workflow.

    Attributes:
        seq: the step's sequence number (0, 1, 2... in the order the code asks for steps).
        kind: ``step``, ``send``, ``sleep``, ``any``, ``cancel`` or ``compensate``.
        name: the step's name (a function's qualified name, a command's type name...).
        ok: True if the step returned; False if it raised.
        value: the encoded return value (JSON), or the error text when not ``ok``.
        at: unix time it was recorded.
        error_type: the raised exception's class name when not ``ok``.
    """

    seq: int
    kind: str
    name: str
    ok: bool = True
    value: bytes = b"null"
    at: float = 0.0
    error_type: str = ""


@runtime_checkable
class WorkflowStore(Protocol):
    """Durable state of workflow instances (see the module docs for the model)."""

    async def create(self, instance: WorkflowInstance) -> bool:
        """Store a new instance; False (and nothing changed) if one with that id exists.

        Raises:
            InvalidIdentifierError: the id is not a valid identifier.
        """
        ...

    async def get(self, id: str) -> WorkflowInstance | None:
        """The instance with that id, or None."""
        ...

    async def list_instances(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """Up to ``limit`` instances, oldest first, with that status (any status if None)."""
        ...

    async def history(self, id: str) -> list[HistoryEntry]:
        """The recorded steps of an instance in sequence order ([] if none or no such instance)."""
        ...

    async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
        """Take the lease of an unfinished instance for ``ttl`` seconds.

        Returns:
            a fencing token higher than every earlier one of this instance, or None when another
            owner's lease has not ended, or the instance is finished or unknown. The current owner
            acquiring again gets a new, higher token.
        """
        ...

    async def renew(self, id: str, token: int, ttl: float) -> bool:
        """Extend the lease ``token`` names to ``ttl`` seconds from now; False if it is not current."""
        ...

    async def release(self, id: str, token: int) -> None:
        """End the lease ``token`` names now (no-op if it is not current)."""
        ...

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        """Add ``entry`` to the history, only if its sequence number is free.

        Raises:
            StaleFencingTokenError: ``token`` is not the instance's current lease (nothing stored).
            ConcurrencyError: that sequence number is already recorded (nothing stored).
        """
        ...

    async def update(
        self,
        id: str,
        token: int,
        status: str,
        *,
        result: bytes = b"",
        error: str = "",
        wake_at: float = 0.0,
        wait_for: str = "",
        wait_spec: bytes = b"",
    ) -> None:
        """Set the status (and result, error, wake time, awaited event) under the lease ``token``
        names. Every call sets every one of them (what is not given is cleared). ``wait_for`` and
        ``wait_spec`` are kept only with status ``running`` (a run that has opened a wait with
        ``wf.expect``) or ``sleeping``; any other status clears them, and so does ``sleeping``
        turned into ``pending`` by an earlier cancel request.

        Raises:
            StaleFencingTokenError: ``token`` is not the instance's current lease (nothing changed).
        """
        ...

    async def request_cancel(self, id: str) -> bool:
        """Mark an unfinished instance for cancellation (a sleeping one becomes pending at once).

        Returns:
            True if it is unfinished (the runner compensates and ends it), False if it is finished
            or unknown.
        """
        ...

    async def waiting(self, event_type: str, limit: int = 1000) -> list[WorkflowInstance]:
        """Up to ``limit`` running or sleeping instances whose ``wait_for`` is ``event_type``,
        oldest first (a running one is a run that has opened a wait and not yet gone to sleep)."""
        ...

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        """Add ``entry`` to the history if its sequence number is free, **without** a lease: how an
        event reaches a workflow whose lease its runner holds (the runner may be blocked in the very
        step that published the event). The engine offers only at the sequence number a wait
        reserved for its outcome, so a runner's own record there (a timeout) and an offer race for
        one slot: the first wins, the other sees :class:`~catga.errors.ConcurrencyError` (record) or
        False (offer).

        Returns:
            True if stored; False if that sequence number is taken, or the instance is finished or
            unknown (nothing stored).
        """
        ...

    async def due(self, limit: int = 100) -> list[str]:
        """Ids of unfinished instances with work to do and no live lease: pending ones, running or
        compensating ones whose lease ended (their runner died), sleeping ones past ``wake_at``."""
        ...

    async def aclose(self) -> None:
        """Release connections (the data stays)."""
        ...
