"""The catga exception hierarchy.

Every error catga raises derives from :class:`CatgaError`. Messages say what happened, name the ids
involved and say what to do; the same facts are available as attributes.

::

    CatgaError
    ├── ConfigurationError (ValueError)
    │   ├── InvalidIdentifierError        a stream id / key / name is malformed
    │   └── UnsupportedServerError        a server older than the backend needs
    ├── HandlerNotFoundError (LookupError)
    ├── DuplicateHandlerError (ConfigurationError)
    ├── SerializationError (ValueError)
    │   └── UnknownMessageTypeError       a type name that was never registered
    ├── HandlerError                      business errors raised from handlers
    │   ├── ValidationError               with field errors
    │   ├── NotFoundError (LookupError)
    │   ├── ConflictError
    │   │   └── ConcurrencyError          expected vs actual stream version
    │   ├── UnauthorizedError
    │   ├── ForbiddenError
    │   └── RetryableError                transient; the retry behavior retries these
    │       └── OperationTimeoutError (TimeoutError)
    ├── WorkflowError                     a durable workflow could not go on
    │   ├── WorkflowStepError             a step raised (or its command failed); compensations run
    │   ├── WorkflowCancelledError        raised inside a workflow cancelled by cancel_workflow()
    │   └── NonDeterminismError           replay met other steps than the history recorded
    ├── LockError
    │   ├── LockNotAcquiredError (TimeoutError)
    │   └── LockNotOwnedError
    │       └── StaleFencingTokenError    a write carries an older owner's fencing token
    └── BackendError                      a storage or transport backend failed
        ├── BackendUnavailableError (ConnectionError)
        ├── BackendTimeoutError (TimeoutError)
        └── PayloadTooLargeError (ValueError)  a message over the payload limit, refused unsent

``asyncio.CancelledError`` is never translated.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = (
    "BackendError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "CatgaError",
    "ConcurrencyError",
    "ConfigurationError",
    "ConflictError",
    "DuplicateHandlerError",
    "ErrorCode",
    "ForbiddenError",
    "HandlerError",
    "HandlerNotFoundError",
    "InvalidIdentifierError",
    "LockError",
    "LockNotAcquiredError",
    "LockNotOwnedError",
    "NonDeterminismError",
    "NotFoundError",
    "OperationTimeoutError",
    "PayloadTooLargeError",
    "RetryableError",
    "SerializationError",
    "StaleFencingTokenError",
    "UnauthorizedError",
    "UnknownMessageTypeError",
    "UnsupportedServerError",
    "ValidationError",
    "WorkflowCancelledError",
    "WorkflowError",
    "WorkflowStepError",
)


class ErrorCode:
    """Stable error codes carried by failed :class:`~catga.result.Result` values.

    The table of codes, what raises them and whether a retry can help is in ``docs/errors.md``.
    """

    VALIDATION = "validation"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    CONCURRENCY = "concurrency"
    TIMEOUT = "timeout"
    HANDLER_NOT_FOUND = "handler_not_found"
    CONFIGURATION = "configuration"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    RETRYABLE = "retryable"
    BUSINESS = "business"
    INTERNAL = "internal"
    SERIALIZATION = "serialization"
    BACKEND = "backend"
    UNAVAILABLE = "unavailable"
    TOO_LARGE = "too_large"


class CatgaError(Exception):
    """Root of every error raised by catga."""

    code: str = ErrorCode.INTERNAL
    retryable: bool = False


class ConfigurationError(CatgaError, ValueError):
    """Raised when catga is configured wrongly: a bad URL, layout, option or registration."""

    code = ErrorCode.CONFIGURATION


class InvalidIdentifierError(ConfigurationError):
    """Raised when a stream id, key or name is empty, too long or has forbidden characters.

    Attributes:
        identifier: the rejected value.
        kind: what it was meant to be (``"stream id"``, ``"lock key"``...).
    """

    def __init__(self, kind: str, identifier: object, reason: str) -> None:
        self.kind = kind
        self.identifier = identifier
        super().__init__(f"invalid {kind} {identifier!r}: {reason}")


class UnsupportedServerError(ConfigurationError):
    """Raised when a backend connects to a server older than it needs (checked once per connection,
    when it opens, and by ``catga doctor``).

    Attributes:
        backend: ``"nats"``, ``"redis"``...
        address: the server's address (never a password).
        found: the version the server reported.
        needed: the oldest version that works, e.g. ``"2.11.0"``.
        feature: what needs it.
    """

    def __init__(self, backend: str, address: str, found: str, needed: str, feature: str) -> None:
        self.backend = backend
        self.address = address
        self.found = found
        self.needed = needed
        self.feature = feature
        server = {"nats": "nats-server", "redis": "Redis", "postgres": "PostgreSQL"}.get(backend, backend)
        super().__init__(
            f"{server} {found} at {address} is too old: {feature} needs {server} {needed} or newer; "
            "upgrade the server"
        )


class DuplicateHandlerError(ConfigurationError):
    """Raised at registration when a command or query type gets a second handler."""

    def __init__(self, message_type: type, existing: object, new: object) -> None:
        self.message_type = message_type
        super().__init__(
            f"{message_type.__qualname__} already has a handler ({existing!r}); "
            f"refusing to register {new!r}: commands and queries have exactly one handler"
        )


class HandlerNotFoundError(CatgaError, LookupError):
    """Raised (or returned as a failed Result) when no handler is registered for a message type."""

    code = ErrorCode.HANDLER_NOT_FOUND

    def __init__(self, message_type: type) -> None:
        self.message_type = message_type
        super().__init__(
            f"no handler registered for {message_type.__qualname__}; "
            "register one with @app.handler or mediator.register(...)"
        )


class SerializationError(CatgaError, ValueError):
    """Raised when bytes cannot be decoded into a registered message type, or a value cannot be encoded."""

    code = ErrorCode.SERIALIZATION


class UnknownMessageTypeError(SerializationError):
    """Raised when a type name on the wire was never registered; catga decodes only registered types."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        super().__init__(
            f"unknown message type {type_name!r}: no message class known to this process has that wire "
            "name (catga decodes only the types it knows). Declare the class where the message arrives: "
            "app.consume(TheClass) or an @app.handler for it (to read it from an event store: "
            "catga.serialization.default_registry().register(TheClass)); if sender and receiver name "
            f"the class differently, decorate both with @message_name({type_name!r})"
        )


