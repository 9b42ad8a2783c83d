"""Health checks: is the app running, do its servers answer, are its consumers and relay alive?

:meth:`catga.App.health` runs them; :meth:`catga.web.Endpoints.health` serves them over HTTP
(``200`` healthy, ``503`` not). Each check is bounded by a timeout and never raises: a failure is a
check with ``ok=False`` and the reason.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

__all__ = ("Health", "HealthCheck", "run_checks", "server_checks")


class HealthCheck(msgspec.Struct, frozen=True):
    """One check: its name, whether it passed, a short detail, and how long it took (ms)."""

    name: str
    ok: bool
    detail: str = ""
    elapsed_ms: float = 0.0


class Health(msgspec.Struct, frozen=True):
    """All checks; ``ok`` when every one passed."""

    ok: bool
    checks: list[HealthCheck]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready data."""
        return msgspec.to_builtins(self)  # type: ignore[no-any-return]


Probe = Callable[[], Awaitable[str | None]]
"""A check: returns a detail (or None) when healthy, raises when not."""


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
    return HealthCheck(name, True, detail or "ok", (time.perf_counter() - start) * 1e3)


async def run_checks(probes: Iterable[tuple[str, Probe]], timeout: float) -> Health:
    """Run ``probes`` concurrently, each within ``timeout`` seconds."""
    checks = list(await asyncio.gather(*(_run(name, probe, timeout) for name, probe in probes)))
    return Health(all(c.ok for c in checks), checks)


def server_checks(objects: Iterable[Any]) -> list[tuple[str, Probe]]:
    """A ``PING`` check per distinct NATS connection / Redis client found in ``objects``.

    An object counts if it is a connection (has ``ping``) or holds one as ``connection`` / ``client``
    (transports, stores). Duplicates are checked once.
    """
    seen: set[int] = set()
    out: list[tuple[str, Probe]] = []
    for obj in objects:
        if obj is None or (hasattr(obj, "bound") and not obj.bound):  # a late-bound proxy not open
            continue
        target = obj.target if hasattr(obj, "bound") else obj
        for candidate in (target, getattr(target, "connection", None), getattr(target, "client", None)):
            ping = getattr(candidate, "ping", None)
            if candidate is None or not callable(ping) or id(candidate) in seen:
                continue
            seen.add(id(candidate))
            out.append((_name_of(candidate), _pinger(ping)))
            break
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
        return f"nats {url.hostname}:{url.port}" if url is not None else "nats"
    return type(connection).__name__


def _pinger(ping: Callable[[], Awaitable[Any]]) -> Probe:
    async def probe() -> str | None:
        await ping()
        return "PONG"

    return probe
