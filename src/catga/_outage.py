"""One log line per outage, not one traceback per failed message (private).

When a broker is down every publish fails the same way; logging each failure with its traceback buried
the one line that mattered (a 10 s outage wrote ~7,600 lines). An :class:`OutageLog` turns a run of
failures of one thing into:

* one line when the first failure arrives (the error; its traceback only when it is not one of catga's
  own errors, or at DEBUG),
* one "still failing" line per ``interval`` seconds while failures continue, with the count,
* one "recovered" line, with the count and the duration, when the caller reports a success (or,
  for a caller that sees no successes, when a failure comes after four quiet intervals: the earlier
  run of failures is summed up and counting starts afresh).

The failures in between are counted (and logged at DEBUG). Used by the mediator for backend errors
raised by handlers (the app's event export among them), by the outbox relay and by the transports'
consumer loops. Cheap when nothing fails: callers check ``log.failing`` (an attribute) before calling
:meth:`OutageLog.recovered`. Not thread-safe: use it from one event loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from catga.errors import CatgaError

__all__ = ("OutageLog",)

#: Seconds between two "still failing" lines of one outage.
DEFAULT_INTERVAL = 30.0


class OutageLog:
    """Rate-limited logging of a recurring failure of one thing (a backend, a relay, a consumer).

    Args:
        logger: where to log.
        what: what fails, for the messages (``"NATS transport"``, ``"outbox relay publish"``).
        interval: seconds between "still failing" lines.
        level: the level of the outage's lines (start, still failing, recovered).
        clock: monotonic seconds (tests pass a fake one).
        tracebacks: log the first failure's traceback when it is not one of catga's own errors (a
            bug, say); False for errors known to be plain connection failures (a client library's).
            At DEBUG every failure is logged with its traceback anyway.

    Attributes:
        failing: True between the first failure and :meth:`recovered`.
        failures: failures of the current (or last) outage.
    """

    __slots__ = (
        "_clock",
        "_last_error",
        "_last_failure",
        "_reported",
        "_since",
        "_suppressed",
        "_tracebacks",
        "failing",
        "failures",
        "interval",
        "level",
        "logger",
        "what",
    )

    def __init__(
        self,
        logger: logging.Logger,
        what: str,
        *,
        interval: float = DEFAULT_INTERVAL,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        tracebacks: bool = True,
    ) -> None:
        self.logger = logger
        self._tracebacks = tracebacks
        self.what = what
        self.interval = interval
        self.level = level
        self._clock = clock
        self.failing = False
        self.failures = 0
        self._since = 0.0
        self._reported = 0.0
        self._suppressed = 0
        self._last_error = ""
        self._last_failure = 0.0

    def failure(self, exc: BaseException, detail: str = "") -> None:
        """Record one failure: log it if it starts an outage or ``interval`` passed since the last line.

        Args:
            exc: what was raised.
            detail: what failed this time (``"publishing message 123 to 'orders'"``), logged with the
                first failure and at DEBUG.
        """
        now = self._clock()
        logger = self.logger
        error = f"{type(exc).__name__}: {exc}"
        where = f" ({detail})" if detail else ""
        if self.failing and now - self._last_failure >= 4 * self.interval:
            # Nothing failed for a long while and nobody reported a recovery (a source that sees no
            # successes, or no traffic): close that run of failures and count afresh.
            logger.log(
                self.level,
                "%s: no failure for %.1f s after the earlier %d failures in %.1f s (last error: %s); "
                "counting afresh",
                self.what,
                now - self._last_failure,
                self.failures,
                self._last_failure - self._since,
                self._last_error,
            )
            self.failing = False
        self._last_error = error
        self._last_failure = now
        if not self.failing:
            self.failing = True
            self.failures = 1
            self._since = self._reported = now
            self._suppressed = 0
            if logger.isEnabledFor(self.level):
                # A traceback helps with a bug, not with a broker that is down: catga's own errors
                # already say what happened, so theirs is shown at DEBUG only.
                trace = (self._tracebacks and not isinstance(exc, CatgaError)) or logger.isEnabledFor(
                    logging.DEBUG
                )
                logger.log(
                    self.level,
                    "%s failed%s: %s; further failures are counted, with one line every %g s until it "
                    "recovers",
                    self.what,
                    where,
                    error,
                    self.interval,
                    exc_info=exc if trace else None,
                )
            return
        self.failures += 1
        self._suppressed += 1
        if now - self._reported >= self.interval:
            logger.log(
                self.level,
                "%s still failing: %d failures in %.1f s (%d since the last report); last error: %s",
                self.what,
                self.failures,
                now - self._since,
                self._suppressed,
                error,
            )
            self._reported = now
            self._suppressed = 0
        elif logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s failed again%s: %s", self.what, where, error, exc_info=exc)

    def recovered(self) -> None:
        """Report a success: ends the outage with one line (nothing happens when not failing)."""
        if not self.failing:
            return
        self.failing = False
        self.logger.log(
            self.level,
            "%s recovered after %d failures in %.1f s (last error: %s)",
            self.what,
            self.failures,
            self._clock() - self._since,
            self._last_error,
        )

    def __repr__(self) -> str:
        state = f"failing, {self.failures} failures" if self.failing else "ok"
        return f"OutageLog({self.what!r}, {state})"
