"""The PostgreSQL inbox under a consumer SIGKILLed again and again: every message applied exactly once.

Before the unit of work, the transport's ``EXACTLY_ONCE`` inbox committed apart from the handler's
effect: in a 3,000-message run with a consumer killed every ~1 s, 2-6 already-applied messages ran
again. With ``PostgresInboxStore`` the claim, the effect and the "done" record are one transaction.
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import catga
from catga.nats import NatsTransport
from chaos import Chaos

pytestmark = [pytest.mark.postgres, pytest.mark.nats, pytest.mark.slow]

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from inbox_consumer_child import Tick, transport_options  # noqa: E402

WAIT = 240.0  # seconds the whole run may take before the test gives up (not a performance bound)


def _consumer_info(transport: NatsTransport) -> Any:
    """Reads the consumer group's JetStream consumer: messages not delivered yet, delivered unacked."""
    from catga.nats._jetstream import consumer_name as _consumer_name

    name = _consumer_name("evt", "kills.Tick", "consumer")

    async def info() -> Any:
        return await transport.client.jetstream().consumer_info(transport.stream, name)

    return info


async def _start(nats_url: str, postgres_url: str, name: str) -> asyncio.subprocess.Process:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "inbox_consumer_child.py"), nats_url, postgres_url, name,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = await proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        _, err = await proc.communicate()
        raise AssertionError(f"consumer did not start: {line!r} {err.decode()[-3000:]}")
    return proc


@pytest.mark.chaos
@pytest.mark.timeout(400)
async def test_a_consumer_killed_again_and_again_applies_each_message_once(
    nats_url: str, postgres_url: str, pool: Any, unique_name: str, chaos: Chaos
) -> None:
    n = chaos.size(short=300, full=3_000)
    name = unique_name
    await pool.execute(f"CREATE TABLE applied_{name} (seq int PRIMARY KEY, n int NOT NULL)")
    producer_transport = await NatsTransport.connect(nats_url, **transport_options(name))  # type: ignore[arg-type]
    producer = catga.App(producer_transport, name="producer", registry=transport_options(name)["registry"])  # type: ignore[arg-type]
    producer.export(Tick)
    rng = random.Random(12)
    kills = 0
    started = time.monotonic()
    async with producer:
        async with asyncio.timeout(WAIT):
            proc = await _start(nats_url, postgres_url, name)  # creates the durable consumer (new messages)
            for seq in range(n):
                (await producer.publish(Tick(seq))).unwrap()
            while True:
                await asyncio.sleep(rng.uniform(0.5, 1.5) if chaos.full else rng.uniform(0.05, 0.5))
                done = await pool.fetchval(f"SELECT count(*) FROM applied_{name}")
                proc.kill()  # SIGKILL, whatever it is doing
                await proc.wait()
                kills += done < n  # killed mid-run
                proc = await _start(nats_url, postgres_url, name)
                if done == n:
                    break
            # The last consumer takes every redelivery of what the killed ones committed but never acked.
            info = _consumer_info(producer_transport)
            while (c := await info()).num_pending or c.num_ack_pending:  # noqa: ASYNC110 - polls the server
                await asyncio.sleep(0.05)
            proc.kill()
            await proc.wait()
    applied = await pool.fetch(f"SELECT seq, n FROM applied_{name}")
    twice = sum(r["n"] - 1 for r in applied)
    chaos.record(
        "EXACTLY_ONCE consumer with the PostgreSQL inbox, SIGKILLed repeatedly (NATS)",
        messages=n,
        kills=kills,
        lost=n - len(applied),
        twice=twice,
        recovery_s=round(time.monotonic() - started, 1),
    )
    assert len(applied) == n
    assert twice == 0, f"{twice} messages were applied again after their transaction committed"
    assert kills >= 1, "no consumer was killed mid-run: the run proves nothing (make n larger)"
