"""Conformance suites: one contract class per protocol, bound once per backend.

A contract is a plain class (no ``Test`` prefix, so pytest does not collect it here) whose async
tests use only the protocol and one fixture. A backend binds it in a test module by subclassing it
under a ``Test`` name and providing the fixture::

    import pytest
    from catga.memory import MemoryEventStore
    from catga.testing.contracts import EventStoreContract, contract_registry

    class TestMemoryEventStore(EventStoreContract):
        @pytest.fixture
        async def event_store(self):
            async with MemoryEventStore(registry=contract_registry()) as store:
                yield store

========================== ============================================================
Contract                   Fixture(s)
========================== ============================================================
EventStoreContract         ``event_store``
OutboxStoreContract        ``outbox_store``
ScheduleStoreContract      ``schedule_stores`` (two objects over the same storage)
WorkflowStoreContract      ``workflow_stores`` (two objects over the same storage)
IdempotencyStoreContract   ``idempotency_store`` (bind it again for the inbox)
DeadLetterQueueContract    ``dead_letter_queue``
DistributedLockContract    ``distributed_lock``
WorkerIdLeaseContract      ``distributed_lock`` (worker id leasing through that lock)
SnapshotStoreContract      ``snapshot_store``
CheckpointStoreContract    ``checkpoint_store``
CacheContract              ``cache``
TransportContract          ``transport_factory``, ``transport_dead_letters``, ``transport_inbox_factory``
========================== ============================================================

Every fixture yields a fresh, isolated object (its own stream, bucket, prefix or broker) and closes it
afterwards. The suites need pytest and pytest-asyncio (``asyncio_mode = "auto"``). A backend is done
when it passes its contracts; see ``docs/protocols.md`` ("Writing a backend").
"""

from catga.testing.contracts.cache import CacheContract
from catga.testing.contracts.dead_letter import DeadLetterQueueContract
from catga.testing.contracts.event_store import INVALID_IDS, EventStoreContract
from catga.testing.contracts.idempotency import IdempotencyStoreContract
from catga.testing.contracts.lock import DistributedLockContract
from catga.testing.contracts.messages import (
    CONTRACT_TYPES,
    ContractDoWork,
    ContractItemAdded,
    ContractNoted,
    ContractOrderPlaced,
    contract_registry,
)
from catga.testing.contracts.outbox import OutboxStoreContract
from catga.testing.contracts.schedules import ScheduleStoreContract
from catga.testing.contracts.snapshots import CheckpointStoreContract, SnapshotStoreContract
from catga.testing.contracts.transport import (
    InboxTransportFactory,
    RawPublishTransport,
    TransportContract,
    TransportFactory,
)
from catga.testing.contracts.worker_lease import WorkerIdLeaseContract
from catga.testing.contracts.workflows import WorkflowStoreContract

__all__ = (
    "CONTRACT_TYPES",
    "INVALID_IDS",
    "CacheContract",
    "CheckpointStoreContract",
    "ContractDoWork",
    "ContractItemAdded",
    "ContractNoted",
    "ContractOrderPlaced",
    "DeadLetterQueueContract",
    "DistributedLockContract",
    "EventStoreContract",
    "IdempotencyStoreContract",
    "InboxTransportFactory",
    "OutboxStoreContract",
    "RawPublishTransport",
    "ScheduleStoreContract",
    "SnapshotStoreContract",
    "TransportContract",
    "TransportFactory",
    "WorkerIdLeaseContract",
    "WorkflowStoreContract",
    "contract_registry",
)
