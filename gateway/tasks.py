"""Task routes: submit (JSON body, or query form with a token) and read back, with a long-poll."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import nats.errors
from aiohttp import web
from nats.js.errors import APIError as JsAPIError
from nats.js.errors import NoStreamResponseError, ServiceUnavailableError

from foundry import codec, tracing
from foundry.apitokens import SUBMIT
from foundry.contracts import (
    MSG_ID_HEADER,
    SEQ_ID_PREFIX,
    TASK_ID_HINT,
    TASK_ID_RE,
    Task,
    TaskEvent,
    TaskStatus,
    valid_task_id,
)
from foundry.errors import (
    JS_ERR_MAX_MSGS_PER_SUBJECT,
    BrokerUnavailable,
    InvalidAgentType,
    QueueFull,
)
from foundry.names import validate_agent_type
from gateway.auth import presented_token, require
from gateway.errors import ApiError, bad_request
from gateway.jsonio import json_response
from gateway.keys import JS, NC, SETTINGS, STORE, VIEW
from gateway.spec import Param

PUBLISH_TIMEOUT = 2.0
# A stream leader's election takes a few seconds (DESIGN.md: ~5 s): retries cover it.
PUBLISH_BUDGET = 12.0
PUBLISH_ATTEMPTS = 60
QUERY_FIELDS = ("agent_type", "description", "task_id")
RESERVED_PREFIX = SEQ_ID_PREFIX  # ids derived from stream sequences (seq_task_id)

# /api/cluster/task/submit is the submit route, so "submit" cannot be a task id over HTTP.
RESERVED_IDS = frozenset({"submit"})
TASK_ID = Param(
    "task_id",
    "path",
    {"type": "string", "pattern": "^(?!submit$)" + TASK_ID_RE.pattern[1:]},
    f"The task's id: {TASK_ID_HINT}; not 'submit'",
    route_regex="(?!submit$)[^/]+",
)
WAIT = Param(
    "wait",
    "query",
    lambda s: {"type": "number", "minimum": 0, "maximum": s.gateway_max_wait, "default": 0},
    "Seconds to wait for a final status (FOUNDRY_GATEWAY_MAX_WAIT at most)",
)


async def _read_body(request: web.Request) -> dict[str, Any] | None:
    """The JSON object sent, or None when there is no body."""
    if not request.can_read_body:
        return None
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        body = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        raise bad_request(
            f"body is not valid JSON ({exc}); send an object like "
            '{"agent_type": "coder", "description": "..."}',
            field="body",
        ) from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object, not " + type(body).__name__, field="body")
    return body


def _fields(request: web.Request, body: dict[str, Any] | None) -> dict[str, Any]:
    """The task's fields: the JSON body, or (the older form) query parameters and no body."""
    query = {k: request.query[k] for k in QUERY_FIELDS if k in request.query}
    if body is not None:
        if query:
            raise bad_request(
                f"send the task in the JSON body or as query parameters, not both "
                f"(got query parameter(s) {sorted(query)} beside a body)",
                field=sorted(query)[0],
            )
        return body
    if query and not presented_token(request):
        # A cross-site form can post a query string but cannot set Authorization.
        raise bad_request(
            "the query-parameter form needs an Authorization bearer token; "
            "send the task as a JSON body (Content-Type: application/json) instead",
            field="body",
        )
    return query


def _task_from(request: web.Request, body: dict[str, Any] | None) -> Task:
    settings = request.app[SETTINGS]
    fields = _fields(request, body)
    unknown = sorted(set(fields) - {"agent_type", "description", "input", "task_id"})
    if unknown:
        raise bad_request(
            f"unknown field(s) {unknown}; allowed: agent_type, description, input, task_id",
            field=unknown[0],
        )
    agent_type = fields.get("agent_type")
    if agent_type is None:
        raise bad_request("agent_type is required (query parameter or JSON field)", "agent_type")
    try:
        validate_agent_type(agent_type)
    except InvalidAgentType as exc:
        raise bad_request(str(exc), "agent_type") from None
    require(request, f"{SUBMIT}:{agent_type}")
    if agent_type not in settings.fleet:
        raise bad_request(
            f"unknown agent type {agent_type!r}; known types: {', '.join(settings.fleet)}",
            "agent_type",
            known_types=list(settings.fleet),
        )
    description = fields.get("description", "")
    if not isinstance(description, str):
        raise bad_request("description must be a string", "description")
    task_input = fields.get("input")
    if not description.strip() and task_input is None:
        raise bad_request("a task needs a description or an input (or both)", "description")
    task_id = fields.get("task_id")
    if task_id is None:
        task_id = uuid.uuid4().hex
    elif not valid_task_id(task_id):
        raise bad_request(f"task_id must be {TASK_ID_HINT}", "task_id")
    elif task_id in RESERVED_IDS:
        raise bad_request(
            f"{task_id!r} cannot be a task id: /api/cluster/task/{task_id} is a route", "task_id"
        )
    elif task_id.startswith(RESERVED_PREFIX):
        raise bad_request(
            f"task ids starting with {RESERVED_PREFIX!r} are reserved for tasks published "
            "without an id (seq-<stream sequence>); choose another task_id",
            "task_id",
        )
    return Task(task_id, agent_type, description, task_input, time.time())


