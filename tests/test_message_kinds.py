"""The markers are enforced: each misuse of a message kind gets a clear error, checked once per type."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import pytest

import catga
from catga import Command, Event, Metadata, Query
from catga.errors import ConfigurationError
from catga.mediator import Mediator


@dataclass(frozen=True)
class PlaceOrder(Command[str]):
    customer_id: str


@dataclass(frozen=True)
class GetOrder(Query[int]):
    order_id: str


@dataclass(frozen=True)
class OrderPlaced(Event):
    order_id: str


@dataclass(frozen=True)
class Plain:
    value: int


def test_a_handler_for_a_class_without_a_marker_is_refused_at_registration() -> None:
    mediator = Mediator()

    async def handle_plain(msg: Plain) -> None: ...

    with pytest.raises(ConfigurationError, match=r"handles Plain, which is not a catga message: make it"):
        mediator.register(handle_plain)
    with pytest.raises(ConfigurationError, match="not a catga message"):
        mediator.register(handle_plain, message_type=int)
    assert mediator.handlers_for(Plain) == ()


async def test_send_of_an_event_says_events_are_published_and_runs_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = catga.App()
    ran: list[str] = []

    @app.handler
    async def on_placed(event: OrderPlaced) -> None:
        ran.append(event.order_id)

    caplog.set_level(logging.ERROR, "catga.mediator")
    async with app:
        for _ in range(2):
            result = await app.send(OrderPlaced("o-1"))  # type: ignore[arg-type]
            assert not result.ok and result.code == "configuration"
            assert result.error == (
                "OrderPlaced is an Event: publish it (app.publish / ctx.publish); "
                "send() takes commands and queries"
            )
            assert isinstance(result.exception, ConfigurationError)
    assert ran == []
    assert [r.getMessage() for r in caplog.records].count(result.error) == 1  # logged once per type


async def test_publish_of_a_command_or_query_fails_and_does_not_run_its_handler() -> None:
    mediator = Mediator()
    ran: list[object] = []

    @mediator.handler
    async def place(cmd: PlaceOrder) -> str:
        ran.append(cmd)
        return "o-1"

    @mediator.handler
    async def get(query: GetOrder) -> int:
        ran.append(query)
        return 1

    for concurrent in (None, True):
        result = await mediator.publish(PlaceOrder("c-1"), concurrent=concurrent)
        assert not result.ok and result.code == "configuration"
        assert result.error is not None and result.error.startswith("PlaceOrder is a Command: send it")
    result = await mediator.publish(GetOrder("o-1"), metadata=Metadata(message_id=5))
    assert result.error is not None and result.error.startswith("GetOrder is a Query: send it")
    assert ran == []
    assert (await mediator.send(PlaceOrder("c-1"))).value == "o-1"  # the right way still works


async def test_dispatching_a_class_without_a_marker_names_the_marker_to_inherit() -> None:
    mediator = Mediator()
    sent = await mediator.send(Plain(1))  # type: ignore[arg-type]
    assert sent.code == "configuration" and sent.error == (
        "Plain is not a command or query: send() takes classes that inherit "
        "catga.Command[R] or catga.Query[R]"
    )
    published = await mediator.publish(Plain(1))
    assert published.code == "configuration"
    assert published.error == "Plain is not an Event: publish() takes classes that inherit catga.Event"


async def test_the_right_kinds_behave_as_before() -> None:
    mediator = Mediator()
    assert (await mediator.send(PlaceOrder("c-1"))).code == "handler_not_found"
    assert (await mediator.publish(OrderPlaced("o-1"))).ok  # no handler: fine for an event


def test_delivery_mode_is_gone_and_an_old_header_is_ignored() -> None:
    assert not hasattr(catga, "DeliveryMode")
    assert "delivery_mode" not in Metadata.__struct_fields__
    headers = Metadata(message_id=1).to_headers("X")
    assert "Catga-Delivery" not in headers
    name, md = Metadata.from_headers({**headers, "Catga-Delivery": "1"})
    assert name == "X" and md.message_id == 1 and md.headers is None
