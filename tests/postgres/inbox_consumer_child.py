"""A consumer process of ``test_inbox_kills.py``: NATS ``EXACTLY_ONCE`` with the PostgreSQL inbox.

Usage: ``python inbox_consumer_child.py NATS_URL POSTGRES_URL NAME``. It consumes ``Tick`` events from
the NATS transport under prefix NAME; each delivery runs in one PostgreSQL transaction (the inbox's):
the claim, the handler's row in ``applied_NAME`` (a counter per tick) and the "done" record commit
together. Prints ``ready`` once subscribed, then runs until killed.
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import msgspec

import catga
from catga.messages import Event, QoS, message_name
from catga.nats import NatsTransport
from catga.postgres import PostgresInboxStore, current_connection
from catga.serialization import TypeRegistry


@message_name("kills.Tick")
class Tick(msgspec.Struct, Event, frozen=True):
    seq: int


def transport_options(name: str) -> dict[str, object]:
    """What the consumer and the test's producer both use."""
    return {
        "prefix": name,
        "storage": "memory",
        "ack_wait": 2.0,
        "retry_backoff": 0.05,
        "retry_backoff_max": 0.5,
        "registry": TypeRegistry(types=[Tick]),
    }


async def main(nats_url: str, postgres_url: str, name: str) -> None:
    pool = await asyncpg.create_pool(postgres_url, min_size=2, max_size=8)
    inbox = PostgresInboxStore(pool, table=f"inbox_{name}")
    transport = await NatsTransport.connect(nats_url, inbox=inbox, **transport_options(name))  # type: ignore[arg-type]
    app = catga.App(transport, name="consumer", registry=TypeRegistry(types=[Tick]))
    app.add_component(inbox)
    insert = (
        f"INSERT INTO applied_{name} (seq, n) VALUES ($1, 1) "
        f"ON CONFLICT (seq) DO UPDATE SET n = applied_{name}.n + 1"
    )

    @app.handler
    async def on_tick(tick: Tick, ctx: catga.Context) -> None:
        await current_connection().execute(insert, tick.seq)
        await asyncio.sleep(0.005)  # a little work inside the transaction, so kills land mid-way

    app.consume(Tick, qos=QoS.EXACTLY_ONCE, max_in_flight=4)
    async with app:
        print("ready", flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
