"""What the workflow replay shares: how values are recorded, step keys and message ids, the
suspension signal."""

from __future__ import annotations

import contextvars
import hashlib
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

from catga.errors import ConfigurationError
from catga.messages import Request
from catga.workflows.store import HistoryEntry

__all__ = (
    "NEVER",
    "CommandFailed",
    "RunAborted",
    "Suspend",
    "cancelled_entry",
    "current_step_key",
    "decode_value",
    "encode_value",
    "error_type",
    "result_type",
    "return_type",
    "step_key",
    "step_message_id",
)

#: The wake-up time of a workflow waiting for an event without a timeout.
NEVER = 1e15

#: The idempotency key of the step running in this task (set by the replay around each step).
step_key: contextvars.ContextVar[str | None] = contextvars.ContextVar("catga_wf_step", default=None)


def current_step_key() -> str:
    """The idempotency key of the workflow step running in this task: ``"<workflow id>:<seq>"``.

    The same on every execution of that step (a step cut short by a crash runs again with the same
    key), so an external effect keyed by it is applied once.

    Raises:
        ConfigurationError: called outside a workflow step.
    """
    key = step_key.get()
    if key is None:
        raise ConfigurationError("current_step_key() is only known inside a workflow step (wf.step)")
    return key


def step_message_id(workflow_id: str, seq: int) -> int:
    """The message id of the command ``wf.send`` sends at step ``seq``: a 63-bit digest of both, the
    same on every execution, so the idempotency behavior runs the handler once."""
    digest = hashlib.blake2b(f"{workflow_id}#{seq}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1 or 1


def encode_value(value: object) -> bytes:
    """JSON of a step's value (msgspec: dataclasses, Structs, dicts, lists, scalars...).

    Raises:
        ConfigurationError: the value cannot be encoded (a step must return data).
    """
    try:
        return msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise ConfigurationError(
            f"a workflow step returned {type(value).__name__}, which cannot be recorded as JSON: "
            "return data (dataclasses, msgspec Structs, dicts, lists, str, numbers): {exc}"
        ) from exc


def decode_value(data: bytes, typ: Any = Any) -> Any:
    """Decode a recorded value into ``typ`` (plain JSON types for ``Any``)."""
    return msgspec.json.decode(data, type=typ)


def return_type(fn: Callable[..., Any]) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations, builtins, partials: plain JSON
        return Any
    return hints.get("return", Any)


def result_type(request_type: type) -> Any:
    for base in getattr(request_type, "__orig_bases__", ()):
        origin = typing.get_origin(base)
        if isinstance(origin, type) and issubclass(origin, Request):
            args = typing.get_args(base)
            if args and not isinstance(args[0], TypeVar):
                return Any if args[0] is None else args[0]
    return Any


class RunAborted(BaseException):
    """Raised through the workflow function when the store failed (or the lease was lost) while
    recording: the run stops without touching the workflow's state; the sweep runs it again.

    A BaseException, so that a workflow's ``except Exception`` does not take it for a step's failure.
    """

    def __init__(self, cause: Exception) -> None:
        self.cause = cause
        super().__init__(f"{type(cause).__name__}: {cause}")


class Suspend(Exception):
    """Raised through the workflow function when it sleeps: the run ends until ``wake_at`` (or
    until an event of type ``wait_for`` matching ``wait_spec`` comes). ``outcome``: the sequence
    number of the awaited event (-1: none), which the engine checks once more after storing the
    sleep."""

    def __init__(self, wake_at: float, wait_for: str = "", wait_spec: bytes = b"", outcome: int = -1) -> None:
        self.wake_at = wake_at
        self.wait_for = wait_for
        self.wait_spec = wait_spec
        self.outcome = outcome
        super().__init__(f"sleeping until {wake_at}")


def cancelled_entry(seq: int, kind: str, name: str) -> HistoryEntry:
    return HistoryEntry(
        seq=seq, kind=kind, name=name, ok=False, value=b"cancelled", error_type="WorkflowCancelledError"
    )


def error_type(exc: Exception) -> str:
    return exc.code if isinstance(exc, CommandFailed) else type(exc).__name__


class CommandFailed(Exception):
    def __init__(self, code: str, error: str) -> None:
        super().__init__(f"{error} (code {code})")
        self.code = code
