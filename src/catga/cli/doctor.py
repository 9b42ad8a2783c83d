"""``catga doctor``: check the installation and the NATS / Redis servers catga would use."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import typer
from rich.markup import escape
from rich.table import Table

from catga._urls import redact_url
from catga._versions import format_version, parse_version, require_version
from catga.cli._common import out_console, print_json, reported_errors, run_async
from catga.errors import UnsupportedServerError

__all__ = ("Check", "check_nats", "check_redis", "doctor", "run_checks")

Status = Literal["ok", "warn", "fail", "info"]

_PACKAGES = (
    ("msgspec", "core"),
    ("nats-py", "catga[nats]"),
    ("hiredis", "catga[redis]"),
    ("redis", "catga[bench]"),
    ("uvloop", "catga[bench]"),
    ("matplotlib", "catga[bench]"),
)


@dataclass
class Check:
    """The outcome of one check.

    Attributes:
        name: What was checked (``"nats"``, ``"redis"``, ``"package nats-py"``...).
        status: ``"ok"``, ``"fail"``, ``"warn"`` (works, but can lose acknowledged messages; never
            fails the run) or ``"info"`` (informational, never fails the run).
        detail: One line for humans.
        facts: Machine-readable details (server version, round trip...).
    """

    name: str
    status: Status
    detail: str
    facts: dict[str, Any] = field(default_factory=dict)


def _pkg_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


async def check_nats(url: str, timeout: float) -> list[Check]:
    """Connect to NATS at ``url``, check the server version and that JetStream answers (``"nats"``),
    and list the streams on memory storage (``"nats durability"``).

    Never raises (except on cancellation): a failure becomes a ``"fail"`` check.
    """
    durability: list[Check] = []
    check = await _check_nats(url, timeout, durability)
    return [check, *durability]


def _nats_url_problem(url: str) -> str | None:
    """Why ``url`` is not a NATS URL (checked before connecting), or ``None``."""
    servers = [u.strip() for u in url.split(",") if u.strip()]
    if not servers:
        return f"no NATS server in {url!r}: give nats://host:port"
    for server in servers:
        shown = redact_url(server)
        try:
            parts = urlsplit(server if "://" in server else f"nats://{server}")
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            return f"invalid NATS URL {shown!r}: {exc}"
        if parts.scheme.lower() not in ("nats", "tls"):
            return (
                f"unsupported scheme {parts.scheme!r} in {shown!r}: a NATS URL is nats://host:port or "
                "tls://host:port (several separated by commas); nothing was contacted"
            )
        if not parts.hostname:
            return f"no host in NATS URL {shown!r}: give nats://host:port"
    return None


async def _check_nats(url: str, timeout: float, durability: list[Check]) -> Check:
    problem = _nats_url_problem(url)
    if problem is not None:
        return Check("nats", "fail", problem, {"url": url})
    try:
        import nats

        from catga.nats.connection import OUTBOX_SERVER, STORES_SERVER
    except ImportError:
        return Check("nats", "fail", "nats-py is not installed: pip install 'catga[nats]'", {"url": url})

    seen: list[Exception] = []

    async def record(exc: Exception) -> None:
        seen.append(exc)

    facts: dict[str, Any] = {"url": url}
    started = time.perf_counter()
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=[u.strip() for u in url.split(",") if u.strip()],  # a cluster: several URLs
                connect_timeout=max(1, round(timeout)),
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                error_cb=record,
            ),
            timeout,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        cause = _error(seen[-1]) if seen else _error(exc)
        return Check("nats", "fail", f"cannot connect to {url}: {cause}", facts)
    try:
        facts["connect_ms"] = round((time.perf_counter() - started) * 1000, 2)
        v = nc.connected_server_version
        server_version = f"{v.major}.{v.minor}.{v.patch}" + (f"-{v.dev}" if v.dev else "")
        facts["server_version"] = server_version
        facts["max_payload"] = nc.max_payload
        facts["needed_version"] = format_version(STORES_SERVER)
        try:
            require_version(
                "nats",
                redact_url(url),
                server_version,
                STORES_SERVER,
                "catga (the event store and the KV stores: idempotency, inbox, lock, cache, dead letters)",
            )
        except UnsupportedServerError as exc:
            return Check("nats", "fail", str(exc), facts)
        t0 = time.perf_counter()
        await asyncio.wait_for(nc.flush(), timeout)
        facts["rtt_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        try:
            info = await asyncio.wait_for(nc.jetstream(timeout=timeout).account_info(), timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            facts["jetstream"] = False
            return Check(
                "nats",
                "fail",
                f"nats-server {server_version} at {url}: JetStream is not enabled or not answering "
                f"({_error(exc)}); start the server with -js",
                facts,
            )
        facts["jetstream"] = True
        facts["streams"] = info.streams
        facts["consumers"] = info.consumers
        durability.append(await _nats_durability(nc, url, timeout))
        parsed = parse_version(server_version)
        outbox = (
            f"; the NATS outbox needs {format_version(OUTBOX_SERVER)}+ (atomic batch publish)"
            if parsed is not None and parsed < OUTBOX_SERVER
            else ""
        )
        return Check(
            "nats",
            "ok",
            f"nats-server {server_version} at {url}, JetStream enabled ({info.streams} streams), "
            f"round trip {facts['rtt_ms']} ms{outbox}",
            facts,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Check("nats", "fail", f"NATS at {url} failed a check: {_error(exc)}", facts)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout)


async def _nats_durability(nc: Any, url: str, timeout: float) -> Check:
    """A ``"warn"`` check naming the streams on memory storage (a restart loses them), else ``"ok"``."""
    try:
        streams = await asyncio.wait_for(nc.jetstream(timeout=timeout).streams_info(), timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Check("nats durability", "info", f"could not list the streams: {_error(exc)}", {"url": url})
    memory = sorted(
        str(s.config.name)
        for s in streams
        if getattr(s.config.storage, "value", s.config.storage) == "memory"
    )
    facts: dict[str, Any] = {"url": url, "streams": len(streams), "memory_streams": memory}
    if memory:
        shown = ", ".join(memory[:10]) + (f" and {len(memory) - 10} more" if len(memory) > 10 else "")
        return Check(
            "nats durability",
            "warn",
            f"{len(memory)} stream(s) on memory storage lose every message, acknowledged or not, when "
            f"nats-server restarts: {shown}; use file storage (catga's default) for what you cannot lose",
            facts,
        )
    return Check("nats durability", "ok", f"no stream on memory storage ({len(streams)} streams)", facts)


async def check_redis(url: str, timeout: float) -> list[Check]:
    """Connect to Redis at ``url`` with catga's client, check its version and time a ``PING``
    (``"redis"``); check that it keeps acknowledged writes: persistence on, ``maxmemory-policy
    noeviction`` (``"redis durability"``).

    Never raises (except on cancellation): a failure becomes a ``"fail"`` check.
    """
    try:
        from catga.redis import RedisClient
        from catga.redis._durability import check_durability
        from catga.redis.connection import MIN_SERVER
    except ImportError:
        return [Check("redis", "fail", "hiredis is not installed: pip install 'catga[redis]'", {"url": url})]
    facts: dict[str, Any] = {"url": url, "needed_version": format_version(MIN_SERVER)}
    shown = redact_url(url)
    try:
        client = RedisClient.from_url(url, timeout=timeout, connect_timeout=timeout)
    except Exception as exc:
        return [Check("redis", "fail", f"invalid Redis URL {shown!r}: {_error(exc)}", facts)]
    try:
        t0 = time.perf_counter()
        await client.ping()  # connects: the handshake refuses a server older than MIN_SERVER
        facts["connect_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        t0 = time.perf_counter()
        await client.ping()
        facts["rtt_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        info = _info_fields(await client.execute("INFO", "server"))
        facts["server_version"] = client.server_version or info.get("redis_version", "?")
        facts["mode"] = info.get("redis_mode", "?")
        main = Check(
            "redis",
            "ok",
            f"redis-server {facts['server_version']} ({facts['mode']}) at {shown}, "
            f"round trip {facts['rtt_ms']} ms",
            facts,
        )
        report = await check_durability(client)
    except asyncio.CancelledError:
        raise
    except UnsupportedServerError as exc:
        facts["server_version"] = exc.found
        return [Check("redis", "fail", str(exc), facts)]
    except Exception as exc:
        return [Check("redis", "fail", f"cannot use Redis at {shown}: {_error(exc)}", facts)]
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), timeout)
    dfacts: dict[str, Any] = {"url": url, **report.settings}
    if report.unknown is not None:
        durability = Check("redis durability", "info", f"could not check: {report.unknown}", dfacts)
    elif report.problems:
        durability = Check("redis durability", "warn", "; ".join(report.problems + report.notes), dfacts)
    else:
        aof = report.settings.get("appendonly") == "yes"
        kept = (
            f"AOF on (appendfsync {report.settings.get('appendfsync', '?')})"
            if aof
            else f"RDB save points {report.settings.get('save')!r}"
        )
        detail = f"{kept}, maxmemory-policy noeviction" + "".join(f"; {n}" for n in report.notes)
        durability = Check("redis durability", "ok", detail, dfacts)
    return [main, durability]


def _info_fields(info: Any) -> dict[str, str]:
    text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
    return dict(line.split(":", 1) for line in text.splitlines() if ":" in line and not line.startswith("#"))


def _environment_checks() -> list[Check]:
    from catga import __version__

    checks = [
        Check(
            "catga",
            "info",
            f"catga {__version__} on {platform.python_implementation()} {platform.python_version()}",
            {"catga": __version__, "python": platform.python_version(), "platform": platform.platform()},
        )
    ]
    for pkg, extra in _PACKAGES:
        v = _pkg_version(pkg)
        detail = f"{pkg} {v}" if v else f"{pkg} not installed ({extra})"
        checks.append(Check(f"package {pkg}", "info", detail, {"version": v}))
    try:
        from catga.testing.servers import find_nats_server, find_redis_server

        for kind, finder in (("nats-server", find_nats_server), ("redis-server", find_redis_server)):
            try:
                checks.append(Check(f"binary {kind}", "info", finder(), {"path": finder()}))
            except Exception as exc:
                checks.append(Check(f"binary {kind}", "info", f"not found ({_error(exc)})", {"path": None}))
    except ImportError:  # pragma: no cover - catga.testing ships with catga
        pass
    return checks


async def check_postgres(url: str, timeout: float) -> Check:
    """Connect to PostgreSQL at ``url``, read the server version, refuse one older than the stores
    need (:data:`catga.postgres.MIN_SERVER_VERSION`) and time a ``SELECT 1``.

    Never raises (except on cancellation): a failure becomes a ``"fail"`` check.
    """
    try:
        import asyncpg

        from catga.postgres import MIN_SERVER_VERSION, check_server_version, format_version
    except ImportError:
        return Check(
            "postgres", "fail", "asyncpg is not installed: pip install 'catga[postgres]'", {"url": url}
        )
    facts: dict[str, Any] = {"url": url, "min_version": ".".join(map(str, MIN_SERVER_VERSION))}
    conn = None
    try:
        t0 = time.perf_counter()
        conn = await asyncio.wait_for(asyncpg.connect(url, timeout=timeout), timeout)
        facts["connect_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        t0 = time.perf_counter()
        await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout)
        facts["rtt_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        facts["server_version"] = format_version(conn.get_server_version())
        check_server_version(conn.get_server_version(), f" at {url}")
        return Check(
            "postgres",
            "ok",
            f"PostgreSQL {facts['server_version']} at {url} (needs >= {facts['min_version']}), "
            f"round trip {facts['rtt_ms']} ms",
            facts,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if "server_version" in facts:  # reached, but refused (too old)
            return Check("postgres", "fail", str(exc), facts)
        return Check("postgres", "fail", f"cannot use PostgreSQL at {url}: {_error(exc)}", facts)
    finally:
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout)


async def run_checks(
    nats_url: str | None, redis_url: str | None, timeout: float, postgres_url: str | None = None
) -> list[Check]:
    """Environment facts plus the NATS, Redis and PostgreSQL checks for the URLs given (concurrently)."""
    checks = _environment_checks()
    pending: list[Awaitable[list[Check]]] = []
    if nats_url:
        pending.append(check_nats(nats_url, timeout))
    if redis_url:
        pending.append(check_redis(redis_url, timeout))
    if postgres_url:
        pending.append(_one(check_postgres(postgres_url, timeout)))
    for found in await asyncio.gather(*pending):
        checks.extend(found)
    if not nats_url and not redis_url and not postgres_url:
        checks.append(
            Check(
                "servers",
                "info",
                "no NATS/Redis/PostgreSQL URL given: pass --nats / --redis / --postgres or set "
                "CATGA_NATS_URL / CATGA_REDIS_URL / CATGA_POSTGRES_URL",
            )
        )
    return checks


async def _one(check: Awaitable[Check]) -> list[Check]:
    return [await check]


def doctor(
    nats_url: Annotated[
        str | None,
        typer.Option("--nats", envvar="CATGA_NATS_URL", help="NATS URL to check.", show_default=False),
    ] = None,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis", envvar="CATGA_REDIS_URL", help="Redis URL to check.", show_default=False),
    ] = None,
    postgres_url: Annotated[
        str | None,
        typer.Option(
            "--postgres", envvar="CATGA_POSTGRES_URL", help="PostgreSQL URL to check.", show_default=False
        ),
    ] = None,
    timeout: Annotated[
        float, typer.Option(envvar="CATGA_DOCTOR_TIMEOUT", help="Seconds allowed for each server call.")
    ] = 3.0,
    as_json: Annotated[bool, typer.Option("--json", envvar="CATGA_DOCTOR_JSON", help="Print JSON.")] = False,
) -> None:
    """Check the installation and NATS/Redis/PostgreSQL connectivity; exit 1 on a failure."""
    with reported_errors():
        checks = run_async(lambda: run_checks(nats_url, redis_url, timeout, postgres_url))
        failed = [c for c in checks if c.status == "fail"]
        if as_json:
            print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
        else:
            table = Table(title="catga doctor", show_header=True)
            table.add_column("check")
            table.add_column("", justify="center")
            table.add_column("detail", overflow="fold")
            marks = {
                "ok": "[green]ok[/]",
                "warn": "[yellow]WARN[/]",
                "fail": "[bold red]FAIL[/]",
                "info": "[dim]·[/]",
            }
            for c in checks:
                table.add_row(escape(c.name), marks[c.status], escape(c.detail))
            console = out_console()
            console.print(table)
            if failed:
                console.print(f"[bold red]{len(failed)} check(s) failed[/]")
            warned = [c for c in checks if c.status == "warn"]
            if warned:
                console.print(f"[yellow]{len(warned)} warning(s): acknowledged messages can be lost[/]")
        if failed:
            raise typer.Exit(1)
