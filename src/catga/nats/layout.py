"""Where a NATS-backed app keeps things: stream, subject and bucket names for one URL ``prefix``.

For ``prefix=NAME`` (default ``catga``): the event store is stream ``NAME_EVENTS`` (upper case) on
subjects ``NAME.events.>``, the transport uses subjects ``NAME.evt/cmd/rpc.*`` (streams
``NAME_MESSAGES``...), the idempotency bucket is ``NAME_idempotency``, the outbox bucket
``NAME_outbox``, the dead letters ``NAME_dead_letters`` and the worker id leases ``NAME_locks``.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ("NatsLayout", "nats_layout")


class NatsLayout(NamedTuple):
    """Where a NATS-backed app keeps things for one ``prefix`` (see :func:`nats_layout`)."""

    events_stream: str
    events_subjects: str
    transport_prefix: str
    idempotency_bucket: str
    dead_letter_bucket: str
    outbox_bucket: str
    locks_bucket: str


def nats_layout(prefix: str = "catga") -> NatsLayout:
    """Stream, subject and bucket names of a NATS-backed app for ``prefix`` (``catga``: the defaults)."""
    return NatsLayout(
        f"{prefix.upper()}_EVENTS",
        f"{prefix}.events",
        prefix,
        f"{prefix}_idempotency",
        f"{prefix}_dead_letters",
        f"{prefix}_outbox",
        f"{prefix}_locks",
    )
