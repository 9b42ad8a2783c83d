"""What every NATS store shares: its connection, ownership, ``connect()``, ``start()`` and ``aclose()``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from nats.aio.client import Client

from catga._lifecycle import AsyncCloseable
from catga._versions import Version
from catga.errors import ConfigurationError
from catga.nats.connection import DEFAULT_URL, MIN_SERVER, NatsConnection, as_connection

__all__ = ("NatsStoreBase", "check_name")

_NAME = re.compile(r"[A-Za-z0-9_\-]{1,100}\Z")
_PREFIX = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*\Z")


def check_name(value: str, kind: str, *, dotted: bool = False) -> str:
    """Check a stream/bucket name (``[A-Za-z0-9_-]``) or, with ``dotted``, a subject prefix.

    Raises:
        ConfigurationError: the name has other characters (``.``, wildcards, spaces...).
    """
    pattern = _PREFIX if dotted else _NAME
    if not isinstance(value, str) or pattern.match(value) is None:
        allowed = "tokens of A-Z a-z 0-9 _ - separated by dots" if dotted else "A-Z a-z 0-9 _ - only"
        raise ConfigurationError(f"invalid NATS {kind} {value!r}: use {allowed}")
    return value


class NatsStoreBase(AsyncCloseable):
    """Base of the NATS stores: holds the :class:`NatsConnection` and closes it when owned.

    Args:
        source: a :class:`NatsConnection` or a connected nats-py client (shared, never closed by catga).
        timeout: default seconds for this store's network calls (default: the connection's).

    Raises:
        UnsupportedServerError: the server is older than the store needs (:attr:`_needs`).
    """

    #: The oldest nats-server the store works with, and what needs it (checked when it is made).
    _needs: ClassVar[tuple[Version, str]] = (MIN_SERVER, "JetStream")

    def __init__(self, source: NatsConnection | Client, *, timeout: float | None = None) -> None:
        self._conn = as_connection(source)
        needed, why = self._needs
        self._conn.require(needed, f"{type(self).__name__} ({why})")
        self._wire = self._conn.wire
        self._timeout = self._conn.timeout if timeout is None else float(timeout)
        if self._timeout <= 0:
            raise ConfigurationError(f"timeout must be > 0 seconds, got {timeout!r}")
        self._owns_conn = False
        self._closed = False
        self._conn.attach()

    @property
    def connection(self) -> NatsConnection:
        """The connection this store uses."""
        return self._conn

    @classmethod
    async def connect(
        cls, url: str = DEFAULT_URL, *, connect_options: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Self:
        """Connect to ``url`` and build the store on a connection it owns (closed by :meth:`aclose`).

        Args:
            url: server URL(s), credentials allowed (``nats://user:pass@127.0.0.1:4222``).
            connect_options: keyword arguments for :meth:`NatsConnection.connect` (``token``, ``tls``,
                ``user_credentials``, ``nkeys_seed``, ``name``...).
            **kwargs: the store's own keyword options.

        Raises:
            BackendUnavailableError: the server could not be reached.
            ConfigurationError: bad credentials or options.
        """
        conn = await NatsConnection.connect(url, **dict(connect_options or {}))
        try:
            store = cls(conn, **kwargs)
        except BaseException:
            await conn.aclose()
            raise
        store._owns_conn = True
        return store

    async def start(self) -> None:
        """Use the store again after :meth:`aclose` (an ``App`` starting again); a no-op while open.

        Reopens the connection if this store owns it (an app's connection is opened by the app).
        """
        if not self._closed:
            return
        if self._owns_conn:
            await self._conn.open()
        self._closed = False
        self._conn.attach()

    async def _close(self) -> None:
        """Subclass hook: stop the store's own tasks before the connection is released."""

    async def aclose(self) -> None:
        """Release the connection (closing it if this store opened it). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._close()
        finally:
            if self._owns_conn:
                await self._conn.aclose()
            else:
                await self._conn.detach()
