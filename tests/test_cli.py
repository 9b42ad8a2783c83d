"""The ``catga`` command line: --version, errors, demo, doctor."""

from __future__ import annotations

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


def test_option_errors_are_reported_as_name_message_and_hint() -> None:
    code, out, err = invoke("bench", "mediator", env={"CATGA_BENCH_CONCURRENCY": "0,1"})
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith("BenchError: --concurrency expects positive integers")
    assert lines[1].startswith("hint: ")
    assert len(lines) == 2
    assert "Traceback" not in out + err


def test_debug_shows_the_traceback() -> None:
    code, _, err = invoke("--debug", "bench", "mediator", "--concurrency", "x")
    assert code == 1
    assert "Traceback (most recent call last)" in err
    assert "BenchError: --concurrency expects" in err


def test_debug_reads_its_environment_variable() -> None:
    code, _, err = invoke("bench", "mediator", "--concurrency", "x", env={"CATGA_DEBUG": "1"})
    assert code == 1
    assert "Traceback (most recent call last)" in err


# -- doctor ------------------------------------------------------------------------------------


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
    code, _, err = invoke("demo", env={"CATGA_STORE": "postgres://127.0.0.1/x"})
    assert code == 1
    assert err.splitlines()[0].startswith("ConfigurationError: ")
    assert "postgres://" in err


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
