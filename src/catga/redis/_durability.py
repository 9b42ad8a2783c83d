"""Can this Redis lose acknowledged messages? Read from its configuration (``CONFIG GET``).

Used by ``catga doctor`` and, with a WARNING per problem, when an :class:`~catga.App` opens a Redis
URL. Two settings let Redis drop what it acknowledged, with no error to anyone:

* **no persistence** (``appendonly no`` and no ``save`` points): a restart comes back empty -- streams,
  consumer groups, pending entries, outbox and idempotency records are gone;
* a **maxmemory-policy** other than ``noeviction``: under memory pressure Redis evicts keys (a stream,
  a lock, an idempotency record) instead of refusing writes.

RDB snapshots without AOF are reported as a note: a crash loses what was written since the last
snapshot. ``CONFIG`` is often disabled, renamed or forbidden by an ACL (managed services): then the
result says it could not check, and why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from catga.errors import BackendTimeoutError, BackendUnavailableError, CatgaError
from catga.redis.connection import RedisClient

__all__ = ("Durability", "check_durability", "log_durability")

_PARAMS = ("appendonly", "appendfsync", "save", "maxmemory-policy", "maxmemory")


@dataclass(frozen=True)
class Durability:
    """What a Redis server's configuration says about keeping acknowledged writes.

    Attributes:
        settings: the values read (``appendonly``, ``appendfsync``, ``save``, ``maxmemory-policy``,
            ``maxmemory``); empty when they could not be read.
        problems: settings that can drop acknowledged messages (each says what to change).
        notes: weaker caveats (RDB snapshots only).
        unknown: why the configuration could not be read, or None.
    """

    settings: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unknown: str | None = None


async def check_durability(client: RedisClient) -> Durability:
    """Read the persistence and eviction settings of ``client``'s server (one pipelined round trip).

    Raises:
        BackendUnavailableError / BackendTimeoutError: the server did not answer (a refused or
            unknown ``CONFIG`` is not an error: see :attr:`Durability.unknown`).
    """
    try:
        replies = await client.execute_many([("CONFIG", "GET", name) for name in _PARAMS])
    except (BackendUnavailableError, BackendTimeoutError):
        raise
    except CatgaError as exc:  # CONFIG renamed, disabled or not allowed for this user
        return Durability(unknown=f"CONFIG GET was refused ({exc})")
    settings: dict[str, str] = {}
    for reply in replies:
        pairs = reply if isinstance(reply, list) else []
        for name, value in zip(pairs[::2], pairs[1::2], strict=False):
            settings[bytes(name).decode()] = bytes(value).decode(errors="replace")
    missing = [name for name in ("appendonly", "save", "maxmemory-policy") if name not in settings]
    if missing:
        return Durability(settings, unknown=f"CONFIG GET did not return {', '.join(missing)}")
    problems: list[str] = []
    notes: list[str] = []
    aof = settings["appendonly"].lower() == "yes"
    save = settings["save"].strip()
    if not aof and not save:
        problems.append(
            'no persistence (appendonly no, save ""): a restart comes back empty and loses every '
            "stream, consumer group and record, acknowledged or not; set appendonly yes"
        )
    elif not aof:
        notes.append(
            f"RDB snapshots only (save {save!r}, appendonly no): a crash loses what was written since "
            "the last snapshot; appendonly yes narrows that to about a second"
        )
    policy = settings["maxmemory-policy"]
    if policy != "noeviction":
        problems.append(
            f"maxmemory-policy {policy}: when memory runs out Redis evicts keys (streams, idempotency "
            "records, locks) without an error; set maxmemory-policy noeviction"
        )
    return Durability(settings, problems, notes)


async def log_durability(client: RedisClient, log: logging.Logger) -> Durability:
    """:func:`check_durability`, logging each problem at WARNING (and an unreadable configuration at
    INFO). Never raises but on cancellation: a server that does not answer is logged at INFO."""
    where = client.settings.address
    try:
        report = await check_durability(client)
    except (BackendUnavailableError, BackendTimeoutError) as exc:
        log.info("could not check the persistence settings of Redis at %s: %s", where, exc)
        return Durability(unknown=str(exc))
    for problem in report.problems:
        log.warning("Redis at %s can lose acknowledged messages: %s", where, problem)
    if report.unknown is not None:
        log.info("could not check the persistence settings of Redis at %s: %s", where, report.unknown)
    return report
