"""Workflow instances and histories in one JetStream KV-layout bucket (default ``catga_workflows``).

Each workflow is an instance subject ``$KV.B.<id>.i`` and one subject per recorded step,
``$KV.B.<id>.h.<seq>`` (msgpack; see :mod:`catga.nats._workflow_layout`).

**One fence per workflow.** Every write -- the create, each change of the instance, each history
entry -- is one publish that the server stores only if the last revision of *all* the workflow's
subjects (``$KV.B.<id>.>``, named by ``Nats-Expected-Last-Subject-Sequence-Subject``) is the one the
writer decided on; else it is refused and the writer reads again. A writer's view of the whole
workflow, instance and history, is therefore exact as of that revision or its write does not land:

* fencing: a ``record`` under a lease a newer ``acquire`` took over is refused (the acquire moved the
  workflow's last revision);
* insert-if-absent by sequence number: step ``n`` is written only if ``n`` is not in the writer's view
  of the history, and that view is current or the write is refused (``offer`` is the same write on
  the condition that the workflow is not finished, instead of the lease's);
* one publish per write, no atomic batch: on a file-storage stream with one replica the server stages
  each atomic batch in a file store of its own, about 5 ms a batch here -- most of a three-step
  workflow's cost before (see ``docs/nats.md``);
* on a cluster, every conditional write of a workflow names the same subject filter, so the stream
  leader also refuses a second proposal while the first is in flight.

**Views.** A store object keeps what it last wrote or read of a workflow while the workflow is
leased, and from its create to its first lease (up to :data:`KEPT_VIEWS` workflows), so a runner's
writes need no read first: ``create``, ``acquire``, ``update``, ``record``, ``release`` and
``finish`` are one publish each, and so is ``claim`` right after this store object created the
workflow (else one read of the workflow and one publish); ``record`` returns the cancel flag of the
view its fenced write landed on, which is therefore current. A view may be stale (another replica
wrote): the write is refused, the store reads the
workflow again -- the last message of ``$KV.B.<id>.>`` when that is the instance, else every message
of the workflow in one batch direct get -- and decides again. A decision *not* to write (a lease
held, a stale token) taken on a kept view is checked again on a fresh read before it is returned.
``get``, ``history``, ``list_instances``, ``due`` and ``waiting`` always read the server. A view is
exact whichever replica of a replicated stream answered: each read is one direct get (or one batch)
of one replica, which holds a prefix of the stream.

**Reads see the store object's own writes** (read-your-writes, monotonic reads), on a replicated
bucket too: ``get``, ``history`` and the reads before a write are answered only by a replica that
holds every write this store object made or saw (see :mod:`catga.nats._kv`). ``wf.expect`` /
``wf.wait_for`` depend on it: the runner stores the workflow ``sleeping`` and then reads its history,
the deliverer offers the event (``offer``) and then reads the instance; as both writes are in one stream,
one of them is first, and the other side's read, holding its own later write, holds that one too.
With plain direct gets a follower behind both writes could answer both reads, and the workflow would
sleep with its event recorded. The sweeps (``due``, ``waiting``, ``list_instances``) read any replica:
what they miss, the next sweep finds.

**Sweeps.** ``due`` and ``waiting`` read the unfinished instances from a watermark, so a finished
workflow is read by the first sweep of a store object and never again; ``list_instances`` scans every
instance (see :mod:`catga.nats._workflow_sweep`).

Leases and wake times are compared with this process's clock (:func:`catga.clock.get_clock`), as
for :class:`~catga.nats.NatsLock`: replicas need clocks in sync to well under the lease.
Needs NATS 2.12 or later (the version tested with expected-sequence checks on a subject filter).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Unpack

import msgspec
from nats.aio.client import Client

from catga.clock import get_clock
from catga.errors import BackendError, ConcurrencyError, ConfigurationError, StaleFencingTokenError
from catga.nats._kv import KvOptions, KvStore
from catga.nats._workflow_layout import (
    Entry,
    Instance,
    Subjects,
    View,
    decode_entry,
    decode_instance,
    encode,
    public,
)
from catga.nats._workflow_sweep import Sweep
from catga.nats.connection import OUTBOX_SERVER, NatsConnection
from catga.workflows.store import (
    COMPENSATING,
    FINISHED,
    PENDING,
    RUNNING,
    SLEEPING,
    STATUSES,
    Claim,
    HistoryEntry,
    WorkflowInstance,
    check_final,
)

__all__ = ("KEPT_VIEWS", "NatsWorkflowStore")

_RETRIES = 64
#: How many workflows' views a store object keeps (the oldest kept is dropped first).
KEPT_VIEWS = 4096


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ConfigurationError(f"unknown workflow status {status!r}; one of {', '.join(STATUSES)}")


class NatsWorkflowStore(KvStore):
    """:class:`~catga.workflows.WorkflowStore` on a NATS KV-layout bucket (see the module docs).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`; use ``replicas=3`` on a cluster.

    Not thread-safe: use a store object from one event loop.

    Args:
        clock: the unix-time clock leases and wake times are compared with (default catga's clock).
    """

    default_bucket = "catga_workflows"
    _kind = "workflow id"
    _needs = (OUTBOX_SERVER, "expected-sequence checks on a subject filter")

    def __init__(
        self,
        source: NatsConnection | Client,
        *,
        clock: Callable[[], float] | None = None,
        **options: Unpack[KvOptions],
    ) -> None:
        super().__init__(source, **options)
        self.clock: Callable[[], float] = clock or (lambda: get_clock().time())
        self._views: dict[str, View] = {}
        self._sweep = Sweep(self._bucket, self._decode)

    # -- subjects, decoding, views -------------------------------------------------------------------

    def _subjects(self, id: str) -> Subjects:
        return Subjects(self._bucket.subject(id))  # validates the id

    def _decode(self, id: str, value: bytes) -> Instance:
        try:
            return decode_instance(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackendError(
                f"workflow {id!r} in bucket {self.bucket!r} is unreadable ({exc})", backend="nats"
            ) from exc

    def _entry(self, id: str, seq: int, value: bytes) -> HistoryEntry:
        try:
            x = decode_entry(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackendError(
                f"step {seq} of workflow {id!r} in bucket {self.bucket!r} is unreadable ({exc})",
                backend="nats",
            ) from exc
        return HistoryEntry(seq=seq, kind=x.kind, name=x.name, ok=x.ok, value=x.value, at=x.at,
                            error_type=x.error_type)  # fmt: skip

    def _keep(self, id: str, view: View, *, unleased: bool = False) -> None:
        """Keep ``view`` unless a later one is kept. Only views of leased workflows are kept (and, with
        ``unleased``, of one just created, which its creator usually leases next): the views held
        follow the runs under way, not every workflow read."""
        old = self._views.pop(id, None)
        if old is not None and (old.last > view.last or (old.last == view.last and view.seqs is None)):
            view = old
        if not (view.instance.owner or unleased):
            return
        self._views[id] = view
        if len(self._views) > KEPT_VIEWS:
            del self._views[next(iter(self._views))]

    async def _read_last(self, id: str, s: Subjects) -> View | None:
        """A fresh view: the workflow's last message when that is the instance, else a full read (always
        on a replicated bucket: its checked read returns every message of the workflow anyway)."""
        if self._bucket.replicated:
            return (await self._read_all(id, s))[0]
        entry = await self._bucket.get_subject(s.workflow, id)
        if entry is None:
            return None
        if entry.headers.get("Nats-Subject", "").encode() == s.instance:
            view = View(self._decode(id, entry.value), entry.revision, None)
            self._keep(id, view)
            return view
        return (await self._read_all(id, s))[0]

    async def _read_all(self, id: str, s: Subjects) -> tuple[View | None, list[HistoryEntry]]:
        """A fresh view with the step numbers, and the history: every message of the workflow."""
        instance: Instance | None = None
        last = 0
        entries: list[HistoryEntry] = []
        instance_subject, steps = s.instance.decode(), s.base.decode() + ".h."
        async for m in self._bucket.messages(s.workflow.decode(), fresh=True):
            last = m.seq
            if m.subject == instance_subject:
                instance = self._decode(id, m.data)
            elif m.subject.startswith(steps) and m.subject[len(steps) :].isdigit():
                entries.append(self._entry(id, int(m.subject[len(steps) :]), m.data))
            else:
                raise BackendError(
                    f"bucket {self.bucket!r} holds {m.subject!r}, which is not of the workflow store's "
                    "layout (<id>.i, <id>.h.<seq>): it was written by an earlier development version of "
                    "catga or by something else; use another bucket",
                    backend="nats",
                )
        if instance is None:
            return None, entries
        view = View(instance, last, {e.seq for e in entries})
        self._keep(id, view)
        return view, entries

    async def _write(
        self, id: str, s: Subjects, subject: bytes, value: bytes, last: int, what: str
    ) -> int | None:
        revision = await self._bucket.write_subject(
            subject, value, last=last, last_subject=s.workflow, what=f"{what} of workflow {id!r}"
        )
        if revision is None:
            self._views.pop(id, None)  # stale: read it again
        return revision

    async def _change(
        self, id: str, change: Callable[[Instance], Instance | None], what: str
    ) -> Instance | None:
        """``change`` the instance (None: leave it) and write it at the view's revision; read again and
        retry when the view was stale. Returns the stored instance, or None when there is none or
        ``change`` declined on a fresh read."""
        s = self._subjects(id)
        view = self._views.get(id)
        fresh = False
        for _ in range(_RETRIES):
            if view is None:
                view, fresh = await self._read_last(id, s), True
                if view is None:
                    return None
            changed = change(view.instance)
            if changed is None:
                if fresh:
                    return None
                view = None  # decided on a kept view: decide again on a fresh one
                continue
            revision = await self._write(id, s, s.instance, encode(changed), view.last, what)
            if revision is not None:
                self._keep(id, View(changed, revision, view.seqs))
                return changed
            view = None
        raise BackendError(f"{what} of workflow {id!r}: {_RETRIES} concurrent writers won first; try again")

    # -- the protocol ---------------------------------------------------------------------------------

    async def create(self, instance: WorkflowInstance) -> bool:
        """See :meth:`WorkflowStore.create <catga.workflows.WorkflowStore.create>`."""
        s = self._subjects(instance.id)
        now = self.clock()
        i = instance
        value = Instance(
            name=i.name, version=i.version, input=bytes(i.input), status=PENDING, result=b"", error="",
            created_at=i.created_at or now, updated_at=now, wake_at=0.0, cancel_requested=False,
            token=0, owner="", lease_until=0.0,
        )  # fmt: skip
        revision = await self._write(i.id, s, s.instance, encode(value), 0, "create")
        if revision is None:
            return False
        self._keep(i.id, View(value, revision, set()), unleased=True)
        return True

    async def get(self, id: str) -> WorkflowInstance | None:
        """See :meth:`WorkflowStore.get <catga.workflows.WorkflowStore.get>`."""
        entry = await self._bucket.get_subject(self._subjects(id).instance, id)
        return None if entry is None else public(id, self._decode(id, entry.value))

    async def list_instances(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.list_instances <catga.workflows.WorkflowStore.list_instances>`
        (a scan of every instance)."""
        _check_status(status)
        found = [
            public(id, i)
            async for id, i, _ in self._sweep.instances()
            if status is None or i.status == status
        ]
        found.sort(key=lambda i: (i.created_at, i.id))
        return found[: max(limit, 0)]

    async def history(self, id: str) -> list[HistoryEntry]:
        """See :meth:`WorkflowStore.history <catga.workflows.WorkflowStore.history>`."""
        entries = (await self._read_all(id, self._subjects(id)))[1]
        entries.sort(key=lambda e: e.seq)
        return entries

    async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
        """See :meth:`WorkflowStore.acquire <catga.workflows.WorkflowStore.acquire>`."""

        def take(i: Instance) -> Instance | None:
            now = self.clock()
            if i.status in FINISHED or (i.owner and i.owner != owner and i.lease_until > now):
                return None
            return msgspec.structs.replace(i, token=i.token + 1, owner=owner, lease_until=now + ttl)

        taken = await self._change(id, take, "acquire")
        return None if taken is None else taken.token

    async def claim(self, id: str, owner: str, ttl: float) -> Claim | None:
        """See :meth:`ClaimingWorkflowStore.claim <catga.workflows.store.ClaimingWorkflowStore.claim>`:
        one publish when this store object's view of the workflow has no steps (it created it), else
        one read of the whole workflow and one publish."""
        s = self._subjects(id)
        view = self._views.get(id)
        entries: list[HistoryEntry] | None = [] if view is not None and view.seqs == set() else None
        fresh = False
        for _ in range(_RETRIES):
            if view is None or entries is None:
                view, entries = await self._read_all(id, s)
                fresh = True
                if view is None:
                    return None
            now = self.clock()
            i = view.instance
            if i.status in FINISHED or (i.owner and i.owner != owner and i.lease_until > now):
                if fresh:
                    return None
                view = entries = None
                continue
            compensating = i.status == COMPENSATING  # a running one's open wait stays armed
            claimed = msgspec.structs.replace(
                i, token=i.token + 1, owner=owner, lease_until=now + ttl,
                status=COMPENSATING if compensating else RUNNING, result=b"", error="", wake_at=0.0,
                wait_for="" if compensating else i.wait_for, wait_spec=b"" if compensating else i.wait_spec,
                updated_at=now,
            )  # fmt: skip
            revision = await self._write(id, s, s.instance, encode(claimed), view.last, "claim")
            if revision is not None:
                self._keep(id, View(claimed, revision, view.seqs))
                entries.sort(key=lambda e: e.seq)
                return Claim(claimed.token, public(id, claimed), entries)
            view = entries = None
        raise BackendError(f"claim of workflow {id!r}: {_RETRIES} concurrent writers won first; try again")

    async def finish(
        self, id: str, token: int, status: str, *, result: bytes = b"", error: str = ""
    ) -> WorkflowInstance:
        """See :meth:`ClaimingWorkflowStore.finish <catga.workflows.store.ClaimingWorkflowStore.finish>`
        (one publish with a current view)."""
        check_final(status)
        seen: list[int] = []

        def done(i: Instance) -> Instance | None:
            if i.token != token or not i.owner:
                seen.append(i.token)
                return None
            return msgspec.structs.replace(
                i, status=status, result=bytes(result), error=error, wake_at=0.0, wait_for="",
                wait_spec=b"", owner="", lease_until=0.0, updated_at=self.clock(),
            )  # fmt: skip

        finished = await self._change(id, done, "finish")
        if finished is None:
            raise StaleFencingTokenError(f"workflow {id}", token, seen[-1] if seen else 0)
        return public(id, finished)

    async def renew(self, id: str, token: int, ttl: float) -> bool:
        """See :meth:`WorkflowStore.renew <catga.workflows.WorkflowStore.renew>`."""

        def extend(i: Instance) -> Instance | None:
            if i.token != token or not i.owner:
                return None
            return msgspec.structs.replace(i, lease_until=self.clock() + ttl)

        return await self._change(id, extend, "renew") is not None

    async def release(self, id: str, token: int) -> None:
        """See :meth:`WorkflowStore.release <catga.workflows.WorkflowStore.release>`."""

        def free(i: Instance) -> Instance | None:
            return msgspec.structs.replace(i, owner="", lease_until=0.0) if i.token == token else None

        await self._change(id, free, "release")

    async def record(self, id: str, token: int, entry: HistoryEntry) -> bool:
        """See :meth:`WorkflowStore.record <catga.workflows.WorkflowStore.record>` (the cancel flag
        returned is exact: the write was fenced on the view it comes from)."""
        stored, view = await self._insert(id, entry, lambda i: i.token == token and bool(i.owner), "record")
        if not stored or view is None:
            raise StaleFencingTokenError(f"workflow {id}", token, 0 if view is None else view.instance.token)
        return view.instance.cancel_requested

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        """See :meth:`WorkflowStore.offer <catga.workflows.WorkflowStore.offer>` (``record``'s fenced
        publish, on the condition that the workflow is not finished instead of the lease's)."""
        try:
            return (await self._insert(id, entry, lambda i: i.status not in FINISHED, "offer"))[0]
        except ConcurrencyError:  # that step is taken: the offer is refused
            return False

    async def _insert(
        self, id: str, entry: HistoryEntry, accept: Callable[[Instance], bool], what: str
    ) -> tuple[bool, View | None]:
        """Write ``entry`` if its step number is free and ``accept(instance)``, as of one revision of
        the workflow (the fence makes both checks hold at the write).

        Returns:
            (True, the view written on), or (False, the fresh view ``accept`` refused, None when
            there is no such workflow).

        Raises:
            ConcurrencyError: the step number is taken.
        """
        e = entry
        body = encode(Entry(e.kind, e.name, e.ok, bytes(e.value), e.at or self.clock(), e.error_type))
        s = self._subjects(id)
        subject = s.base + b".h.%d" % e.seq
        view = self._views.get(id)
        fresh = False
        for _ in range(_RETRIES):
            seqs = None if view is None else view.seqs
            if view is None or seqs is None:  # the step numbers are needed: read them all
                view, fresh = (await self._read_all(id, s))[0], True
                if view is None or view.seqs is None:
                    return False, None
                seqs = view.seqs
            if not accept(view.instance):
                if fresh:
                    return False, view
                view = None  # decided on a kept view: decide again on a fresh one
                continue
            if e.seq in seqs:  # recorded: true on any view, entries are never removed
                raise ConcurrencyError(f"workflow {id}", e.seq, None)
            revision = await self._write(id, s, subject, body, view.last, f"{what} step {e.seq}")
            if revision is not None:
                seqs.add(e.seq)
                self._keep(id, View(view.instance, revision, seqs))
                return True, view
            view = None
        raise BackendError(f"{what} of workflow {id!r}: {_RETRIES} concurrent writers won first; try again")

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
        """See :meth:`WorkflowStore.update <catga.workflows.WorkflowStore.update>`."""
        _check_status(status)
        seen: list[int] = []

        def set_status(i: Instance) -> Instance | None:
            if i.token != token or not i.owner:
                seen.append(i.token)
                return None
            st, wake = (PENDING, 0.0) if status == SLEEPING and i.cancel_requested else (status, wake_at)
            waits = (wait_for, bytes(wait_spec)) if st in (RUNNING, SLEEPING) else ("", b"")
            return msgspec.structs.replace(
                i, status=st, result=bytes(result), error=error, wake_at=wake, updated_at=self.clock(),
                wait_for=waits[0], wait_spec=waits[1],
            )  # fmt: skip

        if await self._change(id, set_status, "update") is None:
            raise StaleFencingTokenError(f"workflow {id}", token, seen[-1] if seen else 0)

    async def request_cancel(self, id: str) -> bool:
        """See :meth:`WorkflowStore.request_cancel <catga.workflows.WorkflowStore.request_cancel>`."""

        def cancel(i: Instance) -> Instance | None:
            if i.status in FINISHED:
                return None
            status = PENDING if i.status == SLEEPING else i.status
            return msgspec.structs.replace(
                i, cancel_requested=True, status=status, wake_at=0.0, updated_at=self.clock(), wait_for="",
                wait_spec=b"",
            )  # fmt: skip

        return await self._change(id, cancel, "cancel") is not None

    async def waiting(self, event_type: str, limit: int = 1000) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.waiting <catga.workflows.WorkflowStore.waiting>` (a scan of the
        unfinished instances, see the module docs)."""
        found = [
            public(id, i)
            for id, i in await self._sweep.unfinished()
            if i.status in (RUNNING, SLEEPING) and i.wait_for == event_type
        ]
        return found[: max(limit, 0)]

    async def due(self, limit: int = 100) -> list[str]:
        """See :meth:`WorkflowStore.due <catga.workflows.WorkflowStore.due>` (a scan of the unfinished
        instances, see the module docs)."""
        now = self.clock()
        found = [
            id
            for id, i in await self._sweep.unfinished()
            if not (i.owner and i.lease_until > now) and (i.status != SLEEPING or i.wake_at <= now)
        ]
        return found[: max(limit, 0)]
