"""catga.App with backends by URL: memory://, nats://, redis://; export/consume across apps; the demo."""

from __future__ import annotations

import asyncio
import inspect
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import catga
from catga import backends
from catga.app import H_ORIGIN
from catga.backends import Backends, parse_url, redact_url
from catga.errors import BackendUnavailableError, ConfigurationError, ConflictError
from catga.eventsourcing import Aggregate, Repository, applies
from catga.examples.orders_demo import run_demo
from catga.memory import MemoryEventStore, MemoryIdempotencyStore, MemoryOutboxStore
from catga.messages import Command, Event, Metadata, QoS, message_name
from catga.testing import free_port

EVENT_WAIT = 20.0  # seconds before a test waiting for a delivery gives up (not a performance bound)


@dataclass(frozen=True)
class Deposited(Event):
    account_id: str
    amount: int


@message_name("test_app_backends.Ping")  # tests/rpc_shared.py has a Ping in the same default registry
@dataclass(frozen=True)
class Ping(Event):
    text: str


@dataclass(frozen=True)
class Pong(Event):
    text: str


@dataclass(frozen=True)
class Charge(Command[int]):
    amount: int


class Account(Aggregate):
    def __init__(self, id: str) -> None:
        super().__init__(id)
        self.balance = 0

    def deposit(self, amount: int) -> None:
        self.raise_event(Deposited(self.id, amount))

    @applies(Deposited)
    def _deposited(self, event: Deposited) -> None:
        self.balance += event.amount


def url_in(base: str, prefix: str, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in {"prefix": prefix, **options}.items())
    return f"{base}{'&' if '?' in base else '?'}{query}"


@pytest.fixture(
    params=[
        pytest.param("nats", marks=pytest.mark.nats),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("redis-cluster", marks=pytest.mark.redis),
        pytest.param("redis-sentinel", marks=pytest.mark.redis),
    ]
)
def server_url(request: pytest.FixtureRequest, unique_name: str) -> str:
    """A URL on the NATS or the Redis test server (or Redis Cluster / Sentinel), in a namespace of its own."""
    if request.param == "nats":
        return url_in(request.getfixturevalue("nats_url"), unique_name, storage="memory")
    if request.param in ("redis-cluster", "redis-sentinel"):
        return url_in(request.getfixturevalue(f"{request.param.replace('-', '_')}_url"), unique_name)
    return url_in(request.getfixturevalue("redis_url"), unique_name)


async def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + EVENT_WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await asyncio.sleep(0.01)


