"""Opening the nats-py client of a :class:`~catga.nats.NatsConnection`: fast first connect, credentials
shared by every server, outage logging, and the guard that refuses use before the connection opens.

A :class:`ConnectPlan` is made once (synchronously, when the connection object is built) and run by
every ``open()``: the first, and the next one after ``aclose()`` when an app starts again. The same
nats-py client object is connected each time, so stores built on it keep working across a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import nats.errors
from nats.aio.client import DEFAULT_MAX_RECONNECT_ATTEMPTS, DEFAULT_RECONNECT_TIME_WAIT, Client

from catga._outage import OutageLog
from catga._urls import redact_url
from catga.errors import ConfigurationError
from catga.nats._errors import translate_errors, unavailable_error

__all__ = ("ConnectPlan", "guard", "not_open", "server_version")

_log = logging.getLogger("catga.nats")

#: The nats-py client methods everything else goes through (JetStream and KV API calls included).
_GUARDED = ("publish", "subscribe", "request", "flush")


def not_open(where: str) -> ConfigurationError:
    """The error of a call through a connection to ``where`` (the servers) that is not open."""
    return ConfigurationError(
        f"the NATS connection to {where} is not open: App.start() opens it and App.aclose() closes "
        "it; use the app's transport and stores inside `async with app:` (or after `await "
        "app.start()`), or call `await connection.open()` on a connection you built"
    )


def guard(client: Client, where: str | None) -> None:
    """Make ``client``'s entry points raise :func:`not_open` (``where``: the servers), or, with None,
    restore them (the class's methods again: no cost once open)."""
    if where is None:
        for name in _GUARDED:
            client.__dict__.pop(name, None)
        return

    async def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise not_open(where)

    for name in _GUARDED:
        setattr(client, name, refuse)


def server_version(client: Client) -> str | None:
    """The version of the server ``client`` is connected to (from its ``INFO``), or None if not known."""
    if not client.is_connected:
        return None
    v = client.connected_server_version
    try:
        return f"{v.major}.{v.minor}.{v.patch}" + (f"-{v.dev}" if v.dev else "")
    except ValueError:  # not a semantic version: cannot tell
        return None


class ConnectPlan:
    """How to connect a nats-py client to ``url``; see :meth:`NatsConnection.connect
    <catga.nats.NatsConnection.connect>` for the arguments."""

    def __init__(
        self,
        url: str | Sequence[str],
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        user_credentials: str | Path | None = None,
        nkeys_seed: str | Path | None = None,
        tls: ssl.SSLContext | None = None,
        tls_hostname: str | None = None,
        tls_handshake_first: bool = False,
        name: str = "catga",
        connect_timeout: float = 5.0,
        **options: Any,
    ) -> None:
        self.servers = [u.strip() for u in url.split(",")] if isinstance(url, str) else list(url)
        self.where = ", ".join(redact_url(u) for u in self.servers)
        for server in self.servers:  # refused here, not by nats-py after its connect attempt
            if not urlsplit(server if "://" in server else f"nats://{server}").hostname:
                raise ConfigurationError(
                    f"NATS server URL {redact_url(server)!r} has no host; write the server's address, "
                    "e.g. nats://127.0.0.1:4222"
                )
        self.name = name
        self.connect_timeout = connect_timeout
        self.outage = OutageLog(_log, f"NATS connection to {self.where}", tracebacks=False)
        kwargs: dict[str, Any] = {
            "name": name,
            "connect_timeout": connect_timeout,
            "error_cb": _error_logger(self.outage),
            "tls_handshake_first": tls_handshake_first,
        }
        for key, value in (
            ("user", user),
            ("password", password),
            ("token", token),
            ("user_credentials", str(user_credentials) if user_credentials else None),
            ("nkeys_seed", str(nkeys_seed) if nkeys_seed else None),
            ("tls", tls),
            ("tls_hostname", tls_hostname),
        ):
            if value is not None:
                kwargs[key] = value
        if user is None and password is None and token is None and not (user_credentials or nkeys_seed):
            for key, value in _shared_credentials(self.servers).items():
                kwargs.setdefault(key, value)
        self.forward_connect_errors = "error_cb" in options  # the default logger would say "reconnects"
        kwargs.update(options)
        user_reconnected_cb = kwargs.get("reconnected_cb")
        outage = self.outage

        async def reconnected() -> None:
            outage.recovered()
            if user_reconnected_cb is not None:
                await user_reconnected_cb()

        kwargs["reconnected_cb"] = reconnected
        self.kwargs = kwargs

    def new_client(self) -> Client:
        """An unconnected client that already knows its name and inbox prefix (read by the lean socket)."""
        client = Client()
        client.options["name"] = self.name
        inbox = self.kwargs.get("inbox_prefix")
        if inbox is not None:
            client._inbox_prefix = bytearray(inbox.encode() if isinstance(inbox, str) else inbox)
        return client

    async def connect(self, client: Client) -> None:
        """Connect ``client``; on failure it is closed again (a later call tries anew).

        nats-py applies its reconnect policy to the first connect too (nats.py issues #352, #663): it
        retries each server up to max_reconnect_attempts (60) times, sleeping reconnect_time_wait (2 s)
        between rounds, so a refused port waited the whole connect_timeout. The first connect tries
        each server twice without sleeping and reports why; the policy applies from then on.

        Raises:
            BackendUnavailableError: no server could be reached in time.
            ConfigurationError: the server refused the credentials.
        """
        kwargs = dict(self.kwargs)
        errors: list[Exception] = []
        user_error_cb = kwargs["error_cb"]
        forward = self.forward_connect_errors

        async def record(exc: Exception) -> None:
            errors.append(exc)
            if forward:
                await user_error_cb(exc)

        kwargs["error_cb"] = record
        policy = {
            "max_reconnect_attempts": kwargs.get("max_reconnect_attempts", DEFAULT_MAX_RECONNECT_ATTEMPTS),
            "reconnect_time_wait": kwargs.get("reconnect_time_wait", DEFAULT_RECONNECT_TIME_WAIT),
        }
        kwargs.update(max_reconnect_attempts=1, reconnect_time_wait=0)
        where, seconds = self.where, self.connect_timeout
        ok = False
        try:
            with translate_errors(f"connect to {where}", seconds):
                try:
                    await asyncio.wait_for(client.connect(self.servers, **kwargs), seconds)
                except TimeoutError as exc:
                    last = f"{type(errors[-1]).__name__}: {errors[-1]}" if errors else "no answer"
                    raise unavailable_error(
                        f"connect to {where}", f"no server accepted within {seconds} s ({last})"
                    ) from exc
                except nats.errors.NoServersError as exc:
                    _raise_first_connect_error(where, errors, exc)
            client.options.update(policy)
            client._error_cb = user_error_cb
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 1.0)


