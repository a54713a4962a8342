"""Workflow routes: start, read (with a long-poll), cancel, approve — answered by the orchestrator.

The gateway checks the request, then asks over ``agents.workflows.<verb>``
(request/reply). Any orchestrator answers a read; start, cancel and approve
need the leader, so during a leader change (at most FOUNDRY_LEASE_TTL) they
answer 503 and may be retried (a start with the same workflow_id starts one
workflow). A read with ``?wait=`` returns once the workflow is finished or waits
for approval, waking on its ``agents.events.workflow.*`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import nats.errors
from aiohttp import web
from nats.aio.msg import Msg

from foundry import codec
from foundry.apitokens import SUBMIT
from foundry.contracts import ControlReply, MessageRejected
from foundry.contracts.fields import MAX_TEXT
from foundry.contracts.workflow import (
    WORKFLOW_ID_HINT,
    WORKFLOW_ID_RE,
    WORKFLOW_NAME_RE,
    StepStatus,
    WorkflowStatus,
    WorkflowVerb,
)
from foundry.errors import BrokerUnavailable
from gateway.audit import audited
from gateway.auth import caller, require
from gateway.errors import ApiError, bad_request
from gateway.jsonio import json_response
from gateway.keys import NC, SETTINGS
from gateway.schemas import ANY, BOOL, INT, OPT_NUM, OPT_STR, STR, obj
from gateway.spec import Param, Schema

ASK_TIMEOUT = 5.0
REREAD_SECONDS = 1.0  # a waiting read asks again this often, events or not
START_FIELDS = ("workflow", "input", "workflow_id")

WORKFLOW_ID = Param(
    "workflow_id",
    "path",
    {"type": "string", "pattern": WORKFLOW_ID_RE.pattern},
    f"The workflow's id: {WORKFLOW_ID_HINT}",
)
WAIT = Param(
    "wait",
    "query",
    lambda s: {"type": "number", "minimum": 0, "maximum": s.gateway_max_wait, "default": 0},
    "Seconds to wait until the workflow is finished or waits for approval",
)

START_BODY: Schema = {
    **obj(
        ("workflow",),
        workflow={"type": "string", "pattern": WORKFLOW_NAME_RE.pattern,
                  "description": "a definition's name: build, or one in FOUNDRY_WORKFLOWS_DIR"},
        input={"type": "object", "description": "the workflow's input, e.g. {\"description\"}"},
        workflow_id={"type": ["string", "null"], "pattern": WORKFLOW_ID_RE.pattern,
                     "description": "absent or null: one is made (a retried start with the "
                                    "same id starts nothing new)"},
    ),
    "additionalProperties": False,
}  # fmt: skip
APPROVE_BODY: Schema = {
    **obj(comment={"type": "string", "maxLength": MAX_TEXT}),
    "additionalProperties": False,
}
STATUSES = [s.value for s in WorkflowStatus]
STARTED = obj(
    ("workflow_id", "workflow", "status", "duplicate"),
    workflow_id=STR,
    workflow=STR,
    status={"enum": STATUSES},
    duplicate=BOOL,
)
STEP_RUN = obj(
    ("step", "round", "status"),
    step=STR,
    round=INT,
    status={"enum": [s.value for s in StepStatus]},
    agent_type=OPT_STR,
    task_id=OPT_STR,
    submitted_at=OPT_NUM,
    started_at=OPT_NUM,
    finished_at=OPT_NUM,
    duration_seconds=OPT_NUM,
    overhead_seconds=OPT_NUM,
    result=ANY,
    output=ANY,
    error=OPT_STR,
    attempts=INT,
    approved_by=OPT_STR,
    comment=OPT_STR,
)
WORKFLOW = obj(
    ("workflow_id", "workflow", "status", "round", "steps"),
    workflow_id=STR,
    workflow=STR,
    status={"enum": STATUSES},
    round=INT,
    max_iterations=INT,
    loop_done=BOOL,
    input={"type": "object"},
    submitted_by=OPT_STR,
    created_at={"type": "number"},
    updated_at={"type": "number"},
    finished_at=OPT_NUM,
    duration_seconds=OPT_NUM,
    error=OPT_STR,
    steps={"type": "array", "items": STEP_RUN},
)
CANCELLED = obj(
    ("workflow_id", "status"),
    workflow_id=STR,
    status={"enum": STATUSES},
    cancelled_steps={"type": "array", "items": STR},
)
APPROVED = obj(("workflow_id", "status"), workflow_id=STR, status={"enum": STATUSES})

# An orchestrator's error code → the HTTP status and the API's error code.
_CODES = {"bad_request": 400, "not_found": 404, "conflict": 409}


async def ask(request: web.Request, verb: WorkflowVerb, body: dict[str, Any]) -> dict[str, Any]:
    """An orchestrator's answer; its errors as HTTP errors, 503 when none answers."""
    nc = request.app[NC]
    if not nc.is_connected:
        raise BrokerUnavailable("NATS is unreachable")
    subject = request.app[SETTINGS].names.workflows(verb)
    try:
        msg = await nc.request(subject, codec.dumps(body), timeout=ASK_TIMEOUT)
        reply = ControlReply.from_payload(msg.data)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
        who = "orchestrator" if verb is WorkflowVerb.GET else "leading orchestrator"
        raise ApiError(
            503,
            "orchestrator_unavailable",
            f"no {who} answered; start one with `python -m orchestrator` (the healer runs "
            "it with --services orchestrator), or retry: a new leader takes over within "
            "FOUNDRY_LEASE_TTL",
            service="orchestrator",
        ) from None
    except MessageRejected:
        raise ApiError(502, "orchestrator_error", f"the orchestrator's {verb} reply is not "
                       "a JSON object") from None  # fmt: skip
    if reply.ok:
        return reply.body
    status = _CODES.get(reply.code or "")
    extra = {k: v for k, v in reply.body.items() if k in ("workflow_id", "status", "field")}
    if status is None:
        raise ApiError(
            502, "orchestrator_error", f"the orchestrator failed to {verb}: {reply.error}"
        )
    code = {400: "bad_request", 404: "not_found", 409: "conflict"}[status]
    raise ApiError(status, code, reply.error or "", **extra)


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        body = codec.loads(raw)
    except codec.JSONDecodeError as exc:
        raise bad_request(f"body is not valid JSON ({exc})", "body") from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object, not " + type(body).__name__, "body")
    return body


