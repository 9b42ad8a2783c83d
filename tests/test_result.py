"""Result[T]: construction, equality, immutability, unwrap and typing."""

from __future__ import annotations

import pickle

import pytest

from catga.errors import ErrorCode, NotFoundError, RetryableError, ValidationError
from catga.result import Result, ResultError


def test_success_and_failure() -> None:
    ok = Result.success(3)
    assert ok.ok and bool(ok) and ok.value == 3 and ok.error is None and ok.code is None
    assert ok.unwrap() == 3
    assert repr(ok) == "Result.success(3)"
    bad: Result[int] = Result.failure("nope", ErrorCode.CONFLICT, metadata={"id": 1})
    assert not bad and bad.value is None and (bad.error, bad.code) == ("nope", ErrorCode.CONFLICT)
    assert bad.metadata == {"id": 1}
    assert repr(bad) == "Result.failure('nope', code='conflict')"
    with pytest.raises(ResultError) as info:
        bad.unwrap()
    assert info.value.code == ErrorCode.CONFLICT


def test_positional_and_keyword_construction_match() -> None:
    exc = RuntimeError("x")
    a: Result[int] = Result(False, None, "boom", ErrorCode.INTERNAL, exc, {"k": 1})
    b: Result[int] = Result(ok=False, error="boom", code=ErrorCode.INTERNAL, exception=exc, metadata={"k": 1})
    assert a == b and a.exception is b.exception is exc and a.metadata == b.metadata


def test_from_exception() -> None:
    nf = NotFoundError("order 7 not found")
    r: Result[str] = Result.from_exception(nf)
    assert (r.code, r.error, r.exception) == (nf.code, "order 7 not found", nf)
    with pytest.raises(NotFoundError):
        r.unwrap()
    v: Result[str] = Result.from_exception(ValidationError("bad", {"name": ["empty"]}))
    assert v.code == ErrorCode.VALIDATION and v.metadata == {"field_errors": {"name": ["empty"]}}
    hidden: Result[str] = Result.from_exception(RuntimeError("password=hunter2"), expose=False)
    assert (hidden.error, hidden.code) == ("internal error", ErrorCode.INTERNAL)
    assert isinstance(hidden.exception, RuntimeError)
    shown: Result[str] = Result.from_exception(KeyError())
    assert shown.error == "KeyError" and shown.code == ErrorCode.INTERNAL


def test_retryable() -> None:
    assert Result.from_exception(RetryableError("later")).retryable
    assert not Result.from_exception(NotFoundError("gone")).retryable
    assert not Result.failure("no exception").retryable
    assert not Result.success(1).retryable


def test_equality_ignores_exception_and_metadata_and_results_are_unhashable() -> None:
    a: Result[int] = Result.failure("x", exception=RuntimeError("a"), metadata={"a": 1})
    b: Result[int] = Result.failure("x", exception=RuntimeError("b"))
    assert a == b
    assert a != Result.failure("y")
    assert Result.success(1) != Result.success(2)
    assert Result.success(1) != 1
    with pytest.raises(TypeError):
        hash(Result.success(1))


def test_results_are_immutable_and_the_success_without_value_is_shared() -> None:
    r = Result.success(1)
    with pytest.raises(AttributeError):
        r.value = 2  # type: ignore[misc]
    assert Result.success(None) is Result.success(None)
    assert Result.success(None) == Result(True)


def test_generic_alias_and_pickle() -> None:
    alias = Result[int]
    built = alias(True, 5)
    assert isinstance(built, Result) and built.unwrap() == 5
    back = pickle.loads(pickle.dumps(Result.failure("x", ErrorCode.CONFLICT)))
    assert back == Result.failure("x", ErrorCode.CONFLICT)
