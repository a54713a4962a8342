"""The route table: every operation's method, path, handler, scope, parameters and answers.

``create_app`` registers exactly these routes, the auth middleware reads each
one's scope from here, and the OpenAPI document is generated from this table.
"""

from __future__ import annotations

from aiohttp import web

from foundry.apitokens import METRICS, OPERATE, READ, SUBMIT
from gateway import (
    cluster,
    control_routes,
    deadletters,
    events,
    heal,
    page,
    replay,
    stream,
    tasks,
    workflows,
)
from gateway.jsonio import json_response
from gateway.keys import OPENAPI
from gateway.metrics import metrics_view
from gateway.schemas import SUBMITTED, ref, submit_body
from gateway.spec import Answer, Route

ERRORS = {
    400: "Bad input: the message names the field",
    401: "No valid bearer token (WWW-Authenticate: Bearer)",
    403: "The token lacks the scope named in the answer, or the Origin is foreign",
    404: "Unknown id",
    409: "Conflicts with the current state",
    413: "Body over FOUNDRY_MAX_TASK_BYTES",
    415: "A body that is not Content-Type: application/json",
    421: "The Host header does not name this gateway (FOUNDRY_GATEWAY_ALLOWED_HOSTS)",
    429: "Queue full (FOUNDRY_MAX_QUEUE_PER_TYPE)",
    502: "The healer (or the orchestrator) answered with an error; the message gives its reason",
    503: "NATS, Redis, the healer or the orchestrator unreachable",
}
GUARDED = (401, 403, 421)  # every route but /health may answer these


def errors(*codes: int) -> tuple[Answer, ...]:
    return tuple(Answer(c, ERRORS[c], ref("Error")) for c in sorted({*codes, *GUARDED}))


async def openapi_view(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])


SUBMIT_HELP = (
    "The task as a JSON body. The query-parameter form, agent_type / description / task_id as "
    "query parameters and no body, is still taken from callers that send a bearer token "
    "(a cross-site form cannot); it is not described here. A task id starting with 'seq-' "
    "is refused: those are the ids of tasks published without one. The token needs scope "
    "submit or submit:<agent_type>."
)

EVENTS_HELP = (
    "Server-Sent Events when asked for with Accept: text/event-stream: one frame per task "
    "lifecycle or heal event (event: its kind, id: its AGENT_EVENTS sequence, data: the event), "
    "keep-alive comments, at most FOUNDRY_GATEWAY_MAX_WAIT seconds per connection; reconnect "
    "with Last-Event-ID to get what was missed first. A client that falls FOUNDRY_SSE_BUFFER "
    "frames behind is cut off. Without that Accept header: the events after Last-Event-ID "
    "(else the newest 100) as JSON."
)
STREAM_HELP = (
    "Server-Sent Events when asked for with Accept: text/event-stream: event: output per "
    "chunk (id: <attempt>:<seq>; data: attempt, seq, stream, data), stored chunks first, "
    "then live ones; a chunk of a later attempt voids the earlier attempt's output; then one "
    "event: end with the task's record. Without that Accept header: the record with the "
    "stored output as JSON."
)
PAGE_HELP = "The status page (no data in it; its API calls need a token). Public."
EVENTS_BODY = {"type": "object", "required": ["events", "count", "last_event_id"]}
STREAM_BODY = {"type": "object", "required": ["task_id", "status", "output"]}


def _page_route(path: str, operation_id: str, media_type: str) -> Route:
    return Route("GET", path, page.asset, None, operation_id, PAGE_HELP,
                 (Answer(200, "The file", {"type": "string"}, media_type),))  # fmt: skip


