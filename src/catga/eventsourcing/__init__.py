"""Event sourcing on top of the :class:`~catga.protocols.EventStore` protocol.

* :class:`Aggregate` and :func:`applies` -- state rebuilt from events, changes raised as events.
* :class:`Repository` -- load/save aggregates with the right expected version; optional snapshots.
* :class:`Snapshot`, :class:`SnapshotStore`, :class:`MemorySnapshotStore` -- state at a version
  (durable stores: ``catga.nats``, ``catga.redis``, ``catga.postgres``).
* :class:`Projection`, :func:`handles`, :class:`ProjectionRunner`, :class:`CheckpointStore`,
  :class:`MemoryCheckpointStore`, :class:`ErrorPolicy`, :class:`Projections` -- read models fed by
  catch-up then live subscription, resumable, with an error policy and one owner across replicas.
* :class:`Upcasters`, :class:`UpcastingRegistry` -- read old event shapes as current classes.

Everything here depends only on the protocol, so it runs on every backend. See ``docs/event-sourcing.md``.
"""

from __future__ import annotations

from catga.eventsourcing.aggregate import Aggregate, applies
from catga.eventsourcing.checkpoints import CheckpointStore, MemoryCheckpointStore
from catga.eventsourcing.projections import ErrorPolicy, Projection, ProjectionRunner, SaveCheckpoint, handles
from catga.eventsourcing.repository import Repository
from catga.eventsourcing.runners import Projections
from catga.eventsourcing.snapshots import (
    MemorySnapshotStore,
    Snapshot,
    SnapshotStore,
    decode_snapshot,
    encode_snapshot,
)
from catga.eventsourcing.upcasting import SCHEMA_VERSION_KEY, Upcast, Upcasters, UpcastingRegistry

__all__ = (
    "SCHEMA_VERSION_KEY",
    "Aggregate",
    "CheckpointStore",
    "ErrorPolicy",
    "MemoryCheckpointStore",
    "MemorySnapshotStore",
    "Projection",
    "ProjectionRunner",
    "Projections",
    "Repository",
    "SaveCheckpoint",
    "Snapshot",
    "SnapshotStore",
    "Upcast",
    "Upcasters",
    "UpcastingRegistry",
    "applies",
    "decode_snapshot",
    "encode_snapshot",
    "handles",
)