def _queue_full(exc: JsAPIError) -> bool:
    full = exc.err_code == JS_ERR_MAX_MSGS_PER_SUBJECT
    return full or "maximum messages per subject" in str(exc.description)


async def _publish(request: web.Request, task: Task, payload: bytes) -> bool:
    """Publish with ``Nats-Msg-Id``; a publish that timed out or found no stream leader
    (a clustered stream electing a new one) is retried with the same id, for at most
    PUBLISH_BUDGET seconds: the stream stores it once.

    JetStream's refusals become core errors here: a full queue :class:`QueueFull`, any
    other :class:`BrokerUnavailable` (the error middleware answers 429 and 503).
    """
    nc, js = request.app[NC], request.app[JS]
    subject = request.app[SETTINGS].names.tasks(task.agent_type)
    headers = {MSG_ID_HEADER: task.task_id}
    tracing.current().inject(headers)  # traceparent of the submit span, when tracing is on
    last: Exception | None = None
    deadline = time.monotonic() + PUBLISH_BUDGET
    for attempt in range(PUBLISH_ATTEMPTS):
        if attempt and time.monotonic() >= deadline:
            break
        if not nc.is_connected:
            if nc.is_closed or time.monotonic() >= deadline:
                raise BrokerUnavailable("NATS is unreachable")
            await asyncio.sleep(0.1)  # reconnecting to another server of the cluster
            continue
        try:
            ack = await js.publish(subject, payload, timeout=PUBLISH_TIMEOUT, headers=headers)
            return bool(ack.duplicate)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            last = exc
        except NoStreamResponseError as exc:
            last = exc  # no stream leader yet: wait a little for the election
            await asyncio.sleep(min(0.25 * (attempt + 1), 1.0))
        except JsAPIError as exc:
            if _queue_full(exc):  # a 503 too: check it before retrying a 503
                raise QueueFull(task.agent_type) from None
            if not isinstance(exc, ServiceUnavailableError):
                raise BrokerUnavailable(f"JetStream refused the task: {exc.description}") from None
            last = exc  # JetStream unavailable for the moment (a leader being elected)
            await asyncio.sleep(min(0.25 * (attempt + 1), 1.0))
        except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as exc:
            last = exc
            break
    raise BrokerUnavailable(f"NATS did not store the task ({last!r})")


async def submit(request: web.Request) -> web.Response:
    """POST /api/cluster/task/submit"""
    settings = request.app[SETTINGS]
    task = _task_from(request, await _read_body(request))
    payload = task.to_payload()
    if len(payload) > settings.max_task_bytes:
        raise ApiError(
            413,
            "payload_too_large",
            f"task is {len(payload)} bytes, over the {settings.max_task_bytes} byte "
            "limit (FOUNDRY_MAX_TASK_BYTES)",
        )
    with tracing.current().span(
        "submit", kind="producer",
        attributes={"task.id": task.task_id, "agent.type": task.agent_type},
    ):  # fmt: skip
        return await _submit(request, task, payload)


async def _submit(request: web.Request, task: Task, payload: bytes) -> web.Response:
    settings, store = request.app[SETTINGS], request.app[STORE]
    existing = await store.queue(task.task_id, task.agent_type, task.submitted_at)
    record = None
    if existing != "created":
        record = await store.get(task.task_id)
    if record is not None and record.final:
        duplicate = True  # already finished: never run twice
    else:
        try:
            duplicate = await _publish(request, task, payload)
        except (BrokerUnavailable, QueueFull, ApiError):
            if existing == "created":
                await store.forget_queued(task.task_id)
            raise
        duplicate = duplicate or existing != "created"
    if not duplicate:
        event = TaskEvent(TaskStatus.QUEUED, task.task_id, task.agent_type)
        subject = settings.names.task_event(TaskStatus.QUEUED, task.agent_type)
        await request.app[NC].publish(subject, event.to_payload())
    body = {
        "task_id": task.task_id,
        "agent_type": task.agent_type,
        "status": "submitted",
        "duplicate": duplicate,
    }
    if record is not None:
        body["task_status"] = record.status
    return json_response(body, status=202)


async def get_task(request: web.Request) -> web.Response:
    """GET /api/cluster/task/{task_id}[?wait=seconds]"""
    task_id = request.match_info["task_id"]
    if not valid_task_id(task_id):
        raise bad_request(f"task_id must be {TASK_ID_HINT}", "task_id")
    wait = WAIT.number(request)
    store, view = request.app[STORE], request.app[VIEW]
    deadline = time.monotonic() + wait
    while True:
        async with view.waiter(task_id) as done:
            record = await store.get(task_id)
            remaining = deadline - time.monotonic()
            if (record is not None and record.final) or remaining <= 0:
                break
            try:
                await asyncio.wait_for(done, remaining)
            except TimeoutError:
                pass
    if record is None:
        raise ApiError(
            404,
            "not_found",
            f"no task {task_id!r}: it was never submitted, or its "
            "record expired (FOUNDRY_RESULT_TTL)",
            task_id=task_id,
        )
    return json_response(record.to_json())
