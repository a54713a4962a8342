"""The OpenAPI 3.1 document, generated from the route table (served at ``/api/openapi.json``).

Each operation lists its parameters with the constraints the handlers enforce,
its request body, every answer it may give, and the scope its bearer token
needs (in ``security`` and as ``x-required-scope``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from foundry.apitokens import SCOPE_HINT
from foundry.settings import Settings
from gateway.schemas import COMPONENTS
from gateway.spec import Answer, Route, resolve

SCHEME = "bearer"
SCOPES_HELP = (
    "Send `Authorization: Bearer <token>`. Tokens are named, hashed entries in the file "
    "named by FOUNDRY_API_TOKENS; " + SCOPE_HINT + ". submit:<agent type> allows "
    "submissions of that type only; operate allows heal and release."
)


def _answer(answer: Answer, settings: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"description": answer.description}
    if answer.schema is not None:
        out["content"] = {answer.media_type: {"schema": resolve(answer.schema, settings)}}
    if answer.status == 401:
        out["headers"] = {
            "WWW-Authenticate": {
                "description": "Bearer challenge",
                "required": True,
                "schema": {"type": "string", "pattern": "^Bearer "},
            }
        }
    return out


def _operation(route: Route, settings: Settings) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "responses": {str(a.status): _answer(a, settings) for a in route.answers},
    }
    if route.description:
        op["description"] = route.description
    if route.params:
        op["parameters"] = [
            {
                "name": p.name,
                "in": p.where,
                "required": p.where == "path",
                "description": p.description,
                "schema": resolve(p.schema, settings),
            }
            for p in route.params
        ]
    if route.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": resolve(route.body, settings)}},
        }
    if route.scope is None:
        op["security"] = []
    else:
        op["security"] = [{SCHEME: [route.scope]}]
        op["x-required-scope"] = route.scope
    return op


def document(routes: Iterable[Route], settings: Settings) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, settings)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agent Foundry gateway",
            "version": "0.2.0",
            "description": "Every operation but /health needs a bearer token; " + SCOPES_HELP,
        },
        "paths": paths,
        "components": {
            "schemas": COMPONENTS,
            "securitySchemes": {
                SCHEME: {"type": "http", "scheme": "bearer", "description": SCOPES_HELP}
            },
        },
        "security": [{SCHEME: []}],
    }
