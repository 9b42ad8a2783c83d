"""OpenAPI for :class:`catga.web.Endpoints`: operations described from the message types.

JSON Schemas come from msgspec for Structs and dataclasses and from pydantic for its models; a route's
path fields become path parameters, a query's fields query parameters, a command's or event's type the
request body, and the result type ``R`` of ``Command[R]``/``Query[R]`` the success response.
"""

from __future__ import annotations

import re
import typing
from typing import Any, NamedTuple

import msgspec

from catga.errors import ConfigurationError
from catga.messages import Request as MessageRequest

__all__ = ("PROBLEM_JSON", "Operation", "openapi_document")

PROBLEM_JSON = "application/problem+json"

_REF = "#/components/schemas/{name}"
_PARAM = re.compile(r"{([^}:]+)(?::[^}]*)?}")
_PROBLEM = {
    "title": "Problem",
    "type": "object",
    "description": "RFC 9457 problem details (application/problem+json)",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": ["string", "null"]},
        "correlation_id": {"type": "string"},
        "field_errors": {
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"type": "string"}},
        },
    },
    "required": ["type", "title", "status", "detail", "code"],
}


_TAGS = {"command": "commands", "query": "queries", "event": "events"}


class Operation(NamedTuple):
    """One route: its path, HTTP method, message type and kind."""

    path: str
    method: str
    message_type: type
    kind: str  # command | query | event


def _result_type(message_type: type) -> Any:
    """``R`` of the ``Command[R]`` / ``Query[R]`` a message class derives from (Any if unknown)."""
    for cls in message_type.__mro__:
        for base in getattr(cls, "__orig_bases__", ()):
            origin = typing.get_origin(base)
            if isinstance(origin, type) and issubclass(origin, MessageRequest):
                args = typing.get_args(base)
                if args and not isinstance(args[0], typing.TypeVar):
                    return args[0]
    return Any


def _any_schema(tp: Any) -> dict[str, Any]:
    """``object`` (as in ``dict[str, object]``) takes any JSON value; other unknown types have none."""
    if tp is object:
        return {"description": "any JSON value"}
    raise NotImplementedError


def _schemas(types: list[Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """JSON Schemas (``$ref`` into components where named) for ``types``, and the components."""
    components: dict[str, Any] = {}
    out: list[dict[str, Any]] = []
    for tp in types:
        if tp is None or tp is type(None):
            out.append({"type": "null"})
            continue
        model_schema = getattr(tp, "model_json_schema", None)
        if isinstance(tp, type) and model_schema is not None:  # pydantic v2
            schema = dict(model_schema(ref_template=_REF.replace("{name}", "{model}")))
            components.update(schema.pop("$defs", {}))
            components[tp.__name__] = schema
            out.append({"$ref": _REF.format(name=tp.__name__)})
            continue
        try:
            (schema,), defs = msgspec.json.schema_components([tp], schema_hook=_any_schema, ref_template=_REF)
        except (TypeError, ValueError) as exc:
            name = getattr(tp, "__qualname__", repr(tp))
            reason = str(exc).strip().splitlines()[-1]
            raise ConfigurationError(
                f"no JSON Schema for {name} ({reason}); use a msgspec Struct, a dataclass or a pydantic model"
            ) from exc
        components.update(defs)
        out.append(schema)
    return out, components


def _properties(schema: dict[str, Any], components: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The properties and required names of an object schema (following one ``$ref``)."""
    ref = schema.get("$ref", "")
    target = components.get(ref.rsplit("/", 1)[-1], schema) if ref else schema
    return dict(target.get("properties", {})), set(target.get("required", ()))


def openapi_document(operations: list[Operation]) -> dict[str, Any]:
    """The ``paths`` and ``components`` of an OpenAPI document for ``operations``."""
    paths: dict[str, Any] = {}
    components: dict[str, Any] = {"Problem": _PROBLEM}
    problem_ref = {"$ref": _REF.format(name="Problem")}
    for op in operations:
        result = None if op.kind == "event" else _result_type(op.message_type)
        (message_schema, result_schema), defs = _schemas([op.message_type, result])
        components.update(defs)
        properties, required = _properties(message_schema, components)
        path_names = _PARAM.findall(op.path)
        parameters = [
            {"name": n, "in": "path", "required": True, "schema": properties.get(n, {"type": "string"})}
            for n in path_names
        ]
        operation: dict[str, Any] = {
            "operationId": f"{op.method}_{op.message_type.__name__}",
            "summary": op.message_type.__name__,
            "tags": [_TAGS[op.kind]],
        }
        doc = (op.message_type.__doc__ or "").strip()
        if doc and not doc.startswith(op.message_type.__name__ + "("):  # not a dataclass's generated one
            operation["description"] = doc
        if op.kind == "query":
            parameters += [
                {"name": n, "in": "query", "required": n in required, "schema": s}
                for n, s in properties.items()
                if n not in path_names
            ]
        else:
            body_schema = message_schema
            if path_names:  # the path gives those fields: the body needs only the others
                body_schema = {
                    "title": f"{op.message_type.__name__} body",
                    "type": "object",
                    "properties": {n: s for n, s in properties.items() if n not in path_names},
                    "required": sorted(required - set(path_names)),
                }
            operation["requestBody"] = {
                "required": bool(required - set(path_names)),
                "content": {"application/json": {"schema": body_schema}},
            }
        if parameters:
            operation["parameters"] = parameters
        if op.kind == "event":
            ok: dict[str, Any] = {"202": {"description": "published"}}
        elif result is None or result is type(None):
            ok = {"204": {"description": "done"}}
        else:
            ok = {
                "200": {
                    "description": "the result",
                    "content": {"application/json": {"schema": result_schema}},
                }
            }
        operation["responses"] = {
            **ok,
            "default": {"description": "a failed Result", "content": {PROBLEM_JSON: {"schema": problem_ref}}},
        }
        paths.setdefault(op.path, {})[op.method] = operation
    return {"paths": paths, "components": {"schemas": components}}
