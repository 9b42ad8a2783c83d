"""How :class:`~catga.nats.NatsWorkflowStore` lays a workflow out in its bucket, and encodes it.

Subjects (``B`` = the bucket, ``<id>`` = the workflow id as one subject token):

* ``$KV.B.<id>.i`` -- the instance (:class:`Instance`, msgpack): name, version, input, status,
  result, error, times, cancel flag, fencing token, owner and lease end;
* ``$KV.B.<id>.h.<seq>`` -- one history entry per sequence number (:class:`Entry`, msgpack);
* ``$KV.B.<id>.>`` -- every subject of the workflow: the filter its writes are fenced on.

A :class:`View` is what a store object knows of one workflow as of one revision (see the store's
module docs).
"""

from __future__ import annotations

import msgspec

from catga.workflows.store import WorkflowInstance

__all__ = (
    "Entry",
    "Instance",
    "Subjects",
    "View",
    "decode_entry",
    "decode_instance",
    "encode",
    "public",
)


class Instance(msgspec.Struct, array_like=True):
    """A workflow instance as stored."""

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


class Entry(msgspec.Struct, array_like=True):
    """A history entry as stored (its step number is in its subject)."""

    kind: str
    name: str
    ok: bool
    value: bytes
    at: float
    error_type: str


encode = msgspec.msgpack.Encoder().encode
decode_instance = msgspec.msgpack.Decoder(Instance).decode
decode_entry = msgspec.msgpack.Decoder(Entry).decode


class View:
    """A workflow as of its last revision ``last``: the instance and, when read or written here since
    the workflow was created or fully read, the set of recorded step numbers (else None)."""

    __slots__ = ("instance", "last", "seqs")

    def __init__(self, instance: Instance, last: int, seqs: set[int] | None) -> None:
        self.instance = instance
        self.last = last
        # Shared, not copied, from one view to the next of the same workflow: it only grows, and a
        # step number in it is recorded (entries are never removed), whichever view holds it.
        self.seqs = seqs


class Subjects:
    """The subjects of one workflow."""

    __slots__ = ("base", "instance", "workflow")

    def __init__(self, base: bytes) -> None:
        self.base = base  # $KV.B.<id>
        self.instance = base + b".i"
        self.workflow = base + b".>"


def public(id: str, i: Instance) -> WorkflowInstance:
    """The protocol's view of a stored instance."""
    return WorkflowInstance(
        id=id, name=i.name, version=i.version, input=i.input, status=i.status, result=i.result,
        error=i.error, created_at=i.created_at, updated_at=i.updated_at, wake_at=i.wake_at,
        cancel_requested=i.cancel_requested, token=i.token, owner=i.owner, lease_until=i.lease_until,
        wait_for=i.wait_for, wait_spec=i.wait_spec,
    )  # fmt: skip