#: nats-py errors that mean "the server is gone for now": logged once per outage, not per attempt.
_CONNECTION_ERRORS = (OSError, nats.errors.StaleConnectionError, nats.errors.ConnectionClosedError,
                      nats.errors.NoServersError)  # fmt: skip


def _raise_first_connect_error(where: str, errors: Sequence[Exception], exc: Exception) -> NoReturn:
    """Every server failed the first connect: raise why, not "no servers".

    A server's answer (credentials refused, TLS required...) says more than the reset that follows it,
    so the last protocol error wins over the last socket error.
    """
    causes = [e for e in errors if not isinstance(e, nats.errors.NoServersError)]
    if not causes:
        raise exc
    answers = [e for e in causes if not isinstance(e, OSError)]
    cause = answers[-1] if answers else causes[-1]
    if isinstance(cause, OSError):
        raise unavailable_error(
            f"connect to {where}", f"no server could be reached ({type(cause).__name__}: {cause})"
        ) from cause
    raise cause  # translated by the caller's translate_errors (credentials refused, TLS...)


def _error_logger(outage: OutageLog) -> Callable[[Exception], Awaitable[None]]:
    """nats-py's error callback: reconnect failures through ``outage``, anything else as it comes."""

    async def log_error(exc: Exception) -> None:
        if isinstance(exc, _CONNECTION_ERRORS):
            outage.failure(exc, "nats-py reconnects in the background")
        else:
            _log.warning("nats-py reported an error: %s: %s", type(exc).__name__, exc)

    return log_error


def _shared_credentials(servers: Sequence[str]) -> dict[str, str]:
    """The user/password or token written in the server URLs, if every URL that has some has the same.

    Parsed as nats-py parses them (no percent-decoding), so what is sent does not change.
    """
    found: set[tuple[str, str | None]] = set()
    for server in servers:
        try:
            parts = urlsplit(server if "://" in server else f"nats://{server}")
        except ValueError:
            return {}
        if parts.username is not None:
            found.add((parts.username, parts.password))
    if len(found) != 1:
        return {}
    name, secret = found.pop()
    return {"token": name} if secret is None else {"user": name, "password": secret}
