"""Health checks: is the app running, do its servers answer, are its consumers and relay alive?

:meth:`catga.App.health` runs them; :meth:`catga.web.Endpoints.health` serves them over HTTP
(``200`` healthy, ``503`` not). Each check is bounded by a timeout and never raises: a failure is a
check with ``ok=False`` and the reason.

A check can also pass *degraded*: it works, but something happened that an operator should look at
(a consumer re-created a consumer group its broker had lost, for instance). It stays ``ok`` -- the
HTTP route answers ``200``, so an orchestrator does not restart a working process -- and sets
``degraded`` on the check and on the report, with the reason in ``detail``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec

__all__ = (
    "DEGRADED_FOR",
    "Degraded",
    "Health",
    "HealthCheck",
    "consumers_detail",
    "counted",
    "run_checks",
    "component_checks",
    "server_checks",
)

#: Seconds a check stays degraded after a recovered incident (a consumer group lost by the broker).
DEGRADED_FOR = 3600.0


class HealthCheck(msgspec.Struct, frozen=True):
    """One check: its name, whether it passed, a short detail, how long it took (ms), and whether it
    passed degraded (see the module docs)."""

    name: str
    ok: bool
    detail: str = ""
    elapsed_ms: float = 0.0
    degraded: bool = False


class Health(msgspec.Struct, frozen=True):
    """All checks; ``ok`` when every one passed, ``degraded`` when one of them passed degraded."""

    ok: bool
    checks: list[HealthCheck]
    degraded: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


class Degraded(str):
    """A probe's detail that marks its check as passed but degraded (return it instead of a str)."""

    __slots__ = ()


Probe = Callable[[], Awaitable[str | None]]
"""A check: returns a detail (or None) when healthy -- a :class:`Degraded` one when degraded --, raises
when not."""


async def _run(name: str, probe: Probe, timeout: float) -> HealthCheck:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            detail = await probe()
    except TimeoutError:
        return HealthCheck(
            name, False, f"no answer within {timeout:g} s", (time.perf_counter() - start) * 1e3
        )
    except Exception as exc:
        return HealthCheck(name, False, f"{type(exc).__name__}: {exc}", (time.perf_counter() - start) * 1e3)
    elapsed = (time.perf_counter() - start) * 1e3
    return HealthCheck(name, True, str(detail or "ok"), elapsed, isinstance(detail, Degraded))


async def run_checks(probes: Iterable[tuple[str, Probe]], timeout: float) -> Health:
    """Run ``probes`` concurrently, each within ``timeout`` seconds."""
    checks = list(await asyncio.gather(*(_run(name, probe, timeout) for name, probe in probes)))
    return Health(all(c.ok for c in checks), checks, any(c.degraded for c in checks))


def counted(n: int, noun: str) -> str:
    """``"1 component"``, ``"2 components"``: a count with its noun in the right number."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def consumers_detail(subscriptions: Collection[Any], now: float | None = None) -> str:
    """The detail of the ``consumers`` check: how many subscriptions, and -- :class:`Degraded` for
    :data:`DEGRADED_FOR` seconds after it -- the latest time a broker lost a subscription's state
    (``last_recovery``, see :class:`~catga._transport.SubscriptionBase`) and it was re-created.
    """
    detail = counted(len(subscriptions), "subscription")
    latest: tuple[float, str] | None = None
    count = 0
    for sub in subscriptions:
        last = getattr(sub, "last_recovery", None)
        count += getattr(sub, "recoveries", 0)
        if last is not None and (latest is None or last[0] > latest[0]):
            latest = last
    if latest is None:
        return detail
    at = datetime.fromtimestamp(latest[0], UTC).isoformat(timespec="seconds")
    detail += f"; recovered from broker data loss {counted(count, 'time')}, last at {at}: {latest[1]}"
    if (time.time() if now is None else now) - latest[0] < DEGRADED_FOR:
        return Degraded(
            detail + " (what the server lost with it is gone; check its persistence with catga doctor)"
        )
    return detail


def server_checks(objects: Iterable[Any]) -> list[tuple[str, Probe]]:
    """A ``PING`` check per distinct NATS connection / Redis client found in ``objects``.

    An object counts if it is a connection (has ``ping``) or holds one as ``connection`` / ``client``
    (transports, stores). Duplicates are checked once. The connections of an app that is not started
    fail their check at once ("not open") instead of connecting.
    """
    seen: set[int] = set()
    out: list[tuple[str, Probe]] = []
    for obj in objects:
        if obj is None:
            continue
        for candidate in (obj, getattr(obj, "connection", None), getattr(obj, "client", None)):
            ping = getattr(candidate, "ping", None)
            if candidate is None or not callable(ping) or id(candidate) in seen:
                continue
            seen.add(id(candidate))
            out.append((_name_of(candidate), _pinger(ping)))
            break
    return out


def component_checks(objects: Iterable[Any]) -> list[tuple[str, Probe]]:
    """A check per object with an async ``health_check()`` (e.g. :class:`~catga.eventsourcing.Projections`),
    named by its ``health_name`` (default: its class name)."""
    out: list[tuple[str, Probe]] = []
    for obj in objects:
        check = getattr(obj, "health_check", None)
        if callable(check):
            out.append((str(getattr(obj, "health_name", type(obj).__name__)), check))
    return out


def _name_of(connection: Any) -> str:
    table = getattr(connection, "table", None)
    if table is not None and hasattr(connection, "pool"):  # a PostgreSQL store
        return f"postgres {table}"
    settings = getattr(connection, "settings", None)
    if settings is not None and hasattr(settings, "address"):
        return f"redis {settings.address}"
    client = getattr(connection, "client", None)
    if client is not None and hasattr(client, "servers"):  # a NatsConnection
        url = getattr(client, "connected_url", None) or next(iter(getattr(client, "servers", ()) or ()), None)
        return (
            f"nats {url.hostname}:{url.port}"
            if url is not None
            else f"nats {getattr(connection, 'address', '?')}"
        )
    return type(connection).__name__


def _pinger(ping: Callable[[], Awaitable[Any]]) -> Probe:
    async def probe() -> str | None:
        await ping()
        return "PONG"

    return probe
