"""The ``catga`` command line: --version, errors, demo, doctor."""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import catga
from catga.cli import app, version_line
from catga.testing import free_port


def invoke(*args: str, env: dict[str, str | None] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_version_names_catga_python_and_platform() -> None:
    code, out, _ = invoke("--version")
    assert code == 0
    assert out.strip() == version_line()
    assert f"catga {catga.__version__}" in out
    assert platform.python_version() in out and platform.system() in out


def test_console_script_is_installed_and_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from catga.cli import main; main()", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"catga {catga.__version__}")


def test_no_arguments_shows_help() -> None:
    result = CliRunner().invoke(app, [])
    assert "demo" in result.output and "bench" in result.output and "doctor" in result.output


def test_error_is_one_line_with_a_hint_and_exit_1() -> None:
    code, out, err = invoke("bench", "no-such-suite", "--quick")
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("BenchError: unknown benchmark suite 'no-such-suite'; known suites: ")
    assert "mediator" in lines[0]
    assert lines[1].startswith("hint: ") and len(lines) == 2
    assert out == "" and "Traceback" not in err


def test_a_bad_option_value_is_a_usage_error_exit_2() -> None:
    # docs/cli.md: usage errors (a bad option value) exit with code 2, naming the option.
    for args, env in (
        (("bench", "mediator", "--concurrency", "abc"), None),
        (("bench", "mediator"), {"CATGA_BENCH_CONCURRENCY": "0,1"}),
    ):
        code, out, err = invoke(*args, env=env)
        assert code == 2, (args, out, err)
        assert "--concurrency" in err and "expects positive integers like 1,2,4,8" in err
        assert "Traceback" not in out + err


def test_debug_shows_the_traceback() -> None:
    code, _, err = invoke("--debug", "bench", "no-such-suite", "--quick")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert "BenchError: unknown benchmark suite" in err


def test_debug_reads_its_environment_variable() -> None:
    code, _, err = invoke("bench", "no-such-suite", "--quick", env={"CATGA_DEBUG": "1"})
    assert code == 1
    assert "Traceback (most recent call last)" in err


def test_bench_list_shows_plain_text_not_sphinx_markup() -> None:
    code, out, err = invoke("bench", "--list")
    assert code == 0, err
    assert "eventstore-memory" in out and "MemoryEventStore" in out
    for markup in (":class:", ":meth:", ":func:", ":mod:", "``", "`~"):
        assert markup not in out, markup


def test_plain_text_strips_roles_and_literals() -> None:
    from catga.bench.discovery import plain_text

    text = "a :class:`~catga.memory.X` b :meth:`shown <catga.Y.z>` c ``code`` :func:`catga.f`"
    assert plain_text(text) == "a X b shown c code catga.f"


def test_doctor_without_urls_reports_the_installation() -> None:
    code, out, _ = invoke(
        "doctor", "--json", env={"CATGA_NATS_URL": None, "CATGA_REDIS_URL": None, "CATGA_POSTGRES_URL": None}
    )
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    names = {c["name"]: c for c in data["checks"]}
    assert names["catga"]["facts"]["catga"] == catga.__version__
    assert "no NATS/Redis/PostgreSQL URL given" in names["servers"]["detail"]


@pytest.mark.nats
def test_doctor_checks_nats_version_and_jetstream(nats_url: str) -> None:
    code, out, _ = invoke("doctor", "--nats", nats_url, "--json")
    assert code == 0, out
    [nats_check] = [c for c in json.loads(out)["checks"] if c["name"] == "nats"]
    assert nats_check["status"] == "ok"
    assert nats_check["facts"]["jetstream"] is True
    assert nats_check["facts"]["server_version"].count(".") >= 2


@pytest.mark.nats
def test_doctor_takes_several_nats_servers(nats_url: str) -> None:
    # a cluster's URL list; the first server is down, the second answers
    dead = f"nats://127.0.0.1:{free_port()}"
    code, out, _ = invoke("doctor", "--nats", f"{dead},{nats_url}", "--json")
    assert code == 0, out
    [nats_check] = [c for c in json.loads(out)["checks"] if c["name"] == "nats"]
    assert nats_check["status"] == "ok", nats_check


@pytest.mark.nats
def test_doctor_reads_the_nats_url_from_the_environment(nats_url: str) -> None:
    code, out, _ = invoke("doctor", env={"CATGA_NATS_URL": nats_url, "CATGA_REDIS_URL": None})
    assert code == 0, out
    assert "JetStream enabled" in out and nats_url in out


@pytest.mark.redis
def test_doctor_checks_redis(redis_url: str) -> None:
    code, out, _ = invoke("doctor", "--redis", redis_url, "--json", env={"CATGA_NATS_URL": None})
    assert code == 0, out
    [redis_check] = [c for c in json.loads(out)["checks"] if c["name"] == "redis"]
    assert redis_check["status"] == "ok"
    assert redis_check["facts"]["server_version"][0].isdigit()


def test_doctor_fails_with_exit_1_on_closed_ports() -> None:
    port = free_port()
    code, out, _ = invoke(
        "doctor",
        "--nats",
        f"nats://127.0.0.1:{port}",
        "--redis",
        f"redis://127.0.0.1:{port}/0",
        "--timeout",
        "2",
        "--json",
    )
    assert code == 1
    data = json.loads(out)
    assert data["ok"] is False
    failed = {c["name"]: c["detail"] for c in data["checks"] if c["status"] == "fail"}
    assert set(failed) == {"nats", "redis"}
    assert str(port) in failed["nats"] and str(port) in failed["redis"]


def test_doctor_refuses_a_non_nats_scheme_without_connecting() -> None:
    # ftp://x would resolve "x" (DNS) and try to connect; the scheme alone says it cannot be NATS.
    for url, expected in (
        ("ftp://x", "unsupported scheme 'ftp' in 'ftp://x'"),
        ("http://127.0.0.1:4222", "unsupported scheme 'http'"),
        ("nats://", "no host in NATS URL 'nats://'"),
        (f"nats://127.0.0.1:{free_port()},ftp://x", "unsupported scheme 'ftp'"),
    ):
        code, out, _ = invoke("doctor", "--nats", url, "--json", env={"CATGA_REDIS_URL": None})
        assert code == 1
        [check] = [c for c in json.loads(out)["checks"] if c["name"] == "nats"]
        assert check["status"] == "fail" and expected in check["detail"], check
        assert "connect_ms" not in check["facts"]
        assert "cannot connect" not in check["detail"]


def test_doctor_human_output_marks_the_failure() -> None:
    code, out, _ = invoke("doctor", "--nats", f"nats://127.0.0.1:{free_port()}", "--timeout", "2")
    assert code == 1
    assert "FAIL" in out and "1 check(s) failed" in out


# -- demo --------------------------------------------------------------------------------------

EXPECTED_OUTCOMES = ["ok", "ok", "payment_declined", "conflict", "ok", "conflict", "ok", "not_found"]


def test_demo_runs_and_narrates_every_step() -> None:
    code, out, err = invoke("demo")
    assert code == 0, out + err
    for text in (
        "1. CreateOrder A-1001: alice buys 2 × widget",
        "StockReserved(order_id=A-1001, sku=widget, quantity=2)",
        "OrderCreated(order_id=A-1001, customer=alice, sku=widget, quantity=2, total=2500)",
        "to alice: order A-1001 confirmed, total 25.00",
        "released 1 × gadget reserved for A-1002",
        "PaymentFailed(order_id=A-1002",
        "payment_declined: card tok_declined was declined for order A-1002",
        "conflict: order A-1003 wants 5 × gadget but only 1 in stock",
        "OrderCancelled(order_id=A-1001",
        "order A-1001: cancelled, 2 × widget, total 25.00, stream version 1",
        "not_found: Order 'A-9999' not found",
        "stock at end: widget 10, gadget 1",
        "all 8 steps behaved as expected",
    ):
        assert text in out, text
    # The compensation ran before the reservation's release event of the failed order.
    assert out.index("released 1 × gadget reserved for A-1002") < out.index("StockReleased(order_id=A-1002")


def test_demo_json_reports_outcomes_stock_and_streams() -> None:
    code, out, _ = invoke("demo", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["transport"] == "memory://"
    assert [s["outcome"] for s in data["steps"]] == EXPECTED_OUTCOMES
    assert data["stock"] == {"widget": 10, "gadget": 1}
    assert data["streams"] == {"Order-A-1001": 2, "Order-A-1002": 0, "Order-A-1003": 0}
    kinds = {kind for s in data["steps"] for kind, _ in s["lines"]}
    assert kinds == {"event", "notify", "inventory", "compensate"}


def test_demo_exits_1_when_a_step_misbehaves(monkeypatch: pytest.MonkeyPatch) -> None:
    from catga.examples import orders

    async def always_pays(self: orders.PaymentGateway, order_id: str, card: str, amount: int) -> None:
        self.charges.append((order_id, amount))

    monkeypatch.setattr(orders.PaymentGateway, "charge", always_pays)  # the declined card now pays
    code, out, _ = invoke("demo")
    assert code == 1
    assert "UNEXPECTED" in out and "unexpected outcome in step(s) 3" in out


def test_demo_rejects_an_unsupported_store() -> None:
    code, out, err = invoke("demo", env={"CATGA_STORE": "postgres://127.0.0.1/x"})
    assert code == 1
    assert err.splitlines()[0].startswith("ConfigurationError: --store (CATGA_STORE) URL ")
    assert "postgres://" in err
    assert out == ""


def test_demo_names_the_bad_option_before_any_banner() -> None:
    code, out, err = invoke("demo", "--transport", "amqp://x")
    assert code == 1
    assert out == "", "nothing (no banner) is printed before the error"
    first, hint = [line for line in err.splitlines() if line.strip()]
    assert first.startswith("ConfigurationError: --transport (CATGA_TRANSPORT) URL 'amqp://x'")
    assert "unsupported scheme 'amqp'" in first
    assert hint.startswith("hint: fix the option")


def test_demo_through_the_console_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", "from catga.cli import main; main()", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all 8 steps behaved as expected" in proc.stdout


WORKFLOW_OUTCOMES = ["sleeping", "completed", "compensated", "compensated"]


def test_demo_workflow_narrates_steps_compensation_and_the_shipment_timeout() -> None:
    code, out, err = invoke("demo", "--workflow")
    assert code == 0, out + err
    for text in (
        "place_order on workflows memory://",
        "reserve_stock: 2 × widget reserved",
        "charge_card: 25.00 charged (ch-W-1)",
        "waiting for ShipmentSent(order_id=W-1)",
        "completed: TRK-1",
        "charge_card: card of bob declined",
        "release_stock: 1 × gadget back in stock",
        "PaymentDeclinedError: card of bob declined",
        "refund_card: 30.00 refunded (ch-W-3)",
        "release_stock: 3 × widget back in stock",
        "ShipmentTimeoutError: no shipment for W-3",
        "stock at end: widget 8, gadget 1",
        "all 4 steps behaved as expected",
    ):
        assert text in out, text
    # The compensations of W-3 run in reverse order: the refund before the release.
    assert out.index("refund_card: 30.00") < out.index("release_stock: 3 × widget")


def test_demo_workflow_json() -> None:
    code, out, _ = invoke("demo", "--workflow", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True and data["workflows"] == "memory://" and data["namespace"] is None
    assert [s["outcome"] for s in data["steps"]] == WORKFLOW_OUTCOMES
    assert data["stock"] == {"widget": 8, "gadget": 1}


def test_demo_workflow_refuses_the_orders_demo_options() -> None:
    code, out, err = invoke("demo", "--workflow", "--store", "redis://127.0.0.1:1")
    assert code == 1 and out == ""
    assert err.startswith("ConfigurationError: --store is for the orders demo; with --workflow give")
    code, out, err = invoke("demo", "--workflow", "--workflows", "amqp://x")
    assert code == 1 and out == ""
    assert err.startswith("ConfigurationError: --workflows (CATGA_WORKFLOWS): workflows URL 'amqp://x'")


@pytest.mark.redis
def test_demo_workflow_on_redis_cleans_up(redis_url: str) -> None:
    code, out, _ = invoke("demo", "--workflow", "--json", "--workflows", redis_url)
    assert code == 0, out
    data = json.loads(out)
    assert data["ok"] is True and data["namespace"].startswith("demo_")
    assert [s["outcome"] for s in data["steps"]] == WORKFLOW_OUTCOMES

    async def leftovers() -> list[bytes]:
        from catga.redis import RedisClient

        async with RedisClient.from_url(redis_url) as client:
            _, keys = await client.execute("SCAN", 0, "MATCH", f"{data['namespace']}:*", "COUNT", 1000)
            return list(keys)

    assert asyncio.run(leftovers()) == []


@pytest.mark.nats
def test_demo_workflow_on_nats_cleans_up(nats_url: str) -> None:
    code, out, _ = invoke("demo", "--workflow", "--json", "--workflows", nats_url)
    assert code == 0, out
    data = json.loads(out)
    assert data["ok"] is True and [s["outcome"] for s in data["steps"]] == WORKFLOW_OUTCOMES

    async def streams() -> list[str]:
        from catga.nats import NatsConnection

        async with await NatsConnection.connect(nats_url, name="test-demo") as conn:
            return [info.config.name or "" for info in await conn.js.streams_info()]

    assert [name for name in asyncio.run(streams()) if data["namespace"] in name] == []


@pytest.mark.postgres
def test_demo_workflow_on_postgres(postgres_url: str) -> None:
    code, out, err = invoke("demo", "--workflow", "--json", "--workflows", postgres_url)
    assert code == 0, out + err
    data = json.loads(out)
    assert data["ok"] is True and [s["outcome"] for s in data["steps"]] == WORKFLOW_OUTCOMES


@pytest.mark.postgres
def test_doctor_checks_postgres(postgres_url: str) -> None:
    code, out, _ = invoke("doctor", "--postgres", postgres_url, "--json", env={"CATGA_NATS_URL": None})
    assert code == 0, out
    [check] = [c for c in json.loads(out)["checks"] if c["name"] == "postgres"]
    assert check["status"] == "ok" and check["facts"]["server_version"][:2].isdigit()


def test_doctor_reports_an_unreachable_postgres() -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    code, out, _ = invoke(
        "doctor", "--postgres", url, "--json", "--timeout", "2", env={"CATGA_NATS_URL": None}
    )
    assert code == 1
    [check] = [c for c in json.loads(out)["checks"] if c["name"] == "postgres"]
    assert check["status"] == "fail" and "cannot use PostgreSQL" in check["detail"]
