"""App.health() and its HTTP route: running, servers answering PING, consumers and relay alive."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from starlette.applications import Starlette

import catga
from catga.health import HealthCheck, run_checks
from catga.messages import Event, message_name
from catga.web import Endpoints


@message_name("test_health.Ping")
@dataclass(frozen=True)
class Ping(Event):
    text: str


async def test_an_app_is_unhealthy_until_started() -> None:
    app = catga.App()
    before = await app.health()
    assert not before.ok and before.checks[0] == HealthCheck(
        "app", False, "RuntimeError: the app is not started", before.checks[0].elapsed_ms
    )
    async with app:
        during = await app.health()
    assert during.ok and [c.name for c in during.checks] == ["app"]


async def test_servers_consumers_and_relay_are_checked(app_url: str) -> None:
    app = catga.App(transport=app_url, store=app_url, outbox=app_url, name="svc")
    app.consume(Ping)
    async with app:
        report = await app.health()
        names = [c.name for c in report.checks]
        assert report.ok, report
        backend = "nats" if app_url.startswith("nats") else "redis"
        assert sum(name.startswith(backend + " ") for name in names) == 1  # one shared connection, once
        assert "consumers" in names and "outbox relay" in names
        assert all(c.elapsed_ms >= 0 for c in report.checks)
        assert app.relay is not None
        await app.relay.aclose()  # the relay died
        assert [c.name for c in (await app.health()).checks if not c.ok] == ["outbox relay"]
        for conn in app.backends.connections:
            await conn.aclose()  # the server connection is gone
        failed = {c.name for c in (await app.health(timeout=1.0)).checks if not c.ok}
        assert any(name.startswith(backend) for name in failed)


async def test_a_slow_check_times_out_without_raising() -> None:
    async def slow() -> str:
        import asyncio

        await asyncio.sleep(5)
        return "never"

    report = await run_checks([("slow", slow)], timeout=0.05)
    assert not report.ok and report.checks[0].detail == "no answer within 0.05 s"


async def test_the_health_route_answers_200_or_503() -> None:
    app = catga.App()
    api = Endpoints(app)
    api.health()
    web = Starlette(routes=api.routes)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=web), base_url="http://t") as client:
        r = await client.get("/healthz")
        assert r.status_code == 503 and r.json()["ok"] is False
        async with app:
            r = await client.get("/healthz")
        assert r.status_code == 200 and r.json()["checks"][0]["name"] == "app"


async def test_the_app_check_counts_components_in_the_right_number() -> None:
    class Component:
        async def aclose(self) -> None:
            pass

    for n, detail in ((0, "0 components"), (1, "1 component"), (2, "2 components")):
        app = catga.App()
        app.components.clear()  # the in-memory stores it manages by default
        for _ in range(n):
            app.add_component(Component())
        async with app:
            report = await app.health()
        [check] = [c for c in report.checks if c.name == "app"]
        assert check.detail == detail


async def test_a_recovered_data_loss_degrades_the_consumers_check_for_a_while() -> None:
    from types import SimpleNamespace

    from catga.health import DEGRADED_FOR, Degraded, consumers_detail

    fine = SimpleNamespace(recoveries=0, last_recovery=None)
    hit = SimpleNamespace(recoveries=2, last_recovery=(1_000_000.0, "consumer group g on k vanished"))
    assert consumers_detail([fine]) == "1 subscription"
    assert consumers_detail([fine, fine]) == "2 subscriptions"
    soon = consumers_detail([fine, hit], now=1_000_000.0 + 60)
    assert isinstance(soon, Degraded) and "2 times, last at 1970-01-12T13:46:40+00:00" in soon
    later = consumers_detail([fine, hit], now=1_000_000.0 + DEGRADED_FOR + 1)
    assert not isinstance(later, Degraded) and "consumer group g on k vanished" in later

    async def degraded() -> str:
        return soon

    report = await run_checks([("consumers", degraded)], timeout=1.0)
    assert report.ok and report.degraded and report.checks[0].degraded
    assert report.to_dict()["degraded"] is True
