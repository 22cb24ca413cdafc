"""The OpenAPI 3.1 document, generated from the views' declarations and the pydantic models (JSON Schema 2020-12)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from apispec import APISpec
from flask import Flask
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

_REF = "#/components/schemas/{model}"


@dataclass
class Operation:
    summary: str
    body: type[BaseModel] | None = None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    responses: dict[int, tuple[type[BaseModel] | None, str]] = field(default_factory=dict)
    headers: dict[str, dict[str, Any]] = field(default_factory=dict)
    public: bool = False


def operation(summary: str, **kwargs: Any) -> Callable:
    """Declare a view's contract; the same models validate requests and describe them in the spec."""

    def decorate(view: Callable) -> Callable:
        view.openapi = Operation(summary=summary, **kwargs)
        return view

    return decorate


def build_spec(app: Flask, prefix: str = "/api/v1") -> dict[str, Any]:
    """Walk the API's routes and describe every one that declared an operation."""
    spec = APISpec(
        title="Subscription Portal usage API", version="1.0.0", openapi_version="3.1.0",
        info={"description": "Check and record feature usage against a customer's plan. "
                             "Authenticate with `Authorization: Bearer <API key>`."},
        servers=[{"url": prefix}],
    )
    spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    operations: list[tuple[str, str, Operation]] = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        op: Operation | None = getattr(view, "openapi", None)
        if op is None or not rule.rule.startswith(prefix):
            continue
        path = rule.rule[len(prefix):] or "/"
        path = path.replace("<", "{").replace(">", "}")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            operations.append((path, method.lower(), op))
    bodies = {op.body for _, _, op in operations if op.body}
    answers = {r[0] for _, _, op in operations for r in op.responses.values() if r[0]} - bodies
    by_name = lambda m: m.__name__  # noqa: E731
    _, schemas = models_json_schema(
        [(m, "validation") for m in sorted(bodies, key=by_name)]
        + [(m, "serialization") for m in sorted(answers, key=by_name)],
        ref_template=_REF,
    )
    for name, schema in schemas.get("$defs", {}).items():
        spec.components.schema(name, schema)
    for path, method, op in operations:
        parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                      for name in _path_params(path)]
        parameters += [{"name": name, "in": "query", **meta} for name, meta in op.query.items()]
        parameters += [{"name": name, "in": "header", **meta} for name, meta in op.headers.items()]
        responses: dict[str, Any] = {}
        for status, (model, description) in sorted(op.responses.items()):
            entry: dict[str, Any] = {"description": description}
            if model is not None:
                entry["content"] = {"application/json": {"schema": {"$ref": _REF.format(model=model.__name__)}}}
            if status == 429:
                entry["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds to wait."}}
            responses[str(status)] = entry
        details: dict[str, Any] = {"summary": op.summary, "parameters": parameters, "responses": responses}
        if not op.public:
            details["security"] = [{"bearer": []}]
        if op.body is not None:
            details["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": {"$ref": _REF.format(model=op.body.__name__)}}}}
        spec.path(path=path, operations={method: details})
    return spec.to_dict()


def _path_params(path: str) -> list[str]:
    import re

    return re.findall(r"{(?:[^:}]+:)?([^}]+)}", path)
