"""Run an `eventsourcing <https://eventsourcing.readthedocs.io>`_ (9.x) application on catga's event
stores: memory, NATS JetStream, Redis, PostgreSQL and SQLite.

Select it in the application's environment::

    os.environ["PERSISTENCE_MODULE"] = "catga.es_persistence"
    os.environ["CATGA_STORE_URL"] = "redis://127.0.0.1:6379/0?prefix=bank"
    app = BankAccounts()

:class:`Factory` opens the store on an event-loop thread of its own; the recorders
(:class:`CatgaAggregateRecorder`, :class:`CatgaApplicationRecorder`) run every call there and wait
for it, so an application may be used from any thread, including code running in another event loop
(which blocks for the call; use :func:`asyncio.to_thread`). See ``docs/event-sourcing.md``, *Running
an eventsourcing application on catga's stores*, for the mapping, what is atomic and which of
eventsourcing's own recorder tests pass.
"""

from catga.es_persistence.factory import Factory, open_store
from catga.es_persistence.recorders import (
    RECORD_TYPE,
    CatgaAggregateRecorder,
    CatgaApplicationRecorder,
    CatgaSubscription,
    Record,
    record_registry,
)
from catga.es_persistence.tracking import CatgaProcessRecorder, CatgaTrackingRecorder

__all__ = (
    "RECORD_TYPE",
    "CatgaAggregateRecorder",
    "CatgaApplicationRecorder",
    "CatgaProcessRecorder",
    "CatgaSubscription",
    "CatgaTrackingRecorder",
    "Factory",
    "Record",
    "open_store",
    "record_registry",
)
