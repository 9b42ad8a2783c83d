"""eventsourcing's tracking and process recorders on a catga event store.

A tracking record is an event of the stream ``<namespace>tracking.<upstream application name>`` whose
version is the notification id (see :mod:`catga.es_persistence.recorders` for the mapping). A process
recorder writes a follower's new events and its tracking record in one transaction, which only the
PostgreSQL store can do across streams.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import (
    NotSupportedError,
    ProcessRecorder,
    StoredEvent,
    Tracking,
    TrackingRecorder,
)

from catga.es_persistence._loop import LoopThread
from catga.es_persistence.recorders import _TRACKING, CatgaAggregateRecorder, CatgaApplicationRecorder
from catga.protocols import EventStore

__all__ = ("CatgaProcessRecorder", "CatgaTrackingRecorder")


class CatgaTrackingRecorder(TrackingRecorder):
    """eventsourcing's ``TrackingRecorder``: how far a follower has processed each upstream application.

    A tracking record is an event of the stream ``<namespace>tracking.<upstream application name>``
    whose version is the notification id, so ids must grow per application (a lower or equal one raises
    ``IntegrityError``) and two trackers racing on one application cannot both record the same id.
    Subclass it for a view (the factory constructs ``cls(store, loop, namespace=..., timeout=...)``);
    note that a view's own state is not written atomically with the tracking record. Arguments as
    :class:`CatgaAggregateRecorder`, without ``purpose``.
    """

    def __init__(self, store: EventStore, loop: LoopThread, *, namespace: str = "", timeout: float = 30.0):
        self._tracking = CatgaAggregateRecorder(
            store, loop, purpose=_TRACKING[:-1], namespace=namespace, timeout=timeout
        )

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record that ``tracking.notification_id`` of ``tracking.application_name`` is processed.

        Raises:
            IntegrityError: an id at least as high is already recorded for that application.
            DataError: the application name is not a valid catga stream id.
        """
        record = StoredEvent(tracking.application_name, tracking.notification_id, "tracking", b"")
        self._tracking.insert_events([record])

    def max_tracking_id(self, application_name: str) -> int | None:
        """The highest notification id recorded for ``application_name``, None if none is."""
        last = self._tracking.select_events(application_name, desc=True, limit=1)
        return last[0].originator_version if last else None


class CatgaProcessRecorder(CatgaApplicationRecorder, ProcessRecorder):
    """eventsourcing's ``ProcessRecorder``: the events a follower caused and its tracking record in one
    transaction. Only on stores that can write several streams in one transaction (PostgreSQL).

    Arguments as :class:`CatgaApplicationRecorder`.

    Raises:
        NotSupportedError: the store cannot write several streams atomically.
    """

    def __init__(
        self,
        store: EventStore,
        loop: LoopThread,
        *,
        purpose: str = "events",
        namespace: str = "",
        timeout: float = 30.0,
    ):
        super().__init__(store, loop, purpose=purpose, namespace=namespace, timeout=timeout)
        if self._transaction is None:
            raise NotSupportedError(
                f"a process recorder needs the tracking record and the events in one atomic write, which "
                f"{type(store).__name__} cannot do across streams: use a postgresql:// CATGA_STORE_URL"
            )
        self._tracking = CatgaTrackingRecorder(store, loop, namespace=namespace, timeout=timeout)

    def insert_events(self, stored_events: Sequence[StoredEvent], **kwargs: Any) -> Sequence[int] | None:
        """Store ``stored_events`` and the ``tracking=`` record (if given) in one transaction; return
        the events' notification ids.

        Raises:
            IntegrityError: an aggregate version, or a tracking id at least as high, is already
                recorded (nothing is stored).
        """
        tracking: Tracking | None = kwargs.get("tracking")
        return self._call(self._insert(stored_events, positions=True, tracking=tracking), "insert_events")

    def insert_tracking(self, tracking: Tracking) -> None:
        """Record ``tracking`` alone (see :meth:`CatgaTrackingRecorder.insert_tracking`)."""
        self._tracking.insert_tracking(tracking)

    def max_tracking_id(self, application_name: str) -> int | None:
        """The highest notification id recorded for ``application_name``, None if none is."""
        return self._tracking.max_tracking_id(application_name)
