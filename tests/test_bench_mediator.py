"""The mediator bench suite: each implementation is measured with its library's logging as intended."""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack

from catga.bench.harness import BenchEnv
from catga.bench.suites import _mediator_cqrs as peer
from catga.bench.suites import mediator as suite


async def test_each_python_cqrs_variant_runs_at_its_own_logger_level() -> None:
    cqrs_logger = logging.getLogger("cqrs")
    assert peer.SHIPPED_LEVEL == logging.DEBUG  # what importing python-cqrs sets
    env = BenchEnv(quick=True)
    send_cases = {c.impl: c for c in suite.cases(env) if c.case == "send"}
    assert set(send_cases) == {"catga", "python-cqrs", "python-cqrs-quiet"}
    async with AsyncExitStack() as stack:  # like the runner: every implementation set up first
        ops = {impl: await stack.enter_async_context(c.factory(env)) for impl, c in send_cases.items()}
        before = peer.COUNTS["cmd"]
        for impl, level in (
            ("python-cqrs", logging.DEBUG),
            ("python-cqrs-quiet", logging.WARNING),
            ("python-cqrs", logging.DEBUG),
        ):
            await ops[impl](0)  # type: ignore[misc]
            assert cqrs_logger.level == level, impl
        await ops["catga"](0)  # type: ignore[misc]
        assert cqrs_logger.level == logging.DEBUG  # catga's op leaves python-cqrs alone
        assert peer.COUNTS["cmd"] == before + 3
    assert cqrs_logger.level == peer.SHIPPED_LEVEL
    # catga is measured at its default: its loggers have no level of their own.
    for name in ("catga", "catga.pipeline", "catga.mediator"):
        assert logging.getLogger(name).level == logging.NOTSET


async def test_python_cqrs_as_shipped_builds_log_records_and_quiet_does_not() -> None:
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(level=logging.DEBUG)
    cqrs_logger = logging.getLogger("cqrs")
    cqrs_logger.addHandler(handler)
    env = BenchEnv(quick=True)
    try:
        for impl, expect_records in (("python-cqrs", True), ("python-cqrs-quiet", False)):
            case = next(c for c in suite.cases(env) if c.case == "send" and c.impl == impl)
            async with case.factory(env) as op:
                records.clear()
                await op(0)  # type: ignore[misc]
                assert bool(records) is expect_records, impl
    finally:
        cqrs_logger.removeHandler(handler)
