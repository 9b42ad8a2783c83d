"""The Redis key layout, in one place.

Every key is ``{prefix}:{family}`` (a fixed key) or ``{prefix}:{family}:{id}`` (one per user id):

=====================  ==========================================================================
``P:es:s:<stream>``    event store: list of one stream's records (index = version)
``P:es:pos``           event store: global position counter (INCRBY)
``P:es:log``           event store: global log, a Redis Stream with entry ids ``<position>-0``
``P:lock:<key>``       lock owner token (``SET NX PX``)
``P:fence:<key>``      lock fencing counter (``INCR``; never expires)
``P:idem:<key>``       idempotency / inbox record
``P:cache:<key>``      cache value
``P:ob:<id>``          outbox message (hash)
``P:ob-ready``         outbox: PENDING messages fetchable now (sorted set by created_at)
``P:ob-wait``          outbox: PENDING messages leased or scheduled (sorted set by due time)
``P:ob-pub``           outbox: PUBLISHED messages (sorted set by created_at)
``P:ob-dead``          outbox: DEAD messages (sorted set by created_at)
``P:sc:<id>``          schedule (hash)
``P:sc-due``           schedules by when they may be claimed (sorted set)
``P:dlq``              dead letters (hash id → record)
``P:dlq-idx``          dead letters: order (sorted set by insertion counter)
``P:dlq-seq``          dead letters: insertion counter
``P:snap:<stream>``    aggregate snapshot (hash: version, record)
``P:ckpt:<name>``      projection checkpoint (hash: position, fencing)
``P:wf:<id>``          workflow instance (hash)
``P:wf-h:<id>``        workflow history (hash: sequence number → entry)
``P:wf-st:<status>``   workflows with that status (sorted set by creation time)
``P:wf-all``           every workflow (sorted set by creation time)
``P:wf-active``        unfinished workflows (sorted set by creation time)
``P:wf-wait:<type>``   sleeping workflows waiting for that event type (sorted set by creation time)
=====================  ==========================================================================

Why no id can reach another's data: the prefix has no ``:``, so it ends at the first ``:``; user ids
come only last, after a family; and no family is another family followed by ``:``, nor does any
fixed key start with a family followed by ``:``. So ``(prefix, family, id)`` is recoverable from the
key: stream ``a`` and stream ``a:b`` are ``P:es:s:a`` and ``P:es:s:a:b``; lock key ``x:fence`` is
``P:lock:x:fence``, never ``x``'s fencing counter ``P:fence:x``. Ids are also checked by
:func:`~catga.protocols.validate_identifier` (no braces, so no cluster hash-tag games).

**On a Redis Cluster** (:class:`~catga.redis.RedisClusterClient`) a Lua script or a multi-key
command must touch keys of one hash slot, so the families used together get a *hash tag* (the part
of a key between the first ``{`` and the next ``}`` is what Redis hashes):

=============================  =====================================  ==============================
single server                  cluster                                one slot per
=============================  =====================================  ==============================
``P:es:s:<id>``, ``P:es:pos``,  ``{P:es}:s:<id>``, ``{P:es}:pos``,      prefix (the whole event store)
``P:es:log``                   ``{P:es}:log``
``P:lock:<key>``,              ``P:lock:{<key>}``,                    lock key
``P:fence:<key>``              ``P:fence:{<key>}``
``P:ob:<id>``, ``P:ob-*``      ``{P:ob}:<id>``, ``{P:ob}-*``           prefix (the whole outbox)
``P:dlq``, ``P:dlq-*``         ``{P:dlq}``, ``{P:dlq}-*``              prefix (the whole DLQ)
``P:sc:<id>``, ``P:sc-due``    ``{P:sc}:<id>``, ``{P:sc}-due``         prefix (every schedule)
``P:wf:<id>``, ``P:wf-*``      ``{P:wf}:<id>``, ``{P:wf}-*``           prefix (every workflow)
=============================  =====================================  ==============================

The tag is the start of the key, so an id (or a workflow's event type) that held braces could not
move a key to another slot: only the first ``{...}`` counts. Grouping a whole family on one slot
puts it on one primary (as for the outbox and the DLQ): a workflow's scripts move its id between
the status and wait sets atomically, and ``claim_due`` leases schedules across the sorted set and
their hashes in one script, which needs one slot. Use a prefix per application or tenant to spread
several over the cluster.

Single-key families (``idem``, ``cache``, ``snap``, ``ckpt``) and the transport's streams, lists and
channels (``P:t:...``) are the same on both: each command or script touches one key. The cluster
key is the single-server key with braces inserted at fixed places, and neither prefixes nor ids
contain braces, so removing the braces gives the single-server key back: the no-collision argument
above carries over unchanged.
A single server keeps the old layout (nothing to migrate); moving data from a single server to a
cluster renames the keys of the tagged families as in the table.
"""

