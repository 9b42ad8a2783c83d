"""A server process on loopback for tests and benchmarks: ports, temporary directory, log, readiness
wait, stop -- the part :class:`~catga.testing.servers.NatsServer`, :class:`~catga.testing.servers.RedisServer`
and the PostgreSQL server share -- and the clean-up that stops every server still running when the
interpreter exits or gets SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from catga.errors import CatgaError, ConfigurationError

__all__ = ("HOST", "START_TIMEOUT", "STOP_TIMEOUT", "ServerStartError", "free_port")

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
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
