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
"""

from __future__ import annotations

import re

from catga.errors import InvalidIdentifierError

__all__ = ("FAMILIES", "FIXED", "validate_prefix")

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