class HandlerError(CatgaError):
    """Base for business errors a handler raises on purpose; they become failed Results."""

    code = ErrorCode.BUSINESS


class ValidationError(HandlerError, ValueError):
    """Raised when a message fails validation.

    Attributes:
        field_errors: mapping of field name to a list of problems.
    """

    code = ErrorCode.VALIDATION

    def __init__(
        self, message: str = "validation failed", field_errors: dict[str, list[str]] | None = None
    ) -> None:
        self.field_errors: dict[str, list[str]] = dict(field_errors or {})
        if self.field_errors:
            detail = "; ".join(f"{k}: {', '.join(v)}" for k, v in self.field_errors.items())
            message = f"{message} ({detail})"
        super().__init__(message)


class NotFoundError(HandlerError, LookupError):
    """Raised when the thing a message refers to does not exist."""

    code = ErrorCode.NOT_FOUND


class ConflictError(HandlerError):
    """Raised when a change conflicts with the current state."""

    code = ErrorCode.CONFLICT


class ConcurrencyError(ConflictError):
    """Raised when an append's expected version does not match the stream's actual version.

    Attributes:
        stream_id: the stream appended to.
        expected_version: what the caller expected, always an int: ``-1`` for ``NO_STREAM``, ``-2`` for
            ``ANY`` (a backend may pass the mode names ``"NO_STREAM"`` / ``"ANY"``; they are normalised).
        actual_version: the stream's version when the append was rejected (-1 for no stream), or None
            when the backend could not tell.
    """

    code = ErrorCode.CONCURRENCY

    _MODES: ClassVar[dict[str, int]] = {"NO_STREAM": -1, "ANY": -2}
    _NAMES: ClassVar[dict[int, str]] = {-1: "-1 (NO_STREAM)", -2: "ANY"}

    def __init__(self, stream_id: str, expected_version: int | str, actual_version: int | None) -> None:
        expected = (
            self._MODES[expected_version] if isinstance(expected_version, str) else int(expected_version)
        )
        self.stream_id = stream_id
        self.expected_version: int = expected
        self.actual_version = actual_version
        actual = "unknown" if actual_version is None else str(actual_version)
        shown = self._NAMES.get(expected, str(expected))
        super().__init__(
            f"concurrency conflict on stream {stream_id!r}: expected version {shown}, "
            f"actual version {actual}; reload the stream and retry"
        )


