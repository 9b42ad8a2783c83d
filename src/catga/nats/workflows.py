"""Workflow instances and histories in one JetStream KV-layout bucket (default ``catga_workflows``).

Subjects (``B`` = the bucket, ``<id>`` = the workflow id as one subject token):

* ``$KV.B.<id>`` — the instance (msgpack): name, version, input, status, result, error, times,
  cancel flag, fencing token, owner and lease end;
* ``$KV.B.<id>.<seq>`` — one history entry per sequence number (msgpack).

Every change of an instance is a compare-and-set on its revision (``Nats-Expected-Last-Subject-Sequence``);
a writer that lost the race reads again and re-checks. ``record`` is one **atomic batch** of two
publishes: the instance rewritten at the revision whose token was checked (so a new owner's
``acquire`` in between fails the batch) and the entry created at revision 0 (so a sequence number is
recorded once). ``offer`` is the same batch with the instance checked for not being finished
instead of for the token (so an offer never lands after the workflow ended). ``list_instances``,
``waiting`` and ``due`` scan the instances (``$KV.B.*``), one direct-get batch per 256; histories
are read by subject (``$KV.B.<id>.*``).

Leases and wake times are compared with this process's clock (:func:`catga.clock.get_clock`), as
for :class:`~catga.nats.NatsLock`: replicas need clocks in sync to well under the lease.
Needs a server with atomic batch publish (NATS 2.12 or later).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Unpack

import msgspec
from nats.aio.client import Client

from catga.clock import get_clock
from catga.errors import BackendError, ConcurrencyError, ConfigurationError, StaleFencingTokenError
from catga.nats._kv import KvEntry, KvOptions, KvStore
from catga.nats.connection import OUTBOX_SERVER, NatsConnection
from catga.workflows.store import (
    FINISHED,
    PENDING,
    RUNNING,
    SLEEPING,
    STATUSES,
    HistoryEntry,
    WorkflowInstance,
)

__all__ = ("NatsWorkflowStore",)

_RETRIES = 64


class _Instance(msgspec.Struct, array_like=True):
    name: str
    version: int
    input: bytes
    status: str
    result: bytes
    error: str
    created_at: float
    updated_at: float
    wake_at: float
    cancel_requested: bool
    token: int
    owner: str
    lease_until: float
    wait_for: str = ""
    wait_spec: bytes = b""


class _Entry(msgspec.Struct, array_like=True):
    kind: str
    name: str
    ok: bool
    value: bytes
    at: float
    error_type: str


_encode = msgspec.msgpack.Encoder().encode
_decode_instance = msgspec.msgpack.Decoder(_Instance).decode
_decode_entry = msgspec.msgpack.Decoder(_Entry).decode


def _public(id: str, i: _Instance) -> WorkflowInstance:
    return WorkflowInstance(
        id=id, name=i.name, version=i.version, input=i.input, status=i.status, result=i.result,
        error=i.error, created_at=i.created_at, updated_at=i.updated_at, wake_at=i.wake_at,
        cancel_requested=i.cancel_requested, token=i.token, owner=i.owner, lease_until=i.lease_until,
        wait_for=i.wait_for, wait_spec=i.wait_spec,
    )  # fmt: skip


def _check_status(status: str | None) -> None:
    if status is not None and status not in STATUSES:
        raise ConfigurationError(f"unknown workflow status {status!r}; one of {', '.join(STATUSES)}")


class NatsWorkflowStore(KvStore):
    """:class:`~catga.workflows.WorkflowStore` on a NATS KV-layout bucket (see the module docs).

    Options (``source``, ``bucket``, ``storage``, ``replicas``, ``timeout``): see
    :class:`~catga.nats._kv.KvStore`; use ``replicas=3`` on a cluster.

    Args:
        clock: the unix-time clock leases and wake times are compared with (default catga's clock).
    """

    default_bucket = "catga_workflows"
    _kind = "workflow id"
    _atomic = True
    _needs = (OUTBOX_SERVER, "atomic batch publish")

    def __init__(
        self,
        source: NatsConnection | Client,
        *,
        clock: Callable[[], float] | None = None,
        **options: Unpack[KvOptions],
    ) -> None:
        super().__init__(source, **options)
        self.clock: Callable[[], float] = clock or (lambda: get_clock().time())

    def _decode(self, entry: KvEntry) -> _Instance:
        try:
            return _decode_instance(entry.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BackendError(
                f"workflow {entry.key!r} in bucket {self.bucket!r} is unreadable ({exc})", backend="nats"
            ) from exc

    async def _read(self, id: str) -> tuple[_Instance, int] | None:
        entry = await self._bucket.get(id)
        return None if entry is None else (self._decode(entry), entry.revision)

    async def _change(
        self, id: str, change: Callable[[_Instance], _Instance | None], what: str
    ) -> _Instance | None:
        """Read, ``change`` (None: leave it), compare-and-set; again when another writer came first.
        Returns the stored instance, or None when there is none or ``change`` declined."""
        for _ in range(_RETRIES):
            found = await self._read(id)
            if found is None:
                return None
            current, revision = found
            changed = change(current)
            if changed is None:
                return None
            if await self._bucket.write(id, _encode(changed), last=revision) is not None:
                return changed
        raise BackendError(f"{what} of workflow {id!r}: {_RETRIES} concurrent writers won first; try again")

    async def create(self, instance: WorkflowInstance) -> bool:
        """See :meth:`WorkflowStore.create <catga.workflows.WorkflowStore.create>`."""
        self._bucket.subject(instance.id)  # validates the id
        now = self.clock()
        i = instance
        value = _Instance(
            name=i.name, version=i.version, input=bytes(i.input), status=PENDING, result=b"", error="",
            created_at=i.created_at or now, updated_at=now, wake_at=0.0, cancel_requested=False,
            token=0, owner="", lease_until=0.0,
        )  # fmt: skip
        return await self._bucket.write(i.id, _encode(value), last=0) is not None

    async def get(self, id: str) -> WorkflowInstance | None:
        """See :meth:`WorkflowStore.get <catga.workflows.WorkflowStore.get>`."""
        found = await self._read(id)
        return None if found is None else _public(id, found[0])

    async def _instances(self) -> list[WorkflowInstance]:
        found = [_public(e.key, self._decode(e)) async for e in self._bucket.scan("*")]
        found.sort(key=lambda i: (i.created_at, i.id))
        return found

    async def list_instances(self, status: str | None = None, limit: int = 100) -> list[WorkflowInstance]:
        """See :meth:`WorkflowStore.list_instances <catga.workflows.WorkflowStore.list_instances>`."""
        _check_status(status)
        return [i for i in await self._instances() if status is None or i.status == status][: max(limit, 0)]

    async def history(self, id: str) -> list[HistoryEntry]:
        """See :meth:`WorkflowStore.history <catga.workflows.WorkflowStore.history>`."""
        token = self._bucket.subject(id).decode().rpartition(".")[2]
        entries = []
        async for e in self._bucket.scan(f"{token}.*"):
            x = _decode_entry(e.value)
            seq = int(e.key.rpartition(".")[2])
            entries.append(HistoryEntry(seq=seq, kind=x.kind, name=x.name, ok=x.ok, value=x.value, at=x.at,
                                        error_type=x.error_type))  # fmt: skip
        entries.sort(key=lambda e: e.seq)
        return entries

    async def acquire(self, id: str, owner: str, ttl: float) -> int | None:
        """See :meth:`WorkflowStore.acquire <catga.workflows.WorkflowStore.acquire>`."""

        def take(i: _Instance) -> _Instance | None:
            now = self.clock()
            if i.status in FINISHED or (i.owner and i.owner != owner and i.lease_until > now):
                return None
            return msgspec.structs.replace(i, token=i.token + 1, owner=owner, lease_until=now + ttl)

        taken = await self._change(id, take, "acquire")
        return None if taken is None else taken.token

    async def renew(self, id: str, token: int, ttl: float) -> bool:
        """See :meth:`WorkflowStore.renew <catga.workflows.WorkflowStore.renew>`."""

        def extend(i: _Instance) -> _Instance | None:
            if i.token != token or not i.owner:
                return None
            return msgspec.structs.replace(i, lease_until=self.clock() + ttl)

        return await self._change(id, extend, "renew") is not None

    async def release(self, id: str, token: int) -> None:
        """See :meth:`WorkflowStore.release <catga.workflows.WorkflowStore.release>`."""

        def free(i: _Instance) -> _Instance | None:
            return msgspec.structs.replace(i, owner="", lease_until=0.0) if i.token == token else None

        await self._change(id, free, "release")

    async def record(self, id: str, token: int, entry: HistoryEntry) -> None:
        """See :meth:`WorkflowStore.record <catga.workflows.WorkflowStore.record>`."""
        e = entry
        body = _encode(_Entry(e.kind, e.name, e.ok, bytes(e.value), e.at or self.clock(), e.error_type))
        instance_subject = self._bucket.subject(id)
        entry_subject = instance_subject + b".%d" % e.seq
        for _ in range(_RETRIES):
            found = await self._read(id)
            current = 0 if found is None else found[0].token
            if found is None or current != token or not found[0].owner:
                raise StaleFencingTokenError(f"workflow {id}", token, current)
            instance, revision = found
            items = [(instance_subject, _encode(instance), revision), (entry_subject, body, 0)]
            if await self._bucket.write_batch(items, f"record step {e.seq} of workflow {id!r}"):
                return
            if await self._bucket.get_subject(entry_subject, id) is not None:
                raise ConcurrencyError(f"workflow {id}", e.seq, None)
        raise BackendError(f"record of workflow {id!r}: {_RETRIES} concurrent writers won first; try again")

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

        def set_status(i: _Instance) -> _Instance | None:
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

        def cancel(i: _Instance) -> _Instance | None:
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
        instances)."""
        found = [
            i for i in await self._instances() if i.status in (RUNNING, SLEEPING) and i.wait_for == event_type
        ]
        return found[: max(limit, 0)]

    async def offer(self, id: str, entry: HistoryEntry) -> bool:
        """See :meth:`WorkflowStore.offer <catga.workflows.WorkflowStore.offer>` (the batch of
        ``record``, with the instance checked for not being finished instead of for the token)."""
        e = entry
        body = _encode(_Entry(e.kind, e.name, e.ok, bytes(e.value), e.at or self.clock(), e.error_type))
        instance_subject = self._bucket.subject(id)
        entry_subject = instance_subject + b".%d" % e.seq
        for _ in range(_RETRIES):
            found = await self._read(id)
            if found is None or found[0].status in FINISHED:
                return False
            instance, revision = found
            items = [(instance_subject, _encode(instance), revision), (entry_subject, body, 0)]
            if await self._bucket.write_batch(items, f"offer step {e.seq} of workflow {id!r}"):
                return True
            if await self._bucket.get_subject(entry_subject, id) is not None:
                return False
        raise BackendError(f"offer to workflow {id!r}: {_RETRIES} concurrent writers won first; try again")

    async def due(self, limit: int = 100) -> list[str]:
        """See :meth:`WorkflowStore.due <catga.workflows.WorkflowStore.due>`."""
        now = self.clock()
        found: list[Any] = [
            i.id
            for i in await self._instances()
            if i.status not in FINISHED
            and not (i.owner and i.lease_until > now)
            and (i.status != SLEEPING or i.wake_at <= now)
        ]
        return found[: max(limit, 0)]
