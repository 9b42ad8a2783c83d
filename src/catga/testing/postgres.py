"""A throw-away PostgreSQL server for tests: ``initdb`` into a temp dir, ``postgres`` on a free port.

PostgreSQL refuses to run as root; when the tests run as root (CI containers), the data directory is
given to the ``postgres`` system user and the server runs as that user through ``runuser``. Durability
is switched off (``fsync=off``, ``synchronous_commit=off``, ``full_page_writes=off``): the data lives
as long as the test session.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from catga.testing.servers import HOST, START_TIMEOUT, ServerStartError, _ServerProcess

__all__ = ("PostgresServer", "find_postgres_bindir")


def find_postgres_bindir() -> str:
    """The directory holding ``initdb`` and ``postgres``: ``pg_config --bindir``, else the newest
    ``/usr/lib/postgresql/*/bin`` (Debian's layout).

    Raises:
        ServerStartError: PostgreSQL is not installed (``apt-get install postgresql``).
    """
    pg_config = shutil.which("pg_config")
    candidates: list[str] = []
    if pg_config is not None:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(out.stdout.strip())
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name or 0))
    candidates.extend(reversed(versions))
    for bindir in candidates:
        if os.access(Path(bindir) / "initdb", os.X_OK) and os.access(Path(bindir) / "postgres", os.X_OK):
            return bindir
    raise ServerStartError(
        "PostgreSQL server binaries (initdb, postgres) not found; install them with "
        "`apt-get install postgresql` (make test does), or set CATGA_POSTGRES_URL to a running server"
    )


class PostgresServer(_ServerProcess):
    """A ``postgres`` server on a free loopback port, user ``postgres``, trust authentication.

    Ready means ``pg_isready`` says the server accepts connections.

    Args:
        bindir: where ``initdb``, ``postgres`` and ``pg_isready`` are; default :func:`find_postgres_bindir`.
        port: Port; default a free one.
        extra_args: More ``postgres`` arguments, e.g. ``["-c", "max_connections=200"]``.
        start_timeout: Seconds :meth:`start` waits for readiness (``initdb`` included).
    """

    kind = "postgres"

    def __init__(
        self,
        *,
        bindir: str | None = None,
        port: int | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        super().__init__(binary=None, port=port, extra_args=extra_args, cpu=None, start_timeout=start_timeout)
        self._bindir = bindir

    @property
    def url(self) -> str:
        """Client URL, ``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _bin(self, name: str) -> str:
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        return str(Path(self._bindir) / name)

    def _find_binary(self) -> str:
        return self._bin("postgres")

    def _as_server_user(self) -> list[str]:
        """``runuser -u postgres --`` when running as root (PostgreSQL refuses root), else nothing."""
        if os.geteuid() != 0:
            return []
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ServerStartError("running as root needs `runuser` to start PostgreSQL as user postgres")
        return [runuser, "-u", "postgres", "--"]

    def _pinning(self) -> list[str]:
        return self._as_server_user()

    def _args(self, directory: Path) -> list[str]:
        # Called by start() right before the server is launched: create the cluster first.
        data = directory / "data"
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerStartError("running as root needs the `postgres` system user") from None
            os.chown(directory, user.pw_uid, user.pw_gid)
        init = [
            *self._as_server_user(),
            self._bin("initdb"),
            "-D",
            str(data),
            "-A",
            "trust",
            "-U",
            "postgres",
        ]
        init += ["--no-sync", "-E", "UTF8", "--locale", "C"]
        done = subprocess.run(init, capture_output=True, text=True, check=False, timeout=120)
        if done.returncode != 0:
            raise ServerStartError(
                f"initdb failed with code {done.returncode}", command=init, log_tail=done.stdout + done.stderr
            )
        return [
            "-D", str(data), "-p", str(self.port), "-k", str(directory), "-c", f"listen_addresses={HOST}",
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
            *self.extra_args,
        ]  # fmt: skip

    def _probe(self) -> bool:
        check = [self._bin("pg_isready"), "-q", "-h", HOST, "-p", str(self.port), "-U", "postgres"]
        return subprocess.run(check, capture_output=True, check=False, timeout=10).returncode == 0