class UnauthorizedError(HandlerError):
    """Raised when the caller is not authenticated."""

    code = ErrorCode.UNAUTHORIZED


class ForbiddenError(HandlerError):
    """Raised when the caller is authenticated but not allowed to do this."""

    code = ErrorCode.FORBIDDEN


class RetryableError(HandlerError):
    """A transient failure: the retry behavior retries these (and only these)."""

    code = ErrorCode.RETRYABLE
    retryable = True


class OperationTimeoutError(RetryableError, TimeoutError):
    """Raised when an operation did not finish within its time limit.

    Attributes:
        operation: what timed out.
        seconds: the limit.
    """

    code = ErrorCode.TIMEOUT

    def __init__(self, operation: str, seconds: float | None) -> None:
        self.operation = operation
        self.seconds = seconds
        super().__init__(f"{operation} timed out after {seconds} s")


class LockError(CatgaError):
    """Base for distributed lock errors."""


class LockNotAcquiredError(LockError, TimeoutError):
    """Raised when a lock could not be acquired within the wait timeout."""

    def __init__(self, key: str, wait: float | None) -> None:
        self.key = key
        self.wait = wait
        super().__init__(f"lock {key!r} not acquired within {wait} s; another holder has it")


class LockNotOwnedError(LockError):
    """Raised when releasing or extending a lock that this holder no longer owns (expired or taken)."""

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"lock {key!r} is not held by this holder (it expired or was taken over); "
            "use a longer ttl or auto-renewal"
        )


class StaleFencingTokenError(LockNotOwnedError):
    """Raised when a write carries a fencing token lower than one the resource has already seen.

    A newer owner took the resource over (its lease has a higher fencing token), so this holder's write
    is refused and nothing is stored. Stop working on the resource; the new owner continues.

    Attributes:
        key: the resource (a projection's checkpoint name...).
        fencing_token: the token the refused write carried.
        current_token: the highest token the resource has seen.
    """

    def __init__(self, key: str, fencing_token: int, current_token: int) -> None:
        self.key = key
        self.fencing_token = fencing_token
        self.current_token = current_token
        LockError.__init__(
            self,
            f"write to {key!r} refused: fencing token {fencing_token} is older than {current_token} "
            "(another owner took it over); stop working on it, the new owner continues",
        )


class WorkflowError(CatgaError):
    """Base of the errors of durable workflows (:mod:`catga.workflows`).

    Attributes:
        workflow_id: the workflow instance.
    """

    def __init__(self, message: str, *, workflow_id: str) -> None:
        self.workflow_id = workflow_id
        super().__init__(message)


