"""Translation of nats-py and JetStream errors into catga errors, in one place.

Every call into nats-py that can fail runs inside :func:`translate_errors`, which re-raises the client's
exception as a catga error with the original as ``__cause__``:

* timeouts (``nats.errors.TimeoutError``, builtin ``TimeoutError``) ->
  :class:`~catga.errors.BackendTimeoutError` naming the operation and the seconds;
* no connection, no servers, no responders, a closed or draining client, socket errors ->
  :class:`~catga.errors.BackendUnavailableError`;
* an authorization failure -> :class:`~catga.errors.ConfigurationError`;
* any other JetStream API error or client error -> :class:`~catga.errors.BackendError` with the
  server's ``code``/``err_code``/``description`` in ``details``.

``asyncio.CancelledError`` and catga's own errors pass through untouched. The lean connection
(:mod:`catga.nats._wire`) raises catga errors itself; JetStream API errors it reads from JSON replies
are translated by :func:`api_error`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import nats.errors
import nats.js.errors

from catga.errors import (
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    CatgaError,
    ConfigurationError,
)

__all__ = (
    "ERR_NO_MESSAGE",
    "ERR_NO_SUITABLE_PEERS",
    "ERR_REPLICAS_NOT_SUPPORTED",
    "ERR_STREAM_NAME_IN_USE",
    "ERR_STREAM_NOT_FOUND",
    "ERR_STREAM_STORE_FAILED",
    "ERR_SUBJECTS_OVERLAP",
    "ERR_WRONG_LAST_SEQUENCE",
    "api_error",
    "replicas_error",
    "timeout_error",
    "translate_errors",
    "unavailable_error",
)

BACKEND = "nats"

#: JetStream ``err_code`` values catga reacts to.
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_WRONG_LAST_SEQUENCE_CONSTANT = 10164
ERR_NO_MESSAGE = 10037
ERR_MSG_DELETE_NOT_FOUND = 10057
ERR_STREAM_NOT_FOUND = 10059
ERR_STREAM_NAME_IN_USE = 10058
ERR_SUBJECTS_OVERLAP = 10065
ERR_STREAM_STORE_FAILED = 10049
ERR_NO_SUITABLE_PEERS = 10005  # more replicas than the cluster has JetStream servers (with room)
ERR_REPLICAS_NOT_SUPPORTED = 10074  # replicas > 1 on a server without clustering

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.NoServersError,
    nats.errors.NoRespondersError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.SecureConnFailedError,
    nats.js.errors.ServiceUnavailableError,
    nats.js.errors.NoStreamResponseError,
    OSError,
)


def timeout_error(operation: str, seconds: float | None) -> BackendTimeoutError:
    """A :class:`BackendTimeoutError` for ``operation`` that took longer than ``seconds``."""
    return BackendTimeoutError(
        f"NATS {operation} timed out after {seconds} s; the server is slow or unreachable "
        "(raise the timeout, or check the server and network)",
        backend=BACKEND,
        operation=operation,
        seconds=seconds,
    )


def unavailable_error(operation: str, reason: str) -> BackendUnavailableError:
    """A :class:`BackendUnavailableError` for ``operation`` with a human ``reason``."""
    return BackendUnavailableError(
        f"NATS {operation} failed: {reason}; check that nats-server (with JetStream) is running "
        "and reachable, then retry",
        backend=BACKEND,
        operation=operation,
    )


def api_error(operation: str, error: Mapping[str, Any]) -> BackendError:
    """Translate a JetStream API ``{"code", "err_code", "description"}`` error object."""
    code = error.get("code")
    err_code = error.get("err_code")
    description = error.get("description", "")
    if code == 503:
        return unavailable_error(operation, f"JetStream is unavailable ({description})")
    return BackendError(
        f"JetStream {operation} failed: {description} (code {code}, err_code {err_code})",
        backend=BACKEND,
        operation=operation,
        code=code,
        err_code=err_code,
        description=description,
    )


@contextlib.contextmanager
def translate_errors(operation: str, timeout: float | None = None) -> Iterator[None]:
    """Re-raise nats-py errors raised inside the block as catga errors.

    Args:
        operation: what the block does, for the message (``"append to stream 'orders-1'"``).
        timeout: the time limit of the block, named in timeout errors.

    Raises:
        BackendTimeoutError: the client timed out.
        BackendUnavailableError: no connection, no servers or no JetStream responders.
        ConfigurationError: the server refused the credentials.
        BackendError: any other client or JetStream API error.
    """
    try:
        yield
    except CatgaError:
        raise
    except TimeoutError as exc:  # nats.errors.TimeoutError subclasses asyncio.TimeoutError
        raise timeout_error(operation, timeout) from exc
    except nats.errors.AuthorizationError as exc:
        raise ConfigurationError(
            f"NATS {operation} failed: the server refused the credentials ({exc}); "
            "check user/password, token, nkeys or creds file"
        ) from exc
    except _UNAVAILABLE as exc:
        raise unavailable_error(operation, f"{type(exc).__name__}: {exc}") from exc
    except nats.js.errors.APIError as exc:
        raise api_error(
            operation,
            {"code": exc.code, "err_code": exc.err_code, "description": exc.description or str(exc)},
        ) from exc
    except nats.errors.Error as exc:
        text = str(exc).lower()
        if "authorization violation" in text or "authentication" in text:
            raise ConfigurationError(
                f"NATS {operation} failed: the server refused the credentials ({exc}); "
                "check user/password, token, nkeys or creds file"
            ) from exc
        raise BackendError(
            f"NATS {operation} failed: {type(exc).__name__}: {exc}", backend=BACKEND, operation=operation
        ) from exc


def replicas_error(name: str, replicas: int, exc: nats.js.errors.APIError) -> ConfigurationError:
    """The error for a stream whose replicas cannot be placed (not clustered, or too few servers)."""
    if exc.err_code == ERR_REPLICAS_NOT_SUPPORTED:
        hint = "this server runs JetStream without clustering (one copy): use replicas=1, or a cluster"
    else:
        hint = (
            f"the cluster has fewer than {replicas} JetStream servers with room for it: "
            "lower replicas or add servers"
        )
    return ConfigurationError(
        f"cannot create NATS stream {name!r} with {replicas} replicas: {exc.description} "
        f"(err_code {exc.err_code}); {hint}"
    )
