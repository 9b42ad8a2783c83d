"""Translation of asyncpg errors into catga's hierarchy — the one place it happens.

* Cannot reach / lost the server (``OSError``, connection errors of SQLSTATE class 08, a server
  shutting down or starting up, too many connections, a closed pool or connection) →
  :class:`~catga.errors.BackendUnavailableError`.
* No answer in time (``TimeoutError`` from asyncpg's ``timeout=`` or a pool acquire,
  ``statement_timeout`` / ``lock_timeout`` on the server) → :class:`~catga.errors.BackendTimeoutError`,
  naming the operation and the seconds.
* Refused credentials, a missing database, missing privileges, or a missing table →
  :class:`~catga.errors.ConfigurationError`: retrying will not help.
* Any other server error → :class:`~catga.errors.BackendError` (with ``.sqlstate``).

``asyncio.CancelledError`` is a ``BaseException`` and is never caught here.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

import asyncpg
import asyncpg.exceptions as pgexc

from catga.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    CatgaError,
    ConfigurationError,
)

__all__ = ("PgErrors", "translate_error")

_UNAVAILABLE = (
    OSError,
    EOFError,
    pgexc.PostgresConnectionError,  # class 08, e.g. ConnectionDoesNotExistError
    pgexc.CannotConnectNowError,  # 57P03: starting up / shutting down
    pgexc.AdminShutdownError,  # 57P01
    pgexc.CrashShutdownError,  # 57P02
    pgexc.TooManyConnectionsError,  # 53300
)
_REFUSED = (
    pgexc.InvalidAuthorizationSpecificationError,  # 28000 / 28P01: wrong user or password
    pgexc.InvalidCatalogNameError,  # 3D000: no such database
    pgexc.InsufficientPrivilegeError,  # 42501
)
_CLOSED = ("is closed", "is closing")  # asyncpg's words for a closed pool or connection
_TIMEOUT = (TimeoutError, pgexc.QueryCanceledError, pgexc.LockNotAvailableError)  # + statement/lock timeout


def translate_error(exc: BaseException, operation: str, seconds: float | None = None) -> BaseException:
    """Map an asyncpg (or socket) exception to catga's hierarchy; return anything already translated
    (or not an exception of the client, such as ``CancelledError``) unchanged.

    Args:
        exc: what was raised.
        operation: what was being done, for the message (``"claim on catga_inbox"``).
        seconds: the timeout in force, for timeout messages.
    """
    if isinstance(exc, CatgaError) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, _TIMEOUT):
        return BackendTimeoutError(
            f"PostgreSQL {operation} timed out after {seconds} s ({type(exc).__name__}: {exc}); the "
            "server is slow or unreachable, or every pool connection is busy (retry, raise the "
            "timeout, or enlarge the pool)",
            backend="postgres",
            operation=operation,
            seconds=seconds,
        )
    if isinstance(exc, _UNAVAILABLE):
        return BackendUnavailableError(
            f"PostgreSQL {operation} failed: cannot use the server ({type(exc).__name__}: {exc}); "
            "check the URL and that the server is running and accepts connections",
            backend="postgres",
            operation=operation,
        )
    if isinstance(exc, pgexc.UndefinedTableError):
        return ConfigurationError(
            f"PostgreSQL {operation} failed: {exc}; the table is missing (dropped, or created in a "
            "transaction that rolled back): call the store's ensure_schema(), or create the table "
            "in a migration (docs/postgres.md)"
        )
    if isinstance(exc, _REFUSED):
        return ConfigurationError(
            f"PostgreSQL refused {operation}: {exc}; check the user, password and database in the "
            "URL and the role's privileges on the table"
        )
    if isinstance(exc, asyncpg.InterfaceError) and any(w in str(exc) for w in _CLOSED):
        return BackendUnavailableError(
            f"PostgreSQL {operation} failed: {exc}", backend="postgres", operation=operation
        )
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError):
        sqlstate = getattr(exc, "sqlstate", None)
        return BackendError(
            f"PostgreSQL {operation} failed: {type(exc).__name__}: {exc}",
            backend="postgres",
            operation=operation,
            sqlstate=sqlstate,
        )
    return exc


class PgErrors:
    """A reusable context manager that translates what its block raises (``raise ... from exc``).

    Stateless apart from its labels, so a store builds one per operation once and reuses it (no
    allocation per call).

    Example:
        >>> with PgErrors("claim on catga_inbox", 10.0):  # doctest: +SKIP
        ...     await conn.fetchval(...)
    """

    __slots__ = ("operation", "owner", "seconds")

    def __init__(self, operation: str, seconds: float | None = None, owner: Any = None) -> None:
        self.operation = operation
        self.seconds = seconds
        self.owner = owner  # a store: a missing table makes it set its schema up again on next use

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, tp: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            return
        if self.owner is not None and isinstance(exc, pgexc.UndefinedTableError):
            self.owner._ready = False
        translated = translate_error(exc, self.operation, self.seconds)
        if translated is not exc:
            raise translated from exc