def _token_name(request: web.Request) -> str | None:
    token = caller(request)
    return token.name if token is not None else None


async def start(request: web.Request) -> web.Response:
    """POST /api/cluster/workflows"""
    require(request, SUBMIT)  # a workflow submits tasks of several types
    body = await _body(request)
    unknown = sorted(set(body) - set(START_FIELDS))
    if unknown:
        raise bad_request(
            f"unknown field(s) {unknown}; allowed: {', '.join(START_FIELDS)}", unknown[0]
        )
    name = body.get("workflow")
    if not isinstance(name, str) or not WORKFLOW_NAME_RE.fullmatch(name):
        raise bad_request(
            "workflow is required: a definition's name (lowercase letters, digits, '_', '-'), "
            "e.g. build",
            "workflow",
        )
    task_input = body.get("input", {})
    if not isinstance(task_input, dict):
        raise bad_request("input must be a JSON object", "input")
    workflow_id = body.get("workflow_id")
    if workflow_id is not None and (
        not isinstance(workflow_id, str) or not WORKFLOW_ID_RE.fullmatch(workflow_id)
    ):
        raise bad_request(f"workflow_id must be {WORKFLOW_ID_HINT}", "workflow_id")
    sent = {"workflow": name, "input": task_input, "submitted_by": _token_name(request)}
    if workflow_id is not None:
        sent["workflow_id"] = workflow_id
    out = await ask(request, WorkflowVerb.START, sent)
    return json_response(out, status=202)


def _workflow_id(request: web.Request) -> str:
    workflow_id = request.match_info["workflow_id"]
    if not WORKFLOW_ID_RE.fullmatch(workflow_id):
        raise bad_request(f"workflow_id must be {WORKFLOW_ID_HINT}", "workflow_id")
    return workflow_id


def _settled(state: dict[str, Any]) -> bool:
    status = state.get("status")
    return status in (WorkflowStatus.WAITING_APPROVAL, *_FINAL)


_FINAL = tuple(s.value for s in WorkflowStatus if s.final)


async def _read(request: web.Request, query: dict[str, Any]) -> dict[str, Any]:
    out = await ask(request, WorkflowVerb.GET, query)
    state = out.get("state")
    if not isinstance(state, dict):
        raise ApiError(502, "orchestrator_error", "the orchestrator's get reply has no state")
    return state


async def get(request: web.Request) -> web.Response:
    """GET /api/cluster/workflows/{workflow_id}[?wait=seconds]"""
    workflow_id = _workflow_id(request)
    wait = WAIT.number(request)
    query = {"workflow_id": workflow_id}
    state = await _read(request, query)
    if wait <= 0 or _settled(state):
        return json_response(state)
    changed = asyncio.Event()

    async def on_event(msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            if codec.loads(msg.data).get("workflow_id") == workflow_id:
                changed.set()

    nc = request.app[NC]
    sub = await nc.subscribe(request.app[SETTINGS].names.workflow_event(">"), cb=on_event)
    deadline = time.monotonic() + wait
    try:
        while not _settled(state):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(REREAD_SECONDS, remaining))
            changed.clear()
            state = await _read(request, query)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return json_response(state)


@audited("workflow_cancel", "workflow_id")
async def cancel(request: web.Request) -> web.Response:
    """POST /api/cluster/workflows/{workflow_id}/cancel"""
    workflow_id = _workflow_id(request)
    out = await ask(request, WorkflowVerb.CANCEL, {"workflow_id": workflow_id})
    return json_response(out)


@audited("workflow_approve", "workflow_id")
async def approve(request: web.Request) -> web.Response:
    """POST /api/cluster/workflows/{workflow_id}/approve"""
    workflow_id = _workflow_id(request)
    body = await _body(request)
    unknown = sorted(set(body) - {"comment"})
    if unknown:
        raise bad_request(f"unknown field(s) {unknown}; allowed: comment", unknown[0])
    comment = body.get("comment")
    if comment is not None and (not isinstance(comment, str) or len(comment) > MAX_TEXT):
        raise bad_request(f"comment must be text of at most {MAX_TEXT} characters", "comment")
    sent: dict[str, Any] = {"workflow_id": workflow_id, "submitted_by": _token_name(request)}
    if comment is not None:
        sent["comment"] = comment
    out = await ask(request, WorkflowVerb.APPROVE, sent)
    return json_response(out)