class WorkflowStepError(WorkflowError):
    """Raised by ``await wf.step(...)`` / ``wf.send(...)`` when the step raised (after its retries) or
    the command's Result failed. The failure is recorded, so a replay raises it again at the same
    place; left uncaught, the workflow's compensations run.

    Attributes:
        workflow_id: the workflow instance.
        seq: the step's sequence number.
        step: the step's name.
        error_type: the class name of what the step raised (or the Result's error code).
        reason: the error's text.
    """

    def __init__(self, workflow_id: str, seq: int, step: str, error_type: str, reason: str) -> None:
        self.seq = seq
        self.step = step
        self.error_type = error_type
        self.reason = reason
        super().__init__(
            f"workflow {workflow_id!r}: step {seq} ({step}) failed: {error_type}: {reason}",
            workflow_id=workflow_id,
        )


class WorkflowCancelledError(WorkflowError):
    """Raised inside a workflow at its next step after ``cancel_workflow()``; left uncaught, the
    compensations of its completed steps run and it ends ``cancelled``."""

    def __init__(self, workflow_id: str) -> None:
        super().__init__(f"workflow {workflow_id!r} was cancelled", workflow_id=workflow_id)


class NonDeterminismError(WorkflowError):
    """Raised when replaying a workflow asks for another step than its history recorded at that
    sequence number: the code changed under a running workflow. The workflow ends ``failed`` with this
    message (nothing is mis-replayed); keep the old code registered under its version and give the new
    code a new ``version=`` so running workflows finish on the code that started them.

    Attributes:
        workflow_id: the workflow instance.
        seq: the sequence number where they differ.
        recorded: ``kind name`` the history has there ("" for nothing).
        requested: ``kind name`` the code asks for there ("" for nothing: the code ended sooner).
    """

    def __init__(self, workflow_id: str, seq: int, recorded: str, requested: str) -> None:
        self.seq = seq
        self.recorded = recorded
        self.requested = requested
        super().__init__(
            f"workflow {workflow_id!r} is not deterministic at step {seq}: the history recorded "
            f"{recorded or 'nothing'}, the code asks for {requested or 'nothing'}; the code changed "
            "under a running workflow: register the changed code with a new version= and keep the old "
            "version until its workflows finish",
            workflow_id=workflow_id,
        )


class BackendError(CatgaError):
    """Raised when a storage or transport backend fails; the client's error is the ``__cause__``."""

    code = ErrorCode.BACKEND

    def __init__(self, message: str, *, backend: str = "", **details: Any) -> None:
        self.backend = backend
        self.details = details
        super().__init__(message)


class BackendUnavailableError(BackendError, ConnectionError):
    """Raised when the backend server cannot be reached, or the connection was lost (code ``unavailable``)."""

    code = ErrorCode.UNAVAILABLE
    retryable = True


class BackendTimeoutError(BackendError, TimeoutError):
    """Raised when a backend call exceeds its timeout (code ``timeout``); the message names the operation
    and seconds."""

    code = ErrorCode.TIMEOUT
    retryable = True


class PayloadTooLargeError(BackendError, ValueError):
    """Raised, before anything is sent, when a message is larger than the payload limit (code ``too_large``).

    Every backend checks the same limit (``max_payload``, 1 MiB by default, see ``docs/errors.md``); on
    NATS the server's own ``max_payload`` applies too (headers included). Retrying does not help: send
    less data per message (store large data elsewhere and send a reference), or raise the limit.

    Attributes:
        size: the message's size in bytes.
        limit: the limit it exceeds, in bytes.
        destination: where it was going (a destination, subject, stream or key), or "".
    """

    code = ErrorCode.TOO_LARGE

    def __init__(
        self,
        size: int,
        limit: int,
        *,
        destination: str = "",
        backend: str = "",
        what: str = "message",
        limit_name: str = "the payload limit (max_payload)",
    ) -> None:
        self.size = size
        self.limit = limit
        self.destination = destination
        to = f" to {destination!r}" if destination else ""
        super().__init__(
            f"a {what} of {size} bytes{to} exceeds {limit_name} of {limit} bytes; nothing was sent: "
            "send less data per message (or a reference to it), or raise the limit",
            backend=backend,
            size=size,
            limit=limit,
        )
