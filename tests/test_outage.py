"""OutageLog: one line per outage (and per interval), not one per failure; and the mediator uses it."""

from __future__ import annotations

import logging

import msgspec
import pytest

from catga import Command, Mediator
from catga._outage import OutageLog
from catga.errors import BackendUnavailableError, ErrorCode, PayloadTooLargeError

LOGGER = "catga.test_outage"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _down(n: int = 0) -> BackendUnavailableError:
    return BackendUnavailableError(f"NATS publish failed: connection refused ({n})", backend="nats")


def test_500_failures_log_one_line_then_one_per_interval_then_recovery(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    log = OutageLog(logging.getLogger(LOGGER), "NATS transport", interval=30.0, clock=clock)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for i in range(500):
            log.failure(_down(i), f"publishing message {i}")
            clock.now += 0.0625  # 500 failures over 31.25 s: one "still failing" line at 30 s
        assert log.failing and log.failures == 500
        log.recovered()
        log.recovered()  # a second success is not a second recovery
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    first, still, recovered = lines
    assert "NATS transport failed (publishing message 0)" in first and "connection refused (0)" in first
    assert caplog.records[0].exc_info is None  # catga's own error: no traceback at WARNING
    assert "still failing: 481 failures in 30.0 s (480 since the last report)" in still
    assert recovered.startswith("NATS transport recovered after 500 failures in 31.")
    assert "connection refused (499)" in recovered
    assert not log.failing


def test_an_unexpected_exception_keeps_its_traceback_once(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger(LOGGER), "outbox relay", clock=Clock())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(10):
            log.failure(RuntimeError("a bug"))
    (record,) = caplog.records
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_debug_shows_every_failure_with_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger(LOGGER), "x", clock=Clock())
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for i in range(3):
            log.failure(_down(i))
    assert len(caplog.records) == 3
    assert all(r.exc_info is not None for r in caplog.records)


def test_a_new_outage_after_recovery_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    log = OutageLog(logging.getLogger(LOGGER), "x", clock=Clock())
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        log.failure(_down())
        log.recovered()
        log.failure(_down())
        log.failure(_down())
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "x failed",
        "x recovered after 1 failures in 0.0 s (last error",
        "x failed",
    ]


class Publish(msgspec.Struct, Command[None], frozen=True):
    n: int


async def test_mediator_counts_backend_failures_and_returns_their_code(
    caplog: pytest.LogCaptureFixture,
) -> None:
    m = Mediator()
    broken = True

    @m.handler
    async def publish(cmd: Publish) -> None:
        if broken:
            raise _down(cmd.n)

    with caplog.at_level(logging.INFO, logger="catga"):
        results = [await m.send(Publish(i)) for i in range(500)]
        assert {(r.code, r.retryable) for r in results} == {(ErrorCode.UNAVAILABLE, True)}
        assert results[7].error == "NATS publish failed: connection refused (7)"
        assert len(caplog.records) == 1, [r.getMessage() for r in caplog.records]
        broken = False
        assert (await m.send(Publish(500))).ok
        m.backend_recovered("nats")
        m.backend_recovered("redis")  # never failed: nothing to say
    assert len(caplog.records) == 2
    assert "nats backend recovered after 500 failures" in caplog.records[1].getMessage()


def test_a_failure_after_a_quiet_interval_ends_the_earlier_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    log = OutageLog(logging.getLogger(LOGGER), "x", interval=30.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for _ in range(3):
            log.failure(_down())
            clock.now += 1.0
        clock.now += 3600.0  # recovered without anyone saying so; a day later it fails again
        log.failure(_down())
    first, ended, again = (r.getMessage() for r in caplog.records)
    assert first.startswith("x failed")
    assert ended.startswith("x: no failure for 3601.0 s after the earlier 3 failures in 2.0 s")
    assert ended.endswith("counting afresh")
    assert again.startswith("x failed") and log.failures == 1


async def test_mediator_shows_catgas_own_errors_and_hides_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    m = Mediator()

    @m.handler
    async def publish(cmd: Publish) -> None:
        if cmd.n == 1:
            raise PayloadTooLargeError(2_000_000, 1_048_576, destination="orders")
        raise KeyError("secret-column")

    with caplog.at_level(logging.ERROR, logger="catga.mediator"):
        large, bug = await m.send(Publish(1)), await m.send(Publish(2))
    assert large.code == ErrorCode.TOO_LARGE and not large.retryable
    assert large.error is not None and "2000000 bytes to 'orders'" in large.error
    assert (bug.code, bug.error) == (ErrorCode.INTERNAL, "internal error")
    first, second = caplog.records
    assert "[too_large]" in first.getMessage() and first.exc_info is not None
    assert "unexpected error" in second.getMessage() and "secret" not in repr(bug)
