"""How a route is described: method, path, scope, parameters, bodies and answers.

The router (``gateway.routes``), the scope check (``gateway.auth``), the
parameter parsers of the handlers and the OpenAPI document
(``gateway.openapi``) all read these descriptions, so they cannot disagree.
A schema may depend on the settings (the fleet's agent types, the longest
wait): such a schema is a function of :class:`Settings`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from foundry.settings import Settings
from gateway.errors import bad_request
from gateway.keys import SETTINGS

Schema = dict[str, Any]
SchemaOf = Schema | Callable[[Settings], Schema]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def resolve(schema: SchemaOf, settings: Settings) -> Schema:
    return schema(settings) if callable(schema) else schema


@dataclass(frozen=True)
class Param:
    """A path or query parameter; ``schema`` holds every constraint the handler enforces."""

    name: str
    where: str  # "path" or "query"
    schema: SchemaOf
    description: str
    # For a path parameter: the segments the router lets through (aiohttp's {name:regex}).
    route_regex: str | None = None

    def integer(self, request: web.Request) -> int:
        """The query value as a whole number within the schema's bounds (400 otherwise)."""
        schema = resolve(self.schema, request.app[SETTINGS])
        text = request.query.get(self.name)
        if text is None:
            return int(schema["default"])
        if not _INTEGER.fullmatch(text):
            raise bad_request(f"{self.name} must be a whole number, got {text[:40]!r}", self.name)
        return int(self._bounded(int(text), schema))

    def number(self, request: web.Request) -> float:
        """The query value as a number within the schema's bounds (400 otherwise)."""
        schema = resolve(self.schema, request.app[SETTINGS])
        text = request.query.get(self.name)
        if text is None:
            return float(schema["default"])
        if not _NUMBER.fullmatch(text):
            raise bad_request(f"{self.name} must be a number, got {text[:40]!r}", self.name)
        return float(self._bounded(float(text), schema))

    def _bounded(self, value: float, schema: Schema) -> float:
        low, high = schema.get("minimum"), schema.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            raise bad_request(f"{self.name} must be between {low:g} and {high:g}", self.name)
        return value


@dataclass(frozen=True)
class Answer:
    """One documented response: status, description and (JSON) body schema."""

    status: int
    description: str
    schema: SchemaOf | None = None
    media_type: str = "application/json"


@dataclass(frozen=True)
class Route:
    """One operation. ``scope`` None means public; ``submit`` is refined per agent type."""

    method: str
    path: str
    handler: Handler
    scope: str | None
    operation_id: str
    summary: str
    answers: tuple[Answer, ...]
    params: tuple[Param, ...] = ()
    body: SchemaOf | None = None
    description: str = ""

    def router_path(self) -> str:
        """The path as the router matches it: ``{name:regex}`` where a parameter says so."""
        path = self.path
        for p in self.params:
            if p.where == "path" and p.route_regex is not None:
                path = path.replace("{" + p.name + "}", "{" + p.name + ":" + p.route_regex + "}")
        return path
