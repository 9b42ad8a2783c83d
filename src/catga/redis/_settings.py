"""Where and how a :class:`~catga.redis.RedisClient` connects: :class:`RedisSettings`, parsed from a URL."""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import parse_qs, unquote, urlsplit

from catga.errors import ConfigurationError

__all__ = ("DEFAULT_URL", "RedisSettings")

DEFAULT_URL = "redis://127.0.0.1:6379/0"

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RedisSettings:
    """Where and how to connect. Build with :meth:`from_url`.

    Attributes:
        host: server host (ignored with ``unix_path``).
        port: server port.
        db: database number, selected on connect.
        username: ACL user, or None for the default user.
        password: password, or None for no ``AUTH``.
        ssl_context: TLS context (``rediss://``), or None for plain TCP.
        unix_path: Unix socket path instead of TCP.
        client_name: ``CLIENT SETNAME`` value.
        timeout: default per-command timeout in seconds (None: none).
        connect_timeout: seconds allowed for connecting and the handshake.
        url: the URL it was built from (may contain the password; never in ``repr``).
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ssl_context: ssl.SSLContext | None = None
    unix_path: str | None = None
    client_name: str | None = None
    timeout: float | None = 5.0
    connect_timeout: float = 5.0
    url: str = field(default=DEFAULT_URL, repr=False)

    @property
    def address(self) -> str:
        """``host:port`` or the socket path, for messages (never the password)."""
        return self.unix_path or f"{self.host}:{self.port}"

    @classmethod
    def from_url(
        cls,
        url: str = DEFAULT_URL,
        *,
        timeout: float | None = 5.0,
        connect_timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> RedisSettings:
        """Parse a ``redis://``, ``rediss://`` or ``unix://`` URL.

        Args:
            url: the URL (see the module docstring).
            timeout: default per-command timeout in seconds.
            connect_timeout: connect + handshake timeout in seconds.
            ssl_context: TLS context to use instead of one built from the URL's ``ssl_*`` options
                (implies TLS even for ``redis://``).

        Raises:
            ConfigurationError: unknown scheme, bad port/db or option value.
        """
        try:
            parts = urlsplit(url)
            query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
            port = parts.port
        except ValueError as exc:
            raise ConfigurationError(f"invalid Redis URL {_redact(url)!r}: {exc}") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"invalid Redis URL {_redact(url)!r}: scheme must be redis://, rediss:// or unix://"
            )
        if scheme != "unix" and not parts.hostname:  # no silent localhost: say what is missing
            raise ConfigurationError(
                f"invalid Redis URL {_redact(url)!r}: no host; write the server's address, e.g. "
                f"{scheme}://127.0.0.1:6379/0"
            )
        db_text = query.get("db")
        if db_text is None and scheme != "unix":
            db_text = parts.path.strip("/") or "0"
        try:
            db = int(db_text or "0")
        except ValueError:
            raise ConfigurationError(
                f"invalid Redis URL {_redact(url)!r}: database must be a number, got {db_text!r}"
            ) from None
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password is not None else query.get("password")
        if scheme == "rediss" and ssl_context is None:
            ssl_context = _ssl_context_from(query, url)
        return cls(
            host=parts.hostname or "127.0.0.1",  # unix:// only: TCP URLs without a host are refused above
            port=port or 6379,
            db=db,
            username=username,
            password=password,
            ssl_context=ssl_context,
            unix_path=parts.path if scheme == "unix" else None,
            client_name=query.get("client_name"),
            timeout=timeout,
            connect_timeout=connect_timeout,
            url=url,
        )


def _ssl_context_from(query: dict[str, str], url: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=query.get("ssl_ca_certs"))
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in ("required", "optional", "none"):
        raise ConfigurationError(
            f"invalid Redis URL {_redact(url)!r}: ssl_cert_reqs must be required, optional or none"
        )
    check = query.get("ssl_check_hostname", "true" if reqs == "required" else "false").lower() in _TRUE
    ctx.check_hostname = check
    ctx.verify_mode = {
        "required": ssl.CERT_REQUIRED,
        "optional": ssl.CERT_OPTIONAL,
        "none": ssl.CERT_NONE,
    }[reqs]
    if "ssl_certfile" in query:
        ctx.load_cert_chain(query["ssl_certfile"], query.get("ssl_keyfile"))
    return ctx


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
