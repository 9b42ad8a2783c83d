"""LoggingBehavior: one stdlib log record per handled message, with structured ``extra`` fields."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any

from catga.context import Context
from catga.handlers import HandlerInfo
from catga.pipeline._hooks import Bypass, set_bypass
from catga.pipeline.base import Behavior, Next
from catga.result import Result

__all__ = ("LoggingBehavior",)


class LoggingBehavior(Behavior):
    """Log each handled message: ``handled <Type> <id> ok|failed in <ms>``.

    Records carry ``extra`` fields ``catga_message_type``, ``catga_message_id``,
    ``catga_correlation_id``, ``catga_ok``, ``catga_code`` and ``catga_elapsed_ms``.

    Cost when the logger is not enabled for ``min(level, failure_level)``: one ``isEnabledFor`` call
    per message and no coroutine, no formatting. Unexpected handler errors are logged with their
    traceback by the mediator whatever this behavior does.

    Args:
        logger: the logger (default ``catga.pipeline``).
        level: level of the record for a success (default DEBUG).
        failure_level: level of the record for a failed result (default INFO).
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        level: int = logging.DEBUG,
        failure_level: int = logging.INFO,
    ) -> None:
        self.logger = logger if logger is not None else logging.getLogger("catga.pipeline")
        self.level = level
        self.failure_level = failure_level

    def wrap(self, info: HandlerInfo, call_next: Next) -> Next:
        """Compose the logging layer for one message type."""
        logger = self.logger
        enabled = logger.isEnabledFor
        level, failure_level = self.level, self.failure_level
        threshold = min(level, failure_level)
        type_name = info.name
        clock = time.perf_counter

        async def logged(message: Any, ctx: Context) -> Result[Any]:
            start = clock()
            result = await call_next(message, ctx)
            lvl = level if result.ok else failure_level
            if enabled(lvl):
                elapsed = (clock() - start) * 1000.0
                logger.log(
                    lvl,
                    "handled %s %s %s in %.3f ms%s",
                    type_name,
                    ctx.message_id,
                    "ok" if result.ok else "failed",
                    elapsed,
                    "" if result.ok else f": [{result.code}] {result.error}",
                    extra={
                        "catga_message_type": type_name,
                        "catga_message_id": ctx.message_id,
                        "catga_correlation_id": ctx.correlation_id,
                        "catga_ok": result.ok,
                        "catga_code": result.code,
                        "catga_elapsed_ms": elapsed,
                    },
                )
            return result

        # Logger.isEnabledFor memoises its answers in ``Logger._cache`` (cleared by setLevel,
        # logging.disable and dictConfig). Reading that dict first skips a Python call per message;
        # an unknown or True entry falls back to isEnabledFor, which also checks ``disabled``.
        memo: dict[int, bool] | None = getattr(logger, "_cache", None)  # the same dict object for life
        if memo is None:  # a logger without the memo: ask isEnabledFor every time

            def checked(message: Any, ctx: Context) -> Awaitable[Result[Any]]:
                return logged(message, ctx) if enabled(threshold) else call_next(message, ctx)

            return checked
        cached = memo.get

        def layer(message: Any, ctx: Context) -> Awaitable[Result[Any]]:
            if cached(threshold) is False or not enabled(threshold):
                return call_next(message, ctx)
            return logged(message, ctx)

        # Lets the mediator skip this layer while ``cached(threshold) is False`` (a C call, no frame):
        # run the handler's terminal, or an event's fan-out, inline.
        return set_bypass(layer, Bypass(cached, threshold, call_next))
