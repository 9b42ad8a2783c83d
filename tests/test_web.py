"""catga.web on Starlette: routes for commands/queries/events, problem+json, correlation ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import msgspec
import pydantic
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware

import catga
from catga import Command, Context, Event, Query
from catga.errors import ConfigurationError, ConflictError, NotFoundError
from catga.web import STATUS_BY_CODE, CorrelationIdMiddleware, Endpoints


class PlaceOrder(msgspec.Struct, Command[str], frozen=True):
    customer_id: str
    amount: int


@dataclass(frozen=True)
class GetOrder(Query[dict[str, object]]):
    order_id: str
    detailed: bool = False


class CancelOrder(pydantic.BaseModel, Command[None]):
    order_id: str
    reason: str


@dataclass(frozen=True)
class OrderShipped(Event):
    order_id: str


Client = httpx.AsyncClient


@pytest.fixture
async def web() -> AsyncIterator[tuple[Client, dict[str, list[object]]]]:
    app = catga.App()
    seen: dict[str, list[object]] = {"shipped": [], "correlations": []}

    @app.handler
    async def place(cmd: PlaceOrder, ctx: Context) -> str:
        seen["correlations"].append(ctx.correlation_id)
        if cmd.amount > 1000:
            raise ConflictError("credit limit reached")
        return f"order-{cmd.customer_id}-{cmd.amount}"

    @app.handler
    async def get(query: GetOrder) -> dict[str, object]:
        if query.order_id == "missing":
            raise NotFoundError("no order missing")
        return {"id": query.order_id, "detailed": query.detailed}

    @app.handler
    async def cancel(cmd: CancelOrder) -> None:
        return None

    @app.handler
    async def shipped(event: OrderShipped) -> None:
        seen["shipped"].append(event.order_id)

    api = Endpoints(app)
    api.command("/orders", PlaceOrder)
    api.query("/orders/{order_id}", GetOrder)
    api.command("/orders/{order_id}/cancel", CancelOrder)
    api.event("/events/shipped", OrderShipped)
    web = Starlette(routes=api.routes, middleware=[Middleware(CorrelationIdMiddleware)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://catga.test"
    ) as client:
        yield client, seen


async def test_a_command_answers_its_value_and_a_query_reads_path_and_query_params(
    web: tuple[Client, dict[str, list[object]]],
) -> None:
    client, _ = web
    r = await client.post("/orders", json={"customer_id": "c1", "amount": 42})
    assert r.status_code == 200 and r.json() == "order-c1-42"
    r = await client.get("/orders/o-7", params={"detailed": "true"})
    assert r.status_code == 200 and r.json() == {"id": "o-7", "detailed": True}
    r = await client.post(
        "/orders/o-7/cancel", json={"reason": "changed my mind"}
    )  # pydantic, path param merged
    assert r.status_code == 204 and r.content == b""


async def test_an_event_is_published_and_accepted(web: tuple[Client, dict[str, list[object]]]) -> None:
    client, seen = web
    r = await client.post("/events/shipped", json={"order_id": "o-9"})
    assert r.status_code == 202 and seen["shipped"] == ["o-9"]


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/orders", {"customer_id": "c1", "amount": 5000}, 409, "conflict"),
        ("/orders", {"customer_id": "c1"}, 422, "validation"),  # missing field
        ("/orders", {"customer_id": "c1", "amount": "lots"}, 422, "validation"),  # wrong type
        ("/orders", [1, 2], 422, "validation"),  # not an object
        ("/orders/o-1/cancel", {}, 422, "validation"),  # pydantic: reason missing
    ],
)
async def test_failures_are_problem_json_with_the_status_of_their_code(
    web: tuple[Client, dict[str, list[object]]], path: str, body: object, status: int, code: str
) -> None:
    client, _ = web
    r = await client.post(path, json=body)
    assert r.status_code == status
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["status"] == status and problem["code"] == code
    assert problem["type"] == f"urn:catga:error:{code}" and problem["title"] and problem["detail"]


async def test_malformed_json_and_not_found(web: tuple[Client, dict[str, list[object]]]) -> None:
    client, _ = web
    r = await client.post("/orders", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not JSON" in r.json()["detail"]
    r = await client.get("/orders/missing")
    assert r.status_code == 404 and r.json()["detail"] == "no order missing"
    r = await client.post("/orders/o-1/cancel", json={})
    assert "reason" in r.json()["field_errors"]


async def test_the_correlation_id_is_continued_and_returned(
    web: tuple[Client, dict[str, list[object]]],
) -> None:
    client, seen = web
    r = await client.post(
        "/orders", json={"customer_id": "c", "amount": 1}, headers={"X-Correlation-Id": "777"}
    )
    assert r.headers["X-Correlation-Id"] == "777" and seen["correlations"][-1] == 777
    r = await client.post("/orders", json={"customer_id": "c", "amount": 2})
    fresh = int(r.headers["X-Correlation-Id"])
    assert fresh == seen["correlations"][-1] and fresh != 777
    r = await client.post(
        "/orders", json={"customer_id": "c", "amount": 3}, headers={"X-Correlation-Id": "not an id"}
    )
    assert int(r.headers["X-Correlation-Id"]) == seen["correlations"][-1]  # ignored: a new one
    r = await client.post(
        "/orders", json={"customer_id": "c", "amount": 5000}, headers={"X-Correlation-Id": "9"}
    )
    assert r.json()["correlation_id"] == "9"


async def test_a_uuid_or_a_w3c_traceparent_from_another_system_is_the_correlation(
    web: tuple[Client, dict[str, list[object]]],
) -> None:
    client, seen = web
    uuid_text = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    r = await client.post(
        "/orders", json={"customer_id": "c", "amount": 1}, headers={"X-Correlation-Id": uuid_text}
    )
    assert r.headers["X-Correlation-Id"] == uuid_text.lower() == seen["correlations"][-1]
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = await client.post(
        "/orders",
        json={"customer_id": "c", "amount": 5000},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert r.json()["correlation_id"] == trace == seen["correlations"][-1]
    r = await client.post(  # the explicit header wins over the trace
        "/orders",
        json={"customer_id": "c", "amount": 1},
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01", "X-Correlation-Id": "req-17"},
    )
    assert r.headers["X-Correlation-Id"] == "req-17" == seen["correlations"][-1]


def test_a_route_of_the_wrong_message_kind_is_refused_when_it_is_added() -> None:
    api = Endpoints(catga.App())
    with pytest.raises(ConfigurationError, match=r"OrderShipped is an Event: use Endpoints\.event"):
        api.command("/shipped", OrderShipped)
    with pytest.raises(ConfigurationError, match=r"Endpoints\.query\('/x', dict\): it takes a class"):
        api.query("/x", dict)
    with pytest.raises(ConfigurationError, match=r"an event route takes a class that inherits catga\.Event"):
        api.event("/orders", PlaceOrder)
    assert api.routes == []


def test_every_error_code_has_a_sensible_status() -> None:
    assert STATUS_BY_CODE["validation"] == 422 and STATUS_BY_CODE["not_found"] == 404
    assert STATUS_BY_CODE.get("internal", 500) == 500 and STATUS_BY_CODE.get("handler_not_found", 500) == 500
