"""Translation of Redis client errors into catga's hierarchy — the one place it happens.

* Cannot reach / lost the server (``OSError``, ``ssl.SSLError``, ``EOFError``) →
  :class:`~catga.errors.BackendUnavailableError`.
* No answer in time (``TimeoutError``) → :class:`~catga.errors.BackendTimeoutError`, naming the
  operation and the seconds.
* Authentication or permission refused (``WRONGPASS``, ``NOAUTH``, ``NOPERM`` replies) →
  :class:`~catga.errors.ConfigurationError`: retrying will not help.
* Any other error reply (:class:`~catga.redis._resp.ReplyError`) → :class:`~catga.errors.BackendError`.

Every catga Redis connection, pub/sub included, is catga's own RESP client
(:mod:`catga.redis._resp`), so only the builtins and ``ReplyError`` reach this module; redis-py is not
a dependency of ``catga[redis]`` (its errors, which do not subclass the builtins, are not matched).
``asyncio.CancelledError`` is a ``BaseException`` and is never caught here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from catga.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    CatgaError,
    ConfigurationError,
)
from catga.redis._resp import ReplyError

__all__ = ("redis_errors", "reply_error", "translate_error")

_AUTH_PREFIXES = ("WRONGPASS", "NOAUTH", "NOPERM", "ERR AUTH", "ERR invalid password")


def reply_error(command: str, reply: ReplyError) -> CatgaError:
    """The catga error for an error reply to ``command``."""
    text = str(reply)
    if text.startswith(_AUTH_PREFIXES):
        return ConfigurationError(
            f"Redis refused {command}: {text}; check the user name and password in the Redis URL "
            "and the user's ACL permissions"
        )
    return BackendError(f"Redis {command} failed: {text}", backend="redis", command=command, reply=text)


def translate_error(exc: BaseException, operation: str, seconds: float | None = None) -> BaseException:
    """Map a client exception to catga's hierarchy; return anything already translated (or not an
    error of the client, such as ``CancelledError``) unchanged.

    Args:
        exc: what the client raised.
        operation: what was being done, for the message (``"connect to 127.0.0.1:6379"``).
        seconds: the timeout in force, for timeout messages.
    """
    if isinstance(exc, CatgaError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, TimeoutError):
        return BackendTimeoutError(
            f"Redis {operation} timed out after {seconds} s; the server is slow or unreachable "
            "(retry, or raise the timeout)",
            backend="redis",
            operation=operation,
            seconds=seconds,
        )
    if isinstance(exc, OSError | EOFError):
        return BackendUnavailableError(
            f"Redis {operation} failed: cannot reach the server ({type(exc).__name__}: {exc}); "
            "check the URL and that redis-server is running",
            backend="redis",
            operation=operation,
        )
    if isinstance(exc, ReplyError):
        return reply_error(operation, exc)
    return exc


@contextmanager
def redis_errors(operation: str, seconds: float | None = None) -> Iterator[None]:
    """Translate client errors raised inside the block (``raise ... from exc``).

    Example:
        >>> with redis_errors("connect to 127.0.0.1:6379", 5.0):  # doctest: +SKIP
        ...     await asyncio.open_connection("127.0.0.1", 6379)
    """
    try:
        yield
    except Exception as exc:
        translated = translate_error(exc, operation, seconds)
        if translated is exc:
            raise
        raise translated from exc
