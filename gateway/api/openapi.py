"""The OpenAPI document of the link API, made from the routes and the models (no YAML, no second copy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from .. import __version__
from .models import SCHEMA_TYPES, Error

_REF = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Operation:
    """One route's description: its summary, body and answers (by model name), and whether it needs a token."""

    path: str
    method: str
    summary: str
    request: type | None = None
    answer: type | None = None
    errors: tuple[tuple[int, str], ...] = ()
    authenticated: bool = True


def _json(model: type) -> dict[str, Any]:
    return {"application/json": {"schema": {"$ref": _REF.format(name=model.__name__)}}}


def document(operations: tuple[Operation, ...]) -> dict[str, Any]:
    """The whole document; built once at start, so a mistake in it shows at once."""
    _, components = msgspec.json.schema_components(SCHEMA_TYPES, ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        responses: dict[str, Any] = {"200": {"description": "OK"}}
        if op.answer is not None:
            responses["200"]["content"] = _json(op.answer)
        errors = list(op.errors)
        if op.authenticated:
            errors.append((401, "Missing or unknown bearer token"))
        for status, description in errors:
            responses[str(status)] = {"description": description, "content": _json(Error)}
        entry: dict[str, Any] = {"summary": op.summary, "responses": responses}
        if op.request is not None:
            entry["requestBody"] = {"required": True, "content": _json(op.request)}
        if not op.authenticated:
            entry["security"] = []
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "storage-gateway link API",
            "version": __version__,
            "description": "Issue and explain links to call recordings served by the storage-gateway edge.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}, "schemas": components},
    }
