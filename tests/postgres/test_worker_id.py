"""Apps whose only remote backend is PostgreSQL lease their Snowflake worker id through it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

import catga
from catga._worker_ids import process_worker_id
from catga.errors import ConfigurationError
from catga.ids import WORKER_ID_ENV, default_generator

pytestmark = pytest.mark.postgres

CHILD = Path(__file__).with_name("worker_id_child.py")


def test_two_processes_with_only_postgres_backends_get_different_worker_ids(postgres_url: str) -> None:
    """Before, both kept worker id 0, drew the same command message ids, and the shared PostgreSQL
    idempotency store took the second process's commands for duplicates of the first's."""
    env = {k: v for k, v in os.environ.items() if k != WORKER_ID_ENV}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), postgres_url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    try:
        reports = []
        for p in procs:  # both apps are running once both have reported
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line, f"child exited with {p.wait()}"
            reports.append(json.loads(line))
        afters = []
        for p in procs:
            out, _ = p.communicate("stop\n", 30)
            afters.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert all(p.returncode == 0 for p in procs)
    worker_ids = [r["worker_id"] for r in reports]
    assert worker_ids[0] != worker_ids[1], f"processes shared worker id {worker_ids[0]}"
    assert [r["leased"] for r in reports] == worker_ids, reports
    ids = [i for r in reports for i in r["ids"]]
    assert len(set(ids)) == len(ids)
    assert afters == [{"after": None}, {"after": None}]  # released at stop


async def test_an_app_with_a_postgres_idempotency_store_leases_and_releases_its_worker_id(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORKER_ID_ENV, raising=False)
    assert process_worker_id().worker_id is None
    async with catga.App(idempotency_store=postgres_url) as app:
        leased = process_worker_id().worker_id
        assert leased is not None and app.worker_id == leased
        assert default_generator().parse(default_generator().next_id()).worker_id == leased
        [lock] = [o for w, o in app.backends._opened if w.startswith("worker id lock")]
        assert lock.pool is app.idempotency_store.pool  # type: ignore[attr-defined]
        conn = await asyncpg.connect(postgres_url)
        try:
            row = await conn.fetchrow(
                "SELECT token, expires_at > now() AS live FROM catga_locks WHERE key = $1",
                f"worker-id.catga.{leased}",
            )
            assert row is not None and row["token"] is not None and row["live"]
            health = await app.health()
            [check] = [c for c in health.checks if c.name == "worker_id"]
            assert check.ok, check
        finally:
            await conn.close()
    assert process_worker_id().worker_id is None
    conn = await asyncpg.connect(postgres_url)
    try:  # given back at stop, not left to expire
        key = f"worker-id.catga.{leased}"
        assert await conn.fetchval("SELECT token FROM catga_locks WHERE key = $1", key) is None
    finally:
        await conn.close()


async def test_a_role_that_may_not_create_the_lock_table_fails_the_start_with_what_to_do(
    postgres_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idempotency table exists (a migration) but ``catga_locks`` does not and the role may not
    create it: the app does not start with an unguarded worker id; the error says what to do."""
    monkeypatch.delenv(WORKER_ID_ENV, raising=False)
    db, role = f"db_{unique_name}", f"app_{unique_name}"
    admin = await asyncpg.connect(postgres_url)
    await admin.execute(f"CREATE DATABASE {db}")
    await admin.execute(f"CREATE ROLE {role} LOGIN")
    base, _ = postgres_url.rsplit("/", 1)
    try:
        owner = await asyncpg.connect(f"{base}/{db}")
        try:
            await owner.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
            await owner.execute(
                "CREATE TABLE catga_idempotency (key text PRIMARY KEY, state smallint NOT NULL, "
                "expires_at float8 NOT NULL, result bytea)"
            )
            await owner.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON catga_idempotency TO {role}")
        finally:
            await owner.close()
        url = f"{base}/{db}".replace("postgres@", f"{role}@", 1)
        app = catga.App(idempotency_store=url)
        with pytest.raises(ConfigurationError, match=r"catga_locks.*CREATE TABLE.*CATGA_WORKER_ID"):
            await app.start()
        assert process_worker_id().worker_id is None
        async with catga.App(idempotency_store=url, worker_id=5) as app:  # the way out it names
            assert app.worker_id == 5
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {db}")
        await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()