from __future__ import annotations

import re

from catga.errors import InvalidIdentifierError

__all__ = ("FAMILIES", "FIXED", "KeyLayout", "validate_prefix")

_PREFIX = re.compile(r"[A-Za-z0-9_\-@=+.]{1,64}\Z")

#: Families followed by a user id.
FAMILIES = (
    "es:s",
    "lock",
    "fence",
    "idem",
    "cache",
    "ob",
    "snap",
    "ckpt",
    "sc",
    "wf",
    "wf-h",
    "wf-st",
    "wf-wait",
)
#: Fixed keys (no user id).
FIXED = (
    "es:pos",
    "es:log",
    "ob-ready",
    "ob-wait",
    "ob-pub",
    "ob-dead",
    "dlq",
    "dlq-idx",
    "dlq-seq",
    "sc-due",
    "wf-all",
    "wf-active",
)


def validate_prefix(prefix: object) -> str:
    """Check a key prefix: 1–64 of ``[A-Za-z0-9_-@=+.]`` (no ``:``); return it.

    Raises:
        InvalidIdentifierError: the prefix breaks the rule.
    """
    if not isinstance(prefix, str) or _PREFIX.match(prefix) is None:
        raise InvalidIdentifierError(
            "Redis key prefix",
            prefix,
            "use 1-64 ASCII letters, digits and _ - . @ = + (no ':', it separates key components)",
        )
    return prefix


#: Families whose keys share one slot per prefix on a cluster, by their slot group.
_GROUPS = {
    "es:s": "es",
    "es:pos": "es",
    "es:log": "es",
    "ob": "ob",
    "ob-ready": "ob",
    "ob-wait": "ob",
    "ob-pub": "ob",
    "ob-dead": "ob",
    "dlq": "dlq",
    "dlq-idx": "dlq",
    "dlq-seq": "dlq",
    "sc": "sc",
    "sc-due": "sc",
    "wf": "wf",
    "wf-h": "wf",
    "wf-st": "wf",
    "wf-wait": "wf",
    "wf-all": "wf",
    "wf-active": "wf",
}
#: Families whose keys share one slot per user id on a cluster (the id is the hash tag).
_ID_TAGGED = frozenset({"lock", "fence"})


class KeyLayout:
    """Builds the keys of one prefix, hash-tagged when the client talks to a cluster.

    Args:
        prefix: the key prefix (checked by :func:`validate_prefix`).
        cluster: insert the hash tags of the module docstring's cluster table.
    """

    __slots__ = ("cluster", "prefix")

    def __init__(self, prefix: str, *, cluster: bool = False) -> None:
        self.prefix = validate_prefix(prefix)
        self.cluster = cluster

    def fixed(self, family: str) -> str:
        """The fixed key ``family`` (one of :data:`FIXED`)."""
        group = _GROUPS.get(family) if self.cluster else None
        if group is None:
            return f"{self.prefix}:{family}"
        return f"{{{self.prefix}:{group}}}{family[len(group) :]}"

    def per_id(self, family: str) -> tuple[str, str]:
        """``(head, tail)`` of the keys of ``family`` (one of :data:`FAMILIES`): key = head + id + tail."""
        if self.cluster:
            if family in _ID_TAGGED:
                return f"{self.prefix}:{family}:{{", "}"
            group = _GROUPS.get(family)
            if group is not None:
                return f"{{{self.prefix}:{group}}}{family[len(group) :]}:", ""
        return f"{self.prefix}:{family}:", ""

    def __repr__(self) -> str:
        return f"KeyLayout({self.prefix!r}, cluster={self.cluster})"