# -- URLs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "what"),
    [
        ("kafka://127.0.0.1:9092", "has an unsupported scheme 'kafka'"),
        ("http://x", "has an unsupported scheme 'http'"),
        ("nats", "is not a URL"),
    ],
)
def test_an_unknown_scheme_names_the_supported_ones(url: str, what: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        catga.App(transport=url)
    message = str(info.value)
    assert f"transport{' URL' if '://' in url else ''} {url!r} {what}" in message
    for scheme in ("memory://", "nats://", "tls://", "redis://", "rediss://"):
        assert scheme in message


def test_a_postgres_url_fills_the_stores_and_the_outbox_not_the_transport() -> None:
    url = "postgresql://u:secret@127.0.0.1:1/db?sslmode=disable"
    spec = parse_url(url, "outbox")
    assert (spec.backend, spec.address) == ("postgres", url)  # the client gets the URL as given
    assert parse_url(url, "store").backend == "postgres"
    for role in ("transport", "--transport (CATGA_TRANSPORT)"):
        with pytest.raises(ConfigurationError, match="unsupported scheme 'postgresql'") as info:
            parse_url(url, role)
        assert "postgresql://" not in str(info.value).split(": use one of ")[1]
        assert "secret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="postgresql://"):
        parse_url("x://y", "outbox")


_FAKE_BACKEND = """
from catga.memory import MemoryIdempotencyStore, MemoryOutboxStore

LOCK_RANK = 0
EVENTS = []


class Connection:
    def __init__(self, address):
        self.address = address

    async def open(self):
        EVENTS.append(("open", self.address))

    async def aclose(self):
        EVENTS.append(("close", self.address))


def connection(backends, spec):
    conn = backends.shared(("fake", spec.address), "fake", lambda: Connection(spec.address), Connection.open)
    EVENTS.append(("built", conn.address))
    return conn


def outbox(backends, spec):
    connection(backends, spec)
    return MemoryOutboxStore()


def idempotency_store(backends, spec):
    connection(backends, spec)
    return MemoryIdempotencyStore()
"""


async def test_a_backend_registers_its_scheme_with_one_line(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "fakebackend").mkdir()
    (tmp_path / "fakebackend" / "__init__.py").write_text("")
    (tmp_path / "fakebackend" / "_backend.py").write_text(_FAKE_BACKEND)
    monkeypatch.syspath_prepend(str(tmp_path))
    for table in ("SCHEMES", "_PACKAGES", "_BACKEND_ROLES", "_OWN_OPTIONS"):
        monkeypatch.setattr(backends, table, dict(getattr(backends, table)))
    backends.register_backend("fake", "fake", package="fakebackend", roles=("outbox", "idempotency_store"))
    with pytest.raises(ConfigurationError, match="unsupported scheme 'fake'"):
        catga.App(transport="fake://h")
    app = catga.App(outbox="fake://a:1/x?prefix=p", idempotency_store="fake://b:2/y")
    events = sys.modules["fakebackend._backend"].EVENTS
    assert events == [("built", "fake://b:2/y"), ("built", "fake://a:1/x")]  # by the constructor
    assert isinstance(app.outbox, MemoryOutboxStore) and app.outbox in app.components
    for _ in range(2):  # a restart opens the connections again
        del events[:]
        async with app:
            assert events == [("open", "fake://b:2/y"), ("open", "fake://a:1/x")]
            await app.outbox.add([])
            assert await app.backends.worker_id_lock() is None  # the backend offers no lock
        assert events[2:] == [("close", "fake://a:1/x"), ("close", "fake://b:2/y")]  # in reverse
    assert [conn.address for conn in app.backends.connections] == ["fake://b:2/y", "fake://a:1/x"]


def test_parse_url_splits_catga_options_from_the_clients() -> None:
    spec = parse_url("nats://u:secret@h1:4222,nats://h2:4222?prefix=shop&storage=memory", "store")
    assert (spec.backend, spec.address, spec.prefix, spec.storage) == (
        "nats",
        "nats://u:secret@h1:4222,nats://h2:4222",
        "shop",
        "memory",
    )
    assert "secret" not in str(spec)
    spec = parse_url("rediss://:pw@host:6380/2?prefix=shop&ssl_cert_reqs=none")
    assert (spec.backend, spec.address, spec.prefix) == (
        "redis",
        "rediss://:pw@host:6380/2?ssl_cert_reqs=none",
        "shop",
    )
    assert parse_url("tls://h:4222").backend == "nats"
    assert parse_url("MEMORY://").backend == "memory"
    assert parse_url("redis://h:6379/0").prefix == "catga"


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("nats://h:4222?prefix=a.b", "invalid prefix 'a.b'"),
        ("nats://h:4222?storage=disk", "storage must be 'file' or 'memory'"),
        ("nats://h:4222?stream=X", r"unknown option\(s\) \['stream'\]"),
        ("redis://h:notaport/0", "Port could not be cast"),
    ],
)
def test_bad_url_options_are_configuration_errors(url: str, match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        catga.App(store=url)


def test_redact_url_hides_passwords_and_tokens() -> None:
    assert redact_url("redis://user:pw@h:6379/0") == "redis://user:***@h:6379/0"
    assert redact_url("nats://s3cret@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_a_missing_extra_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = backends.import_module

    def no_client_library(name: str) -> Any:
        if name.startswith("catga.memory"):  # the core's own backend
            return real_import(name)
        raise ModuleNotFoundError("No module named 'nats'", name="nats")

    monkeypatch.setattr(backends, "import_module", no_client_library)
    with pytest.raises(ConfigurationError, match=r'pip install "catga\[nats\]"'):
        catga.App(transport="nats://127.0.0.1:4222")
    with pytest.raises(ConfigurationError, match=r'pip install "catga\[redis\]"'):
        catga.App(store="redis://127.0.0.1:6379/0")
    catga.App(transport="memory://", store="memory://")  # the core needs no extra


def test_the_core_does_not_import_the_backends() -> None:
    code = (
        "import sys, catga\n"
        "app = catga.App()\n"
        "assert not any(m.startswith(('catga.nats', 'catga.redis', 'nats', 'redis')) for m in sys.modules)\n"
        "catga.App(store='redis://127.0.0.1:1/0')\n"
        "assert 'catga.redis' in sys.modules\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


# -- in memory and before start --------------------------------------------------------------------


def test_memory_defaults() -> None:
    app = catga.App(transport="memory://", store="memory://")
    assert app.transport is None
    assert isinstance(app.store, MemoryEventStore) and app.store in app.components
    assert isinstance(app.idempotency_store, MemoryIdempotencyStore)


async def test_without_a_transport_export_and_consume_change_nothing() -> None:
    app = catga.App()
    seen: list[str] = []

    @app.handler
    async def on_ping(event: Ping) -> None:
        seen.append(event.text)

    assert app.export(Ping) is Ping and app.consume(Ping) is Ping
    async with app:
        assert (await app.publish(Ping("x"))).ok
    assert seen == ["x"]
    assert len(app.mediator.handlers_for(Ping)) == 1  # no forwarder was registered


async def test_urls_are_not_opened_by_the_constructor() -> None:
    port = free_port()  # nothing listens there
    app = catga.App(
        transport=f"nats://127.0.0.1:{port}",
        store=f"redis://127.0.0.1:{port}/0",
        idempotency_store=f"redis://127.0.0.1:{port}/0",
        connect_timeout=1.0,
    )
    from catga.nats import NatsConnection, NatsTransport
    from catga.redis import RedisClient, RedisEventStore, RedisIdempotencyStore

    # The real objects, built at once on connections that are not open.
    assert isinstance(app.transport, NatsTransport)
    assert isinstance(app.store, RedisEventStore)
    assert isinstance(app.idempotency_store, RedisIdempotencyStore)
    nats_conn, redis_client = app.backends.connections  # one per server: the two stores share one
    assert isinstance(nats_conn, NatsConnection) and isinstance(redis_client, RedisClient)
    assert not nats_conn.opened and redis_client.closed
    repo = Repository(app.store, Account)  # fine at import time
    # A call before start says so at once (nothing connects on demand).
    with pytest.raises(
        ConfigurationError, match=r"Redis client for 127\.0\.0\.1:\d+ is not open: App\.start"
    ):
        await repo.load("a-1")
    with pytest.raises(ConfigurationError, match=r"NATS connection to nats://127\.0\.0\.1:\d+ is not open"):
        await app.transport.publish(Ping("x"))
    with pytest.raises(ConfigurationError, match="is not open"):
        await app.idempotency_store.claim("k")
    with pytest.raises(BackendUnavailableError):
        await app.start()
    assert not app.running and not nats_conn.opened and redis_client.closed
    with pytest.raises(ConfigurationError, match="is not open"):
        await app.store.version("s")


def test_a_nats_url_on_memory_storage_is_warned_about_when_the_app_is_built(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="catga.app"):
        catga.App(transport="nats://127.0.0.1:1?storage=memory", store="nats://127.0.0.1:1")
    [warning] = [r.getMessage() for r in caplog.records if "memory storage" in r.getMessage()]
    assert warning.startswith("transport nats://127.0.0.1:1?storage=memory keeps its NATS streams on memory")


def test_export_and_consume_take_event_classes_before_start() -> None:
    app = catga.App()
    with pytest.raises(ConfigurationError, match="takes an Event class"):
        app.export(Charge)
    with pytest.raises(ConfigurationError, match="takes an Event class"):
        app.consume(Ping("x"))  # type: ignore[arg-type]


async def test_export_and_consume_are_refused_once_running() -> None:
    app = catga.App()
    async with app:
        with pytest.raises(ConfigurationError, match="before the app starts"):
            app.consume(Ping)


# -- the export / consume rule, on a scripted transport -------------------------------------------


class ScriptedTransport:
    """Records publishes and subscriptions; the test delivers messages by calling the handlers."""

    def __init__(self) -> None:
        self.published: list[tuple[object, Metadata]] = []
        self.handlers: list[tuple[type, Callable[[Any, Metadata], Awaitable[None]], dict[str, Any]]] = []
        self.closed = False

    async def publish(
        self, message: object, *, metadata: Metadata | None = None, destination: str | None = None
    ) -> None:
        assert metadata is not None
        self.published.append((message, metadata))

    async def subscribe(self, message_type: type, handler: Any, **options: Any) -> ScriptedTransport:
        self.handlers.append((message_type, handler, options))
        return self

    async def aclose(self) -> None:
        self.closed = True


async def test_exported_events_go_out_once_and_consumed_ones_are_never_sent_back() -> None:
    transport = ScriptedTransport()
    app = catga.App(transport=transport, name="svc")
    pings: list[str] = []

    @app.handler
    async def on_ping(event: Ping, ctx: catga.Context) -> None:
        pings.append(event.text)
        await ctx.publish(Pong(event.text))

    app.export(Ping)
    app.export(Pong)
    app.export(Ping)  # once is enough
    app.consume(Ping, qos=QoS.EXACTLY_ONCE, max_in_flight=3)
    async with app:
        [(message_type, receive, options)] = transport.handlers
        assert message_type is Ping
        assert options == {
            "qos": QoS.EXACTLY_ONCE,
            "group": "svc",  # the app's name
            "destination": None,
            "max_in_flight": 3,
            "max_deliver": 5,
        }
        # Published here: local handlers run, and the event (and the one it caused) go out once.
        assert (await app.publish(Ping("local"))).ok
        assert pings == ["local"]
        # (the handler ran before the forwarder registered after it: Pong went out first)
        [(pong, pong_md), (ping, ping_md)] = transport.published
        assert (ping, pong) == (Ping("local"), Pong("local"))
        assert ping_md.headers == {H_ORIGIN: "svc"} and ping_md.qos == QoS.AT_LEAST_ONCE
        assert pong_md.causation_id == ping_md.message_id
        assert pong_md.correlation_id == ping_md.correlation_id == ping_md.message_id
        transport.published.clear()

        # From another app: handled here, not sent back; what it causes is exported.
        remote = Metadata(message_id=42, correlation_id=7, qos=QoS.AT_LEAST_ONCE, headers={H_ORIGIN: "other"})
        await receive(Ping("remote"), remote)
        assert pings == ["local", "remote"]
        [(pong, pong_md)] = transport.published
        assert pong == Pong("remote") and (pong_md.causation_id, pong_md.correlation_id) == (42, 7)

        # From this app (another replica of "svc"): its publisher handled it already.
        await receive(Ping("replica"), Metadata(message_id=43, headers={H_ORIGIN: "svc"}))
        assert pings == ["local", "remote"]
    assert transport.closed


async def test_a_consumed_event_whose_handler_fails_is_failed_for_redelivery() -> None:
    transport = ScriptedTransport()
    app = catga.App(transport=transport)
    calls: list[int] = []

    @app.handler
    async def on_ping(event: Ping) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise ConflictError("try again")

    app.consume(Ping, group=None)
    async with app:
        [(_, receive, options)] = transport.handlers
        assert options["group"] is None
        md = Metadata(message_id=1, headers={H_ORIGIN: "other"})
        with pytest.raises(ConflictError, match="try again"):
            await receive(Ping("x"), md)
        await receive(Ping("x"), md)  # the redelivery
    assert calls == [1, 1]


async def test_an_unnamed_app_has_a_unique_origin_and_private_consumers() -> None:
    a, b = catga.App(transport=ScriptedTransport()), catga.App(transport=ScriptedTransport())
    assert a.name is None and a.origin != b.origin
    a.consume(Ping)
    async with a:
        assert a.transport.handlers[0][2]["group"] is None  # type: ignore[union-attr]


# -- event stores on real servers ------------------------------------------------------------------


async def test_an_app_with_a_store_url_saves_and_loads_aggregates(server_url: str) -> None:
    app = catga.App(store=server_url)
    accounts = Repository(app.store, Account)  # declared before the app is started
    async with app:
        account = Account("a-1")
        account.deposit(30)
        account.deposit(12)
        assert await accounts.save(account) == 1
        loaded = await accounts.load("a-1")
        assert (loaded.balance, loaded.version) == (42, 1)
        stored = await app.store.read(accounts.stream_id("a-1"))
        assert [e.data for e in stored] == [Deposited("a-1", 30), Deposited("a-1", 12)]
    # Another app on the same URL sees the same streams: they live on the server.
    async with catga.App(store=server_url) as other:
        assert (await Repository(other.store, Account).load("a-1")).balance == 42
        fresh = Account("a-1")
        fresh.deposit(1)
        with pytest.raises(catga.ConcurrencyError):
            await Repository(other.store, Account).save(fresh)


@pytest.mark.nats
async def test_nats_names_follow_the_prefix(nats_url: str, unique_name: str) -> None:
    async with catga.App(store=url_in(nats_url, unique_name, storage="memory")) as app:
        from catga.nats import nats_layout

        store: Any = app.store
        await store.append("s-1", [Ping("x")])
        layout = nats_layout(unique_name)
        assert (store.stream, store.prefix) == (layout.events_stream, f"{unique_name}.events")
        info = await store.connection.js.stream_info(layout.events_stream)
        assert str(getattr(info.config.storage, "value", info.config.storage)) == "memory"


# -- sharing and closing connections ---------------------------------------------------------------


async def test_one_connection_per_server_shared_and_closed(server_url: str) -> None:
    app = catga.App(transport=server_url, store=server_url, idempotency_store=server_url, name="shared")
    async with app:
        [conn] = app.backends.connections
        transport: Any = app.transport
        store: Any = app.store
        idempotency: Any = app.idempotency_store
        if server_url.startswith("nats"):
            assert transport.connection is conn and store.connection is conn
            assert idempotency.connection is conn
        else:
            assert transport.client is conn and store._client is conn and idempotency._client is conn
    assert app.backends.connections == (conn,)
    if server_url.startswith("nats"):
        assert conn.client.is_closed
    else:
        assert conn.closed
    with pytest.raises(ConfigurationError, match="not open"):
        await app.store.version("s")


async def test_an_app_starts_again_after_a_stop(server_url: str) -> None:
    app = catga.App(transport=server_url, store=server_url, idempotency_store=server_url, name="again")
    received: list[str] = []

    @app.handler
    async def on_ping(event: Ping) -> None:
        received.append(event.text)

    app.export(Ping)
    app.consume(Ping)  # subscribed again at the second start
    store, transport = app.store, app.transport
    accounts = Repository(app.store, Account)
    for round_ in range(2):
        async with app:
            assert (app.store, app.transport) == (store, transport)  # the same objects, opened again
            account = Account(f"a-{round_}")
            account.deposit(round_ + 1)
            await accounts.save(account)
            assert (await accounts.load(f"a-{round_}")).balance == round_ + 1
            assert (await app.publish(Ping(f"round {round_}"))).ok
            assert (await app.health()).ok
        with pytest.raises(ConfigurationError, match="not open"):
            await accounts.load("a-0")
    [conn] = app.backends.connections
    assert conn.closed if hasattr(conn, "closed") else not conn.opened
    assert received == ["round 0", "round 1"]  # handled here; its own events are not consumed back


async def test_objects_you_built_on_their_own_connections_start_again_with_the_app(server_url: str) -> None:
    spec = parse_url(server_url)
    transport: Any
    store: Any
    if spec.backend == "nats":
        from catga.nats import NatsEventStore, NatsTransport

        transport = await NatsTransport.connect(spec.address, prefix=spec.prefix, storage="memory")
        store = await NatsEventStore.connect(
            spec.address,
            stream=f"{spec.prefix.upper()}_EVENTS",
            prefix=f"{spec.prefix}.events",
            storage="memory",
        )
    else:
        from catga.redis import RedisEventStore, RedisTransport

        transport = RedisTransport.connect(spec.address, prefix=spec.prefix)
        store = RedisEventStore.connect(spec.address, prefix=spec.prefix)
    app = catga.App(transport=transport, store=store)
    app.export(Ping)
    accounts = Repository(app.store, Account)
    for round_ in range(2):  # the app closes them at stop; its next start makes them usable again
        async with app:
            account = Account(f"a-{round_}")
            account.deposit(1)
            await accounts.save(account)
            assert (await app.publish(Ping(f"round {round_}"))).ok
            assert (await app.health()).ok


async def test_health_before_start_reports_connections_not_open_without_connecting() -> None:
    accepted: list[object] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        app = catga.App(
            transport=f"nats://127.0.0.1:{port}",
            store=f"redis://127.0.0.1:{port}/0",
            outbox=f"postgresql://u@127.0.0.1:{port}/db",
        )
        report = await app.health(timeout=5.0)
        failed = {c.name: c.detail for c in report.checks if not c.ok}
        assert not report.ok and set(failed) >= {"app", f"nats 127.0.0.1:{port}", f"redis 127.0.0.1:{port}"}
        assert "postgres catga_outbox" in failed
        for name, detail in failed.items():
            assert name == "app" or "not open" in detail, (name, detail)
        assert accepted == []  # nothing tried to connect
    finally:
        server.close()
        await server.wait_closed()


async def test_an_idempotency_store_url_deduplicates_commands(server_url: str) -> None:
    runs: list[int] = []

    def build() -> catga.App:
        app = catga.App(idempotency_store=server_url)

        @app.handler
        async def charge(cmd: Charge) -> int:
            runs.append(cmd.amount)
            return cmd.amount * 2

        return app

    md = Metadata(message_id=987654321)
    async with build() as first:
        assert (await first.send(Charge(21), metadata=md)).value == 42
    async with build() as second:  # a new process: the record is on the server
        assert (await second.send(Charge(21), metadata=md)).value == 42
    assert runs == [21]


# -- transports on real servers --------------------------------------------------------------------


async def test_an_exported_event_reaches_another_apps_handler(server_url: str) -> None:
    publisher = catga.App(transport=server_url, name="publisher")
    consumer = catga.App(transport=server_url, name="consumer")
    published: list[Ping] = []
    received: list[tuple[Ping, int, int | None]] = []

    @publisher.handler
    async def local(event: Ping) -> None:
        published.append(event)

    @consumer.handler
    async def remote(event: Ping, ctx: catga.Context) -> None:
        received.append((event, ctx.message_id, ctx.correlation_id))

    publisher.export(Ping)
    consumer.consume(Ping)
    async with consumer, publisher:
        result = await publisher.publish(Ping("hello"))
        assert result.ok, result.error
        await wait_until(lambda: bool(received), "the event on the other app")
        [(event, message_id, correlation_id)] = received
        assert event == Ping("hello") and published == [Ping("hello")]
        assert correlation_id == message_id  # a root event: its own correlation, carried across


async def test_an_outbox_url_relays_exported_events_to_another_app(server_url: str) -> None:
    from catga.protocols import OutboxStatus

    publisher = catga.App(transport=server_url, outbox=server_url, name="publisher")
    consumer = catga.App(transport=server_url, name="consumer")
    received: list[tuple[str, int]] = []

    @consumer.handler
    async def remote(event: Ping, ctx: catga.Context) -> None:
        received.append((event.text, ctx.message_id))

    publisher.export(Ping)
    consumer.consume(Ping)
    async with consumer, publisher:
        assert publisher.relay is not None and publisher.outbox is not None
        assert (await publisher.publish(Ping("via the outbox"))).ok
        await wait_until(lambda: bool(received), "the event on the other app")
        [(text, message_id)] = received
        assert text == "via the outbox"
        outbox = publisher.outbox
        for _ in range(500):
            stored = await outbox.get(str(message_id))
            if stored is not None and stored.status == OutboxStatus.PUBLISHED:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"the outbox entry was not marked published: {stored!r}")
        assert stored.destination == "test_app_backends.Ping" and stored.attempts == 0
    assert publisher.relay.published == 1


async def test_replicas_and_the_publisher_never_handle_their_own_events_twice(server_url: str) -> None:
    # Two replicas of "svc" (A exports and consumes, B consumes) and another app C that exports.
    # Each consumer handles one event at a time in publish order, so once "second" was handled,
    # "first" was already seen (and skipped) by the same consumer.
    a = catga.App(transport=server_url, name="svc")
    b = catga.App(transport=server_url, name="svc")
    c = catga.App(transport=server_url, name="other")
    seen: dict[str, list[str]] = {"a": [], "b": []}

    def recorder(into: list[str]) -> Callable[[Ping], Awaitable[None]]:
        async def on_ping(event: Ping) -> None:
            into.append(event.text)

        return on_ping

    a.handler(recorder(seen["a"]), message_type=Ping)
    b.handler(recorder(seen["b"]), message_type=Ping)
    a.export(Ping)
    a.consume(Ping, group="svc-1", max_in_flight=1)
    b.consume(Ping, group="svc-2", max_in_flight=1)
    c.export(Ping)
    async with a, b, c:
        assert (await a.publish(Ping("first"))).ok
        assert (await c.publish(Ping("second"))).ok
        await wait_until(lambda: "second" in seen["a"] and "second" in seen["b"], "'second' on both replicas")
    assert seen == {"a": ["first", "second"], "b": ["second"]}


# -- the demo --------------------------------------------------------------------------------------


@pytest.mark.nats
@pytest.mark.redis
@pytest.mark.parametrize(("transport", "store"), [("nats", "nats"), ("redis", "redis"), ("nats", "redis")])
async def test_the_demo_runs_on_remote_backends_and_cleans_up(
    transport: str, store: str, nats_url: str, redis_url: str
) -> None:
    urls = {"nats": nats_url, "redis": redis_url}
    report = await run_demo(urls[transport], urls[store])
    assert report.ok, [s for s in report.steps if not s.ok]
    assert [s.outcome for s in report.steps] == [
        "ok",
        "ok",
        "payment_declined",
        "conflict",
        "ok",
        "conflict",
        "ok",
        "not_found",
    ]
    assert report.stock == {"widget": 10, "gadget": 1}
    assert report.streams == {"Order-A-1001": 2, "Order-A-1002": 0, "Order-A-1003": 0}
    lines = [text for step in report.steps for kind, text in step.lines if kind == "notify"]
    assert lines == [  # delivered by the transport to the notifications app
        "to alice: order A-1001 confirmed, total 25.00",
        "to bob: payment for order A-1002 failed",
        "to alice: order A-1001 cancelled (changed my mind)",
    ]
    namespace = report.namespace
    assert namespace is not None and namespace.startswith("demo_")
    # Nothing is left behind under the demo's prefix.
    from catga.nats import NatsConnection
    from catga.redis import RedisClient

    async with await NatsConnection.connect(nats_url) as conn:
        names = [info.config.name or "" for info in await conn.js.streams_info()]
        assert not [n for n in names if namespace.lower() in n.lower()]
    async with RedisClient.from_url(redis_url, prefix=namespace) as client:
        assert await client.execute("KEYS", f"{namespace}:*") == []


async def test_the_demo_in_memory_keeps_everything_in_one_app() -> None:
    report = await run_demo()
    assert report.ok and report.namespace is None
    assert any(kind == "notify" for step in report.steps for kind, _ in step.lines)


def test_backends_all_lists_what_the_module_defines() -> None:
    defined = {
        n
        for n, v in vars(backends).items()
        if not n.startswith("_")
        and (isinstance(v, type) or inspect.isfunction(v))
        and v.__module__ == backends.__name__
    }
    # redact_url: from catga._urls
    assert defined | {"redact_url"} == set(backends.__all__) - {"SCHEMES", "ROLES"}
    assert Backends().connections == ()
