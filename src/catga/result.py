"""``Result[T]``: the outcome of sending a command or query.

A result is either a success carrying a value, or a failure carrying a message, an error code
(:class:`~catga.errors.ErrorCode`), optionally the exception and extra metadata. ``unwrap()`` returns the
value or raises.

A Result is a small, immutable msgspec Struct: it is built in C (no Python ``__init__`` frame), which
matters because every send and publish returns one, and being immutable, the success without a value
is one shared instance (what a handler returning None and a successful publish give). It is not meant
to be encoded as a whole (the exception is not serializable); :mod:`catga.pipeline._codec` stores the
other fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar

import msgspec

from catga.errors import CatgaError, ErrorCode

__all__ = ("Result", "ResultError")

T = TypeVar("T")


class ResultError(CatgaError):
    """Raised by :meth:`Result.unwrap` on a failed result that carries no exception.

    Attributes:
        code: the failed result's error code.
    """

    def __init__(self, message: str, code: str) -> None:
        self.code = code
        super().__init__(message)


class Result(msgspec.Struct, Generic[T], frozen=True):
    """Success with a value, or failure with an error.

    Build with :meth:`success` / :meth:`failure` / :meth:`from_exception` (or positionally:
    ``Result(ok, value, error, code, exception, metadata)``, every field after ``ok`` optional).

    Attributes:
        ok: True on success.
        value: the handler's return value (None on failure).
        error: human-readable failure message (None on success).
        code: an :class:`~catga.errors.ErrorCode` value on failure.
        exception: the exception behind a failure, when there is one.
        metadata: extra facts (field errors, ids...).

    Two results are equal when ``ok``, ``value``, ``error`` and ``code`` are (the exception and
    metadata are not compared). Results are immutable (assigning a field raises AttributeError) and
    unhashable.
    """

    ok: bool
    value: T | None = None
    error: str | None = None
    code: str | None = None
    exception: BaseException | None = None
    metadata: Mapping[str, Any] | None = None

    @classmethod
    def success(cls, value: T) -> Result[T]:
        """A successful result holding ``value``."""
        if value is None and cls is Result:
            return _SUCCESS
        return cls(True, value)

    @classmethod
    def failure(
        cls,
        error: str,
        code: str = ErrorCode.BUSINESS,
        exception: BaseException | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> Result[T]:
        """A failed result."""
        return cls(False, None, error, code, exception, metadata)

    @classmethod
    def from_exception(cls, exc: BaseException, *, expose: bool = True) -> Result[T]:
        """A failed result describing ``exc``.

        Args:
            exc: the error.
            expose: when False (unexpected errors), the message is a generic "internal error" that
                leaks no internals; the exception is still attached for logging.
        """
        if isinstance(exc, CatgaError) and expose:
            meta: Mapping[str, Any] | None = None
            field_errors = getattr(exc, "field_errors", None)
            if field_errors:
                meta = {"field_errors": field_errors}
            return cls(False, None, str(exc), exc.code, exc, meta)
        if expose:
            return cls(False, None, str(exc) or type(exc).__name__, ErrorCode.INTERNAL, exc)
        return cls(False, None, "internal error", ErrorCode.INTERNAL, exc)

    @property
    def retryable(self) -> bool:
        """True when the failure is transient (a retryable error or timeout)."""
        exc = self.exception
        return (not self.ok) and isinstance(exc, CatgaError) and exc.retryable

    def unwrap(self) -> T:
        """Return the value, or raise the failure's exception (or :class:`ResultError`)."""
        if self.ok:
            return self.value  # type: ignore[return-value]
        if self.exception is not None:
            raise self.exception
        raise ResultError(self.error or "failed", self.code or ErrorCode.INTERNAL)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:
        if self.ok:
            return f"Result.success({self.value!r})"
        return f"Result.failure({self.error!r}, code={self.code!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Result):
            return NotImplemented
        return (self.ok, self.value, self.error, self.code) == (
            other.ok,
            other.value,
            other.error,
            other.code,
        )

    __hash__ = None  # type: ignore[assignment]


_SUCCESS: Result[Any] = Result(True)
"""The shared ``Result(True, None)`` (results are immutable): returned by the mediator for a handler
that returns None and for a successful publish, without allocating one per message."""
