"""Redis settings that can drop acknowledged messages are flagged (issue 9, finding 3): by
``catga doctor`` and by a WARNING when an App opens the URL."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from typer.testing import CliRunner

import catga
from catga.cli import app as cli
from catga.redis import RedisClient
from catga.redis._durability import check_durability
from catga.testing.servers import RedisServer

pytestmark = pytest.mark.redis


def doctor_redis(url: str) -> tuple[int, dict[str, Any]]:
    env = {"CATGA_NATS_URL": None, "CATGA_REDIS_URL": None, "CATGA_POSTGRES_URL": None}
    result = CliRunner().invoke(cli, ["doctor", "--json", "--redis", url], env=env)
    [check] = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "redis durability"]
    return result.exit_code, check


async def test_aof_and_noeviction_pass() -> None:
    with RedisServer(extra_args=["--appendonly", "yes", "--appendfsync", "everysec"]) as server:
        async with RedisClient.from_url(server.url) as client:
            report = await check_durability(client)
        code, check = await asyncio.to_thread(doctor_redis, server.url)
    assert report.problems == [] and report.unknown is None
    assert report.settings["appendonly"] == "yes" and report.settings["maxmemory-policy"] == "noeviction"
    assert code == 0 and check["status"] == "ok"
    assert check["detail"] == "AOF on (appendfsync everysec), maxmemory-policy noeviction"


async def test_rdb_only_is_a_note_and_an_eviction_policy_a_problem(caplog: pytest.LogCaptureFixture) -> None:
    args = ["--save", "900 1", "--maxmemory-policy", "allkeys-lru"]
    with RedisServer(extra_args=args) as server:
        async with RedisClient.from_url(server.url) as client:
            report = await check_durability(client)
        code, check = await asyncio.to_thread(doctor_redis, server.url)
        with caplog.at_level(logging.WARNING, logger="catga.redis"):
            async with catga.App(store=server.url):
                pass
    [problem] = report.problems
    assert problem.startswith("maxmemory-policy allkeys-lru: when memory runs out Redis evicts keys")
    [note] = report.notes
    assert note.startswith("RDB snapshots only (save '900 1', appendonly no)")
    assert code == 0 and check["status"] == "warn" and "allkeys-lru" in check["detail"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("can lose acknowledged messages: maxmemory-policy allkeys-lru" in w for w in warnings)


async def test_a_disabled_config_command_says_it_could_not_check(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(extra_args=["--rename-command", "CONFIG", ""]) as server:
        async with RedisClient.from_url(server.url) as client:
            report = await check_durability(client)
        code, check = await asyncio.to_thread(doctor_redis, server.url)
        with caplog.at_level(logging.INFO, logger="catga.redis"):
            async with catga.App(store=server.url):
                pass
    assert report.problems == [] and report.unknown is not None
    assert report.unknown.startswith("CONFIG GET was refused") and "unknown command" in report.unknown
    assert code == 0 and check["status"] == "info" and check["detail"].startswith("could not check: ")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("could not check the persistence settings" in r.getMessage() for r in caplog.records)
