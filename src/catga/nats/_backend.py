"""What a ``nats://`` / ``tls://`` URL builds (registered in :mod:`catga.backends`).

Every part of one app shares one :class:`~catga.nats.NatsConnection` per server list, built
unconnected (:meth:`~catga.nats.NatsConnection.lazy`) and opened at ``App.start()``; the names of
streams and buckets come from :func:`~catga.nats.nats_layout` of the URL's ``prefix``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from catga._urls import redact_url
from catga.errors import ConfigurationError
from catga.nats.connection import MAX_REPLICAS, NatsConnection
from catga.nats.dead_letter import NatsDeadLetterQueue
from catga.nats.event_store import NatsEventStore
from catga.nats.idempotency import NatsIdempotencyStore
from catga.nats.layout import nats_layout
from catga.nats.lock import NatsLock
from catga.nats.outbox import NatsOutboxStore
from catga.nats.schedules import NatsScheduleStore
from catga.nats.transport import NatsTransport
from catga.nats.workflows import NatsWorkflowStore

if TYPE_CHECKING:
    from catga.backends import Backends, BackendUrl

_log = logging.getLogger("catga.app")
LOCK_RANK = 0  # a lock on the shared connection: preferred over a PostgreSQL pool
_OPTIONS = ("prefix", "storage", "max_payload", "replicas")


def url_options(base: str, options: dict[str, str], role: str, shown: str) -> dict[str, Any]:
    """Check the servers of ``base`` and take ``storage`` and ``replicas`` out of ``options``.

    Returns:
        ``address`` (the server list, without options), ``storage`` and ``replicas``.

    Raises:
        ConfigurationError: a bad storage or replicas value, an unknown option, a malformed server.
    """
    storage = options.pop("storage", "file")
    if storage not in ("file", "memory"):
        raise ConfigurationError(f"{role} URL {shown!r}: storage must be 'file' or 'memory', got {storage!r}")
    text = options.pop("replicas", "1")
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_REPLICAS:
        raise ConfigurationError(
            f"{role} URL {shown!r}: replicas must be a whole number from 1 to {MAX_REPLICAS}, got {text!r}; "
            "use replicas=3 on a 3-node JetStream cluster, 1 on a single server"
        )
    if options:
        raise ConfigurationError(
            f"{role} URL {shown!r}: unknown option(s) {sorted(options)}; a nats:// URL takes "
            f"{', '.join(_OPTIONS)} (pass a NatsConnection for anything else)"
        )
    for server in base.split(","):
        server = server.strip()
        probe = server if "://" in server else f"nats://{server}"
        try:
            parts = urlsplit(probe)
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ConfigurationError(f"{role} URL {shown!r}: {exc}") from exc
        if parts.scheme.lower() not in ("nats", "tls") or not server:
            raise ConfigurationError(
                f"{role} URL {shown!r}: {redact_url(server)!r} is not a NATS server; list servers as "
                "nats://host:port (or tls://), separated by commas: nats://n1:4222,nats://n2:4222"
            )
        if not parts.hostname:
            raise ConfigurationError(
                f"{role} URL {shown!r}: {redact_url(server)!r} has no host; write the server's address, "
                "e.g. nats://127.0.0.1:4222"
            )
    return {"address": base, "storage": storage, "replicas": int(text)}


def connection(b: Backends, spec: BackendUrl, what: str | None = None) -> NatsConnection:
    """The app's connection to the servers ``spec`` names (made on first use, then shared); warns
    when ``what`` (the part built on it) keeps its streams on memory storage."""
    if what is not None and spec.storage == "memory":
        _log.warning(
            "%s %s keeps its NATS streams on memory storage: a nats-server restart loses every message "
            "in them, acknowledged or not; drop storage=memory for anything you cannot lose",
            what,
            spec,
        )

    def make() -> NatsConnection:
        return NatsConnection.lazy(spec.address, name=b.name, connect_timeout=b.timeout, timeout=b.timeout)

    what = f"NATS connection {redact_url(spec.address)}"
    return b.shared(("nats", spec.address), what, make, NatsConnection.open)


def transport(b: Backends, spec: BackendUrl) -> NatsTransport:
    """The transport, with its dead-letter queue (bucket ``<prefix>_dead_letters``)."""
    conn, layout = connection(b, spec, "transport"), nats_layout(spec.prefix)
    dlq = b.track(
        NatsDeadLetterQueue(
            conn, bucket=layout.dead_letter_bucket, storage=spec.storage, replicas=spec.replicas
        )
    )
    return NatsTransport(
        conn,
        registry=b.registry,
        prefix=layout.transport_prefix,
        dead_letters=dlq,
        storage="memory" if spec.storage == "memory" else "file",
        replicas=spec.replicas,
        timeout=b.timeout,
        max_payload=spec.max_payload or b.max_payload,
    )


def store(b: Backends, spec: BackendUrl) -> NatsEventStore:
    """The event store (stream ``<PREFIX>_EVENTS``)."""
    layout = nats_layout(spec.prefix)
    return NatsEventStore(
        connection(b, spec, "event store"),
        stream=layout.events_stream,
        prefix=layout.events_subjects,
        registry=b.registry,
        storage=spec.storage,
        replicas=spec.replicas,
    )


def idempotency_store(b: Backends, spec: BackendUrl) -> NatsIdempotencyStore:
    """The idempotency store (bucket ``<prefix>_idempotency``)."""
    bucket = nats_layout(spec.prefix).idempotency_bucket
    return NatsIdempotencyStore(
        connection(b, spec, "idempotency store"), bucket=bucket, storage=spec.storage, replicas=spec.replicas
    )


def workflows(b: Backends, spec: BackendUrl) -> NatsWorkflowStore:
    """The workflow store (bucket ``<prefix>_workflows``)."""
    conn = connection(b, spec, "workflow store")
    return NatsWorkflowStore(
        conn, bucket=f"{spec.prefix}_workflows", storage=spec.storage, replicas=spec.replicas
    )


def outbox(b: Backends, spec: BackendUrl) -> NatsOutboxStore:
    """The outbox (bucket ``<prefix>_outbox``)."""
    bucket = nats_layout(spec.prefix).outbox_bucket
    conn = connection(b, spec, "outbox")
    return NatsOutboxStore(conn, bucket=bucket, storage=spec.storage, replicas=spec.replicas)


def scheduler(b: Backends, spec: BackendUrl) -> NatsScheduleStore:
    """The schedule store (stream ``<PREFIX>_SCHEDULES``, subjects ``<prefix>.sched.>``; message
    schedules on nats-server 2.12+, delayed redelivery before)."""
    return NatsScheduleStore(
        connection(b, spec),
        stream=f"{spec.prefix.upper()}_SCHEDULES",
        prefix=spec.prefix,
        storage=spec.storage,
        replicas=spec.replicas,
    )


async def worker_id_lock(b: Backends, spec: BackendUrl) -> tuple[str, NatsLock]:
    """The worker id lease lock (bucket ``<prefix>_locks``) on the shared connection."""
    conn, bucket = connection(b, spec), nats_layout(spec.prefix).locks_bucket
    lock = NatsLock(conn, bucket=bucket, storage=spec.storage, replicas=spec.replicas)
    return f"NATS {redact_url(spec.address)}", lock
