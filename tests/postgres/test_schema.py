"""Schema set-up of the PostgreSQL stores: never on a second pool connection behind the caller's back,
race-free across processes, behind a server version gate, and failing with catga errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from asyncpg.types import ServerVersion

import catga
from catga.cli.doctor import check_postgres
from catga.errors import BackendTimeoutError, BackendUnavailableError, ConfigurationError
from catga.postgres import (
    PostgresIdempotencyStore,
    PostgresInboxStore,
    PostgresOutboxStore,
    check_server_version,
    format_version,
)
from catga.protocols import ClaimStatus, OutboxMessage
from catga.testing import free_port

pytestmark = pytest.mark.postgres

CHILD = Path(__file__).with_name("first_use_child.py")


def _message(n: int) -> OutboxMessage:
    return OutboxMessage(id=f"m-{n}", destination="d", type_name="t", body=b"x")


async def test_calls_on_held_connections_never_wait_for_another_pool_connection(
    postgres_url: str, unique_name: str
) -> None:
    """Every pool connection is held in a transaction; each method that takes ``connection=`` is
    called on new store objects (their first call), and must finish without a second connection."""
    setup = await asyncpg.create_pool(postgres_url, min_size=1, max_size=1)
    try:  # the tables exist (a previous run, a migration): new store objects must not wait for the pool
        await PostgresOutboxStore(setup, table=f"out_{unique_name}").ensure_schema()
        await PostgresInboxStore(setup, table=f"inbox_{unique_name}").ensure_schema()
    finally:
        await setup.close()
    pool = await asyncpg.create_pool(postgres_url, min_size=2, max_size=2)
    try:

        async def work(n: int) -> None:
            outbox = PostgresOutboxStore(pool, table=f"out_{unique_name}")
            inbox = PostgresInboxStore(pool, table=f"inbox_{unique_name}")
            async with pool.acquire() as conn, conn.transaction():
                assert (await inbox.claim(f"k-{n}", connection=conn)).status == ClaimStatus.CLAIMED
                await inbox.complete(f"k-{n}", b"done", connection=conn)
                assert (await inbox.claim(f"r-{n}", connection=conn)).status == ClaimStatus.CLAIMED
                await inbox.release(f"r-{n}", connection=conn)
                await outbox.add([_message(n)], connection=conn)

        await asyncio.wait_for(asyncio.gather(work(1), work(2)), 10)  # hung forever before
        outbox = PostgresOutboxStore(pool, table=f"out_{unique_name}")
        assert await outbox.count() == 2
        inbox = PostgresInboxStore(pool, table=f"inbox_{unique_name}")
        assert (await inbox.claim("k-1")).status == ClaimStatus.COMPLETED
        assert (await inbox.claim("r-1")).status == ClaimStatus.CLAIMED  # released, so free again
    finally:
        await pool.close()


@pytest.mark.slow  # ~5-10 s here: four interpreters start
def test_first_calls_from_four_processes_at_once_all_succeed(postgres_url: str, unique_name: str) -> None:
    """4 processes x 8 concurrent first calls, each through a new store object, on fresh tables, in
    3 rounds (an outbox, an idempotency and an inbox table): no call may fail."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    rounds, calls = 3, 8
    procs = [
        subprocess.Popen(
            [sys.executable, str(CHILD), postgres_url, f"race_{unique_name}", str(rounds), str(calls)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == "ready", line
        start = time.time() + 0.3
        outs = []
        for p in procs:
            out, _ = p.communicate(f"{start}\n", 60)
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = [e for o in outs for e in o["errors"]]
    assert errors == []
    assert sum(o["ok"] for o in outs) == 4 * rounds * calls


async def test_a_call_in_a_transaction_before_the_table_exists_says_what_to_do(
    pool: Any, unique_name: str
) -> None:
    """No DDL inside the caller's transaction, no second connection: a clear error, and the caller's
    transaction is still usable (the check only reads the catalog)."""
    outbox = PostgresOutboxStore(pool, table=f"out_{unique_name}")
    inbox = PostgresInboxStore(pool, table=f"inbox_{unique_name}")
    async with pool.acquire() as conn, conn.transaction():
        with pytest.raises(
            ConfigurationError,
            match=rf"not set up yet \(out_{unique_name} / out_{unique_name}_pending not found\)"
            r".*ensure_schema\(\)",
        ):
            await outbox.add([_message(1)], connection=conn)
        with pytest.raises(ConfigurationError, match=f"claim on inbox_{unique_name}"):
            await inbox.claim("k", connection=conn)
        assert await conn.fetchval("SELECT 41 + 1") == 42  # the transaction was not aborted
    async with pool.acquire() as conn:  # not in a transaction: created on the caller's connection
        await outbox.add([_message(2)], connection=conn)
        assert (await inbox.claim("k", connection=conn)).status == ClaimStatus.CLAIMED
    assert await outbox.count() == 1


async def test_methods_without_a_connection_time_out_instead_of_waiting_forever(
    postgres_url: str, unique_name: str
) -> None:
    pool = await asyncpg.create_pool(postgres_url, min_size=1, max_size=1)
    try:
        # the tables are set up with the default timeout (DDL can take more than 0.1 s on a busy
        # machine); the stores under test only need a pool connection, which they never get
        await PostgresOutboxStore(pool, table=f"out_{unique_name}").ensure_schema()
        await PostgresInboxStore(pool, table=f"inbox_{unique_name}").ensure_schema()
        outbox = PostgresOutboxStore(pool, table=f"out_{unique_name}", timeout=0.1)
        inbox = PostgresInboxStore(pool, table=f"inbox_{unique_name}", timeout=0.1)
        calls = [
            outbox.fetch_pending(),
            outbox.mark_published(["x"]),
            outbox.mark_failed("x", "boom", None),
            outbox.get("x"),
            outbox.count(),
            outbox.purge_published(0.0),
            outbox.add([_message(1)]),
            outbox.ping(),
            inbox.claim("k"),
            inbox.complete("k"),
            inbox.release("k"),
            inbox.purge_expired(),
        ]
        async with pool.acquire() as conn, conn.transaction():  # the pool's only connection
            for call in calls:
                with pytest.raises(BackendTimeoutError, match=r"timed out after 0.1 s.*pool"):
                    await asyncio.wait_for(call, 10)
    finally:
        await pool.close()


async def test_the_table_is_created_once_per_store_and_after_it_was_dropped(
    pool: Any, unique_name: str
) -> None:
    inbox = PostgresInboxStore(pool, table=f"inbox_{unique_name}")
    await inbox.complete("k", b"r")
    await pool.execute(f"DROP TABLE inbox_{unique_name}")
    with pytest.raises(ConfigurationError, match="table is missing"):
        await inbox.claim("k")
    assert (await inbox.claim("k")).status == ClaimStatus.CLAIMED  # set up again


async def test_a_role_without_create_privilege_uses_an_existing_table(
    pool: Any, postgres_url: str, unique_name: str
) -> None:
    role, table = f"app_{unique_name}", f"inbox_{unique_name}"
    await PostgresInboxStore(pool, table=table).ensure_schema()  # the migration, as the owner
    await pool.execute(f"CREATE ROLE {role} LOGIN")
    await pool.execute(f"REVOKE CREATE ON SCHEMA public FROM PUBLIC, {role}")
    await pool.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON {table} TO {role}")
    url = postgres_url.replace("postgres@", f"{role}@", 1)
    try:
        async with await PostgresInboxStore.connect(url, table=table, min_size=1, max_size=2) as store:
            assert (await store.claim("k")).status == ClaimStatus.CLAIMED
        with pytest.raises(ConfigurationError, match=r"refused schema set-up on other_.*privileges"):
            await PostgresInboxStore.connect(url, table=f"other_{unique_name}", min_size=1, max_size=1)
    finally:
        await pool.execute(f"DROP OWNED BY {role}")
        await pool.execute(f"DROP ROLE {role}")


async def test_server_failures_are_catga_errors(postgres_url: str) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    with pytest.raises(BackendUnavailableError, match="cannot use the server"):
        await PostgresOutboxStore.connect(closed, min_size=1, max_size=1)
    missing_db = postgres_url.rsplit("/", 1)[0] + "/no_such_database"
    with pytest.raises(ConfigurationError, match="no_such_database"):
        await PostgresOutboxStore.connect(missing_db, min_size=1, max_size=1)


def _too_old(monkeypatch: pytest.MonkeyPatch) -> None:
    old = ServerVersion(9, 4, 26, "final", 0)
    monkeypatch.setattr(asyncpg.connection.Connection, "get_server_version", lambda self: old)


async def test_a_server_older_than_9_5_is_refused_at_connect(
    postgres_url: str, unique_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _too_old(monkeypatch)
    with pytest.raises(ConfigurationError, match=r"PostgreSQL 9\.4\.26 is too old.*need 9\.5 or newer"):
        await PostgresOutboxStore.connect(postgres_url, table=f"out_{unique_name}", min_size=1, max_size=1)
    app = catga.App(idempotency_store=postgres_url)
    with pytest.raises(ConfigurationError, match=r"9\.4\.26 is too old"):
        await app.start()
    assert not app.running


async def test_doctor_names_the_version_found_and_needed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    check = await check_postgres(postgres_url, 5.0)
    assert check.status == "ok" and "needs >= 9.5" in check.detail
    _too_old(monkeypatch)
    check = await check_postgres(postgres_url, 5.0)
    assert check.status == "fail"
    assert "PostgreSQL 9.4.26 at" in check.detail and "need 9.5 or newer" in check.detail
    assert check.facts["server_version"] == "9.4.26" and check.facts["min_version"] == "9.5"


def test_versions_are_compared_and_printed_like_postgresql_does() -> None:
    check_server_version(ServerVersion(9, 5, 0, "final", 0))
    check_server_version(ServerVersion(10, 0, 1, "final", 0))
    with pytest.raises(ConfigurationError, match=r"PostgreSQL 9\.4\.0 at h:1 is too old"):
        check_server_version(ServerVersion(9, 4, 0, "final", 0), " at h:1")
    assert format_version(ServerVersion(16, 0, 2, "final", 0)) == "16.2"
    assert format_version(ServerVersion(9, 6, 24, "final", 0)) == "9.6.24"


async def test_an_app_sets_up_the_schema_of_a_store_object_at_start(pool: Any, unique_name: str) -> None:
    table = f"idem_{unique_name}"
    store = PostgresIdempotencyStore(pool, table=table)
    async with catga.App(idempotency_store=store):
        assert await pool.fetchval("SELECT to_regclass($1) IS NOT NULL", table)
        async with pool.acquire() as conn, conn.transaction():  # so a first call in a transaction works
            assert (await store.claim("k", connection=conn)).status == ClaimStatus.CLAIMED