ROUTES: tuple[Route, ...] = (
    Route("GET", "/health", cluster.health, None, "health", "Up or down (NATS and Redis)",
          (Answer(200, "NATS and Redis reachable", ref("Health")),
           Answer(503, "NATS or Redis unreachable", ref("Health"))),
          description="Open to anyone; a caller whose token allows read is told which "
                      "connection is down and whether the healer runs."),
    Route("POST", "/api/cluster/task/submit", tasks.submit, SUBMIT, "submitTask",
          "Submit a task; a retried submission with the same task_id runs once",
          (Answer(202, "Accepted", SUBMITTED), *errors(400, 413, 415, 429, 503)),
          body=submit_body, description=SUBMIT_HELP),
    Route("GET", "/api/cluster/task/{task_id}", tasks.get_task, READ, "getTask",
          "Status and result of a task; ?wait=seconds long-polls until it is final",
          (Answer(200, "The task", ref("Task")), *errors(400, 404, 503)),
          params=(tasks.TASK_ID, tasks.WAIT)),
    Route("POST", "/api/cluster/task/{task_id}/cancel", control_routes.cancel, OPERATE,
          "cancelTask",
          "Cancel a task: at once if it has not started, else its worker stops it (audited)",
          (Answer(202, "Cancelled, or being stopped", ref("Cancelled")),
           *errors(400, 404, 409, 415, 502, 503)),
          params=(control_routes.TASK_ID,),
          description="409 when the task already completed, failed or died (the answer "
                      "names its status); cancelling a cancelled task answers 202 again."),
    Route("GET", "/api/cluster/dead", deadletters.list_dead, READ, "deadLetters",
          "Dead letters in AGENT_DEAD, newest first, each with the task it was replayed as",
          (Answer(200, "Dead letters", ref("DeadLetters")), *errors(400, 503)),
          params=(deadletters.LIMIT, deadletters.OFFSET, *deadletters.FILTER_PARAMS)),
    Route("POST", "/api/cluster/dead/replay", replay.replay_many, OPERATE, "replayDeadLetters",
          "Replay every matching dead letter not replayed yet (dry_run=1: count, change nothing)",
          (Answer(200, "Dry run: what would be replayed", ref("ReplayedMany")),
           Answer(202, "Replayed", ref("ReplayedMany")), *errors(400, 415, 429, 503)),
          params=(replay.BULK_LIMIT, replay.DRY_RUN, *deadletters.FILTER_PARAMS)),
    Route("POST", "/api/cluster/dead/{task_id}/replay", replay.replay_one, OPERATE,
          "replayDeadLetter",
          "Run a dead task again as <task_id>.replay-<n>, with a fresh attempt count (audited)",
          (Answer(202, "Published again", ref("Replayed")),
           *errors(400, 404, 409, 415, 429, 503)),
          params=(replay.DEAD_TASK_ID,),
          description="The newest dead letter of that task id is replayed. 409 when it was "
                      "replayed already (the answer names new_task_id) or its agent type is "
                      "not in FOUNDRY_FLEET."),
    Route("GET", "/api/cluster/status", cluster.status, READ, "clusterStatus",
          "Cluster totals, per-type health, queues, host",
          (Answer(200, "Status", ref("Status")), *errors())),
    Route("GET", "/api/cluster/agents/live", cluster.agents_live, READ, "liveAgents",
          "Workers seen in heartbeats, merged with the healer's slots",
          (Answer(200, "Workers", ref("Agents")), *errors())),
    Route("POST", "/api/cluster/heal", heal.heal_now, OPERATE, "healNow",
          "Relaunch anything dead or silent now (an audit event names the token)",
          (Answer(200, "What was healed", ref("Healed")), *errors(400, 415, 502, 503))),
    Route("GET", "/api/cluster/heal/history", heal.history, READ, "healHistory",
          "Heal events (relaunch, kill_silent, quarantine, release, poison, dead_letter, "
          "remediate, audit), newest first",
          (Answer(200, "Events", ref("History")), *errors(400, 503)),
          params=(heal.LIMIT, heal.OFFSET)),
    Route("POST", "/api/cluster/workers/{worker_id}/release", heal.release, OPERATE,
          "releaseWorker",
          "Release a quarantined worker slot (an audit event names the token)",
          (Answer(200, "Released", ref("Released")),
           *errors(400, 404, 409, 415, 502, 503)),
          params=(heal.WORKER_ID,)),
    Route("GET", "/api/cluster/events", events.events, READ, "clusterEvents",
          "Task lifecycle and heal events, live (SSE), filtered by agent_type, kind, task_id, host",
          (Answer(200, "Events (JSON form; SSE with Accept: text/event-stream)", EVENTS_BODY),
           *errors(400, 503)),
          params=events.PARAMS, description=EVENTS_HELP),
    Route("GET", "/api/cluster/task/{task_id}/stream", stream.task_stream, READ, "streamTask",
          "A task's output as it is emitted (SSE), then its final status",
          (Answer(200, "Output (JSON form; SSE with Accept: text/event-stream)", STREAM_BODY),
           *errors(400, 404, 503)),
          params=(tasks.TASK_ID, stream.RESUME), description=STREAM_HELP),
    _page_route("/", "statusPage", "text/html"),
    _page_route("/static/app.js", "statusPageScript", "text/javascript"),
    _page_route("/static/hosts.js", "statusPageHostsScript", "text/javascript"),
    _page_route("/static/style.css", "statusPageStyle", "text/css"),
    Route("POST", "/api/cluster/workflows", workflows.start, SUBMIT, "startWorkflow",
          "Start a workflow (scope submit: its steps are tasks of several types); a retried "
          "start with the same workflow_id starts one",
          (Answer(202, "Started", workflows.STARTED), *errors(400, 404, 409, 415, 502, 503)),
          body=workflows.START_BODY,
          description="404 when no definition has that name; 400 when the input lacks what "
                      "the definition requires; 503 while no orchestrator leads."),
    Route("GET", "/api/cluster/workflows/{workflow_id}", workflows.get, READ, "getWorkflow",
          "A workflow: status, round, every step run with its task, timings and result; "
          "?wait=seconds long-polls until it is finished or waits for approval",
          (Answer(200, "The workflow", workflows.WORKFLOW), *errors(400, 404, 502, 503)),
          params=(workflows.WORKFLOW_ID, workflows.WAIT)),
    Route("POST", "/api/cluster/workflows/{workflow_id}/cancel", workflows.cancel, OPERATE,
          "cancelWorkflow", "Cancel a workflow and its running steps (an audit event names "
          "the token)",
          (Answer(200, "Cancelled", workflows.CANCELLED),
           *errors(400, 404, 409, 415, 502, 503)),
          params=(workflows.WORKFLOW_ID,)),
    Route("POST", "/api/cluster/workflows/{workflow_id}/approve", workflows.approve, OPERATE,
          "approveWorkflow", "Approve the step that waits for a person (an audit event names "
          "the token)",
          (Answer(200, "Approved", workflows.APPROVED), *errors(400, 404, 409, 415, 502, 503)),
          params=(workflows.WORKFLOW_ID,), body=workflows.APPROVE_BODY),
    Route("GET", "/api/openapi.json", openapi_view, READ, "openapi", "This document",
          (Answer(200, "OpenAPI 3.1", {"type": "object"}), *errors())),
    Route("GET", "/metrics", metrics_view, METRICS, "metrics",
          "Prometheus metrics of the gateway (scope metrics, or read)",
          (Answer(200, "Prometheus text format", {"type": "string"}, "text/plain"),
           *errors())),
)  # fmt: skip


def scope_table() -> dict[tuple[str, str], str | None]:
    """(method, path pattern) → the scope it needs (None: public)."""
    return {(r.method, r.path): r.scope for r in ROUTES}


def add_routes(app: web.Application) -> None:
    for route in ROUTES:
        app.router.add_route(route.method, route.router_path(), route.handler)
