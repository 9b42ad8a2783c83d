"""catga.web on Starlette: routes for commands/queries/events, problem+json, correlation ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import fastapi
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
    """Place an order for a customer."""

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


def make_web(framework: str, api: Endpoints) -> Any:
    """The routes served by a Starlette app, or added to a FastAPI app (with its OpenAPI document)."""
    if framework == "starlette":
        return Starlette(routes=api.routes, middleware=[Middleware(CorrelationIdMiddleware)])
    web = fastapi.FastAPI(title="orders", version="1.0")

    @web.get("/ping")
    async def ping() -> str:
        return "pong"

    api.add_to(web)
    web.add_middleware(CorrelationIdMiddleware)
    return web


@pytest.fixture(params=["starlette", "fastapi"])
async def web(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Client, dict[str, list[object]]]]:
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
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=make_web(request.param, api)), base_url="http://catga.test"
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


async def test_fastapi_describes_the_message_routes_in_its_openapi_document() -> None:
    api = Endpoints(catga.App())
    api.command("/orders", PlaceOrder)
    api.query("/orders/{order_id}", GetOrder)
    api.command("/orders/{order_id}/cancel", CancelOrder)
    api.event("/events/shipped", OrderShipped)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=make_web("fastapi", api)), base_url="http://catga.test"
    ) as client:
        doc = (await client.get("/openapi.json")).json()
        docs_page = await client.get("/docs")
    assert docs_page.status_code == 200 and "swagger" in docs_page.text.lower()
    assert doc["info"] == {"title": "orders", "version": "1.0"}
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    assert set(paths) == {
        "/ping",
        "/orders",
        "/orders/{order_id}",
        "/orders/{order_id}/cancel",
        "/events/shipped",
    }
    place = paths["/orders"]["post"]
    assert place["summary"] == "PlaceOrder" and place["description"] == "Place an order for a customer."
    assert place["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/PlaceOrder"
    }
    assert schemas["PlaceOrder"]["properties"] == {
        "customer_id": {"type": "string"},
        "amount": {"type": "integer"},
    }
    assert place["responses"]["200"]["content"]["application/json"]["schema"] == {
        "type": "string"
    }  # Command[str]
    problem = place["responses"]["default"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"} and "detail" in schemas["Problem"]["required"]
    get = paths["/orders/{order_id}"]["get"]
    assert [(p["name"], p["in"], p["required"]) for p in get["parameters"]] == [
        ("order_id", "path", True),
        ("detailed", "query", False),
    ]
    assert get["responses"]["200"]["content"]["application/json"]["schema"]["type"] == "object"
    cancel = paths["/orders/{order_id}/cancel"]["post"]  # pydantic; the path gives order_id
    body = cancel["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["reason"] and set(body["properties"]) == {"reason"}
    assert set(cancel["responses"]) == {"204", "default"}  # Command[None]
    assert schemas["CancelOrder"]["required"] == ["order_id", "reason"]
    assert set(paths["/events/shipped"]["post"]["responses"]) == {"202", "default"}
    assert {op["post" if "post" in op else "get"]["tags"][0] for p, op in paths.items() if p != "/ping"} == {
        "commands",
        "queries",
        "events",
    }


def test_a_message_type_without_a_json_schema_is_a_clear_error() -> None:
    class Opaque(Command[None]):
        def __init__(self, blob: object) -> None:
            self.blob = blob

    api = Endpoints(catga.App())
    api.command("/opaque", Opaque)
    with pytest.raises(ConfigurationError, match=r"no JSON Schema for .*Opaque.*msgspec Struct, a dataclass"):
        api.openapi()


@dataclass(frozen=True)
class ShipOrder(Command[str]):
    order_id: str


class Carrier:
    def __init__(self, name: str) -> None:
        self.name = name


class ShipOrderHandler:
    def __init__(self, carrier: Carrier) -> None:
        self.carrier = carrier

    async def handle(self, cmd: ShipOrder, ctx: Context) -> str:
        return f"{cmd.order_id} via {self.carrier.name}"


def catga_app(request: fastapi.Request) -> catga.App:
    app: catga.App = request.app.state.catga
    return app


Bus = Annotated[catga.App, fastapi.Depends(catga_app)]


async def test_the_documented_dependency_bridge_works_from_a_fastapi_endpoint() -> None:
    """docs/web.md: a class handler's factory provides its dependencies; an endpoint depends on the app."""
    app = catga.App()
    made: list[int] = []

    def provide(ctx: Context) -> ShipOrderHandler:
        made.append(ctx.message_id)
        return ShipOrderHandler(Carrier("postal"))

    app.handler(ShipOrderHandler, factory=provide)
    web = fastapi.FastAPI()
    web.state.catga = app

    @web.post("/orders/{order_id}/ship")
    async def ship(order_id: str, bus: Bus) -> str:
        return (await bus.send(ShipOrder(order_id))).unwrap()

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://catga.test"
    ) as client:
        r = await client.post("/orders/o-1/ship")
        r2 = await client.post("/orders/o-2/ship")
    assert (r.json(), r2.json()) == ("o-1 via postal", "o-2 via postal")
    assert len(made) == 2 and made[0] != made[1]  # one handler per message, like a request-scoped dependency


async def test_add_to_takes_the_routes_declared_before_it() -> None:
    api = Endpoints(catga.App())
    api.command("/orders", PlaceOrder)
    web = make_web("fastapi", api)
    api.event("/events/late", OrderShipped)  # after add_to: not this app's
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web), base_url="http://catga.test"
    ) as client:
        doc = (await client.get("/openapi.json")).json()
        late = await client.post("/events/late", json={"order_id": "o-1"})
    assert "/orders" in doc["paths"] and "/events/late" not in doc["paths"] and late.status_code == 404
