"""The OpenAPI 3.1 document for every gateway route (served at ``/api/openapi.json``)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.jsonio import json_response

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if schema is not None:
        out["content"] = {"application/json": {"schema": schema}}
    return out


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad input: the message names the field",
        404: "Unknown id",
        413: "Body over FOUNDRY_MAX_TASK_BYTES",
        429: "Queue full",
        503: "NATS, Redis or the healer unreachable",
    }
    return {str(c): _resp(text[c], _ERROR) for c in codes}


def _op(summary: str, ok: dict[str, Any], *errors: int, **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {**ok, **_errors(*errors)}, **extra}


def _obj(**props: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props}


STR: dict[str, Any] = {"type": "string"}
NUM: dict[str, Any] = {"type": "number"}
INT: dict[str, Any] = {"type": "integer"}
ANY: dict[str, Any] = {}
TASK_ID_PARAM = {"name": "task_id", "in": "path", "required": True, "schema": STR}

PATHS: dict[str, dict[str, Any]] = {
    "/health": {
        "get": _op(
            "Health of the gateway's connections",
            {
                "200": _resp("NATS and Redis reachable", {"$ref": "#/components/schemas/Health"}),
                "503": _resp("NATS or Redis unreachable", {"$ref": "#/components/schemas/Health"}),
            },
        )
    },
    "/api/cluster/task/submit": {
        "post": _op(
            "Submit a task (JSON body, or agent_type/description query parameters)",
            {
                "202": _resp(
                    "Accepted",
                    _obj(task_id=STR, agent_type=STR, status=STR, duplicate={"type": "boolean"}),
                )
            },
            400,
            413,
            429,
            503,
            parameters=[
                {"name": n, "in": "query", "required": False, "schema": STR}
                for n in ("agent_type", "description", "task_id")
            ],
            requestBody={
                "required": False,
                "content": {
                    "application/json": {
                        "schema": _obj(agent_type=STR, description=STR, input=ANY, task_id=STR)
                    }
                },
            },
        )
    },
    "/api/cluster/task/{task_id}": {
        "get": _op(
            "Status and result of a task; ?wait=seconds long-polls until it is final",
            {"200": _resp("The task", {"$ref": "#/components/schemas/Task"})},
            400,
            404,
            503,
            parameters=[
                TASK_ID_PARAM,
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "number", "minimum": 0, "maximum": 300},
                },
            ],
        )
    },
    "/api/cluster/status": {
        "get": _op(
            "Cluster totals, per-type health, queues, host",
            {
                "200": _resp(
                    "Status",
                    _obj(
                        total_workers=INT,
                        healthy_workers=INT,
                        unhealthy_workers=INT,
                        agent_types=ANY,
                        queues=ANY,
                    ),
                )
            },
        )
    },
    "/api/cluster/agents/live": {
        "get": _op(
            "Workers seen in heartbeats",
            {"200": _resp("Workers", _obj(agents={"type": "array"}, count=INT))},
        )
    },
    "/api/cluster/heal": {
        "post": _op(
            "Relaunch anything dead or silent now",
            {
                "200": _resp(
                    "What was healed",
                    _obj(healed_workers={"type": "array"}, count=INT, message=STR),
                )
            },
            503,
        )
    },
    "/api/cluster/heal/history": {
        "get": _op(
            "Heal events (relaunch, kill_silent, quarantine, release, poison, dead_letter, "
            "remediate), newest first",
            {
                "200": _resp(
                    "Events", _obj(events={"type": "array"}, count=INT, offset=INT, total=INT)
                )
            },
            400,
            503,
            parameters=[
                {"name": n, "in": "query", "required": False, "schema": INT}
                for n in ("limit", "offset")
            ],
        )
    },
    "/api/cluster/workers/{worker_id}/release": {
        "post": _op(
            "Release a quarantined worker slot (the healer relaunches it)",
            {
                "200": _resp(
                    "Released", _obj(released={"type": "boolean"}, worker_id=STR, state=STR)
                ),
                "409": _resp("The slot is not quarantined", _ERROR),
            },
            404,
            503,
            parameters=[{"name": "worker_id", "in": "path", "required": True, "schema": STR}],
        )
    },
    "/api/openapi.json": {"get": _op("This document", {"200": _resp("OpenAPI 3.1", ANY)})},
}

SCHEMAS = {
    "Error": _obj(error=STR, message=STR, field=STR),
    "Health": _obj(
        status=STR,
        cluster_initialized={"type": "boolean"},
        infrastructure_agent=STR,
        nats=STR,
        redis=STR,
    ),
    "Task": _obj(
        task_id=STR,
        agent_type=STR,
        status={"enum": ["queued", "running", "completed", "failed", "dead"]},
        result=ANY,
        error=STR,
        attempts=INT,
        worker_id=STR,
        submitted_at=NUM,
        started_at=NUM,
        finished_at=NUM,
        duration_seconds=NUM,
    ),
}


def document(extra_paths: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Agent Foundry gateway", "version": "0.1.0"},
        "paths": {**PATHS, **(extra_paths or {})},
        "components": {"schemas": SCHEMAS},
    }


async def openapi_view(request: web.Request) -> web.Response:
    return json_response(document())
