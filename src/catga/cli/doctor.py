"""``catga doctor``: check the installation and the NATS / Redis servers catga would use."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from catga.cli._common import out_console, print_json, reported_errors, run_async

__all__ = ("Check", "check_nats", "check_redis", "doctor", "run_checks")

Status = Literal["ok", "fail", "info"]

_PACKAGES = (
    ("msgspec", "core"),
    ("nats-py", "catga[nats]"),
    ("redis", "catga[redis]"),
    ("hiredis", "catga[redis]"),
    ("uvloop", "catga[bench]"),
    ("matplotlib", "catga[bench]"),
)


@dataclass
class Check:
    """The outcome of one check.

    Attributes:
        name: What was checked (``"nats"``, ``"redis"``, ``"package nats-py"``...).
        status: ``"ok"``, ``"fail"`` or ``"info"`` (informational, never fails the run).
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


async def check_nats(url: str, timeout: float) -> Check:
    """Connect to NATS at ``url``, read the server version and check that JetStream answers.

    Never raises (except on cancellation): a failure becomes a ``"fail"`` check.
    """
    try:
        import nats
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
                servers=[url],
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
        return Check(
            "nats",
            "ok",
            f"nats-server {server_version} at {url}, JetStream enabled ({info.streams} streams), "
            f"round trip {facts['rtt_ms']} ms",
            facts,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Check("nats", "fail", f"NATS at {url} failed a check: {_error(exc)}", facts)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), timeout)


async def check_redis(url: str, timeout: float) -> Check:
    """Connect to Redis at ``url``, read the server version and time a ``PING``.

    Never raises (except on cancellation): a failure becomes a ``"fail"`` check.
    """
    try:
        import redis.asyncio as aioredis
    except ImportError:
        return Check("redis", "fail", "redis is not installed: pip install 'catga[redis]'", {"url": url})
    facts: dict[str, Any] = {"url": url}
    try:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Check("redis", "fail", f"invalid Redis URL {url!r}: {_error(exc)}", facts)
    try:
        t0 = time.perf_counter()
        await asyncio.wait_for(client.ping(), timeout)
        facts["connect_ms"] = round((time.perf_counter() - t0) * 1000, 2)
        t0 = time.perf_counter()
        await asyncio.wait_for(client.ping(), timeout)
        facts["rtt_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        info = await asyncio.wait_for(client.info("server"), timeout)
        facts["server_version"] = str(info.get("redis_version", "?"))
        facts["mode"] = str(info.get("redis_mode", "?"))
        return Check(
            "redis",
            "ok",
            f"redis-server {facts['server_version']} ({facts['mode']}) at {url}, "
            f"round trip {facts['rtt_ms']} ms",
            facts,
        )
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        return Check("redis", "fail", f"cannot use Redis at {url}: {_error(exc)}", facts)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.aclose(), timeout)


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
    pending = []
    if nats_url:
        pending.append(check_nats(nats_url, timeout))
    if redis_url:
        pending.append(check_redis(redis_url, timeout))
    if postgres_url:
        pending.append(check_postgres(postgres_url, timeout))
    checks.extend(await asyncio.gather(*pending))
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
            marks = {"ok": "[green]ok[/]", "fail": "[bold red]FAIL[/]", "info": "[dim]·[/]"}
            for c in checks:
                table.add_row(escape(c.name), marks[c.status], escape(c.detail))
            console = out_console()
            console.print(table)
            if failed:
                console.print(f"[bold red]{len(failed)} check(s) failed[/]")
        if failed:
            raise typer.Exit(1)
