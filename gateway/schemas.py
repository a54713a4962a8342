"""JSON Schemas of the gateway's bodies, as the handlers produce and accept them."""

from __future__ import annotations

from typing import Any

from foundry.contracts import TASK_ID_RE, DeadLetterAction, TaskPriority, TaskStatus, values
from foundry.settings import Settings
from gateway.spec import Schema

STATUSES = values(TaskStatus)
PRIORITIES = values(TaskPriority)

STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer"}
BOOL: Schema = {"type": "boolean"}
ANY: Schema = {}
OBJECT: Schema = {"type": "object"}
OPT_STR: Schema = {"type": ["string", "null"]}
OPT_NUM: Schema = {"type": ["number", "null"]}
# An id an HTTP submit may choose: a task id (foundry.contracts) not starting with "seq-",
# which ids derived from stream sequences use, and not "submit" (a route).
SUBMIT_TASK_ID: Schema = {
    "type": ["string", "null"],
    "description": "absent or null: the gateway picks one (returned in the answer)",
    "pattern": "^(?!seq-)(?!submit$)" + TASK_ID_RE.pattern[1:],
}


# A character str.strip() keeps, spelt out: JSON Schema's \s (ECMA-262) is another set.
NON_BLANK = "[^" + "".join(f"\\u{c:04x}" for c in range(0x3001) if chr(c).isspace()) + "]"


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] = (), **props: Any) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    return out


def submit_body(settings: Settings) -> Schema:
    """The task a POST submit takes: the fleet's agent types; a description or an input."""
    body = obj(
        ("agent_type",),
        agent_type={"enum": list(settings.fleet), "description": "one of FOUNDRY_FLEET's types"},
        description=STR,
        input={"description": "any JSON value; null counts as no input"},
        task_id=SUBMIT_TASK_ID,
        priority={
            "enum": [*PRIORITIES, None],
            "default": TaskPriority.NORMAL.value,
            "description": "high is taken before normal, normal before low (per type)",
        },
        delay={
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": settings.max_delay,
            "description": "seconds from now before the task may start (FOUNDRY_MAX_DELAY "
            "at most); not with not_before",
        },
        # JSON Schema cannot bound a time by the clock: the gateway refuses one more than
        # FOUNDRY_MAX_DELAY ahead (400, field not_before).
        not_before={
            "type": ["number", "null"],
            "description": "Unix time before which the task does not start (at most "
            "FOUNDRY_MAX_DELAY ahead; a past time: at once); not with delay",
        },
    )
    body["additionalProperties"] = False
    body["not"] = {
        "required": ["delay", "not_before"],
        "properties": {"delay": {"type": "number"}, "not_before": {"type": "number"}},
    }
    body["anyOf"] = [
        {"required": ["description"], "properties": {"description": {"pattern": NON_BLANK}}},
        {"required": ["input"], "properties": {"input": {"not": {"type": "null"}}}},
    ]
    return body


SUBMITTED = obj(
    ("task_id", "agent_type", "status", "duplicate"),
    task_id=STR,
    agent_type=STR,
    status={"const": "submitted"},
    duplicate=BOOL,
    task_status={"enum": list(STATUSES), "description": "present for a known task id"},
    priority={"enum": list(PRIORITIES)},
    not_before={"type": "number", "description": "present for a delayed task"},
)

COMPONENTS: dict[str, Schema] = {
    "Error": {
        **obj(("error", "message"), error=STR, message=STR, field=STR, scope=OPT_STR),
        "description": "Every 4xx/5xx; more fields name what was wrong (worker_id, service …)",
    },
    "Health": obj(
        ("status",),
        status={"enum": ["healthy", "unhealthy"]},
        cluster_initialized=BOOL,
        infrastructure_agent={"enum": ["running", "not running"]},
        nats={"enum": ["connected", "unreachable"]},
        redis={"enum": ["connected", "unreachable"]},
        message=STR,
    ),
    "Task": obj(
        ("task_id", "status"),
        task_id=STR,
        agent_type=OPT_STR,
        status={"enum": list(STATUSES)},
        result=ANY,
        error=OPT_STR,
        attempts={"type": ["integer", "null"]},
        worker_id=OPT_STR,
        submitted_at=OPT_NUM,
        started_at=OPT_NUM,
        finished_at=OPT_NUM,
        duration_seconds=OPT_NUM,
        replay_of={**OPT_STR, "description": "the dead task this task replays"},
        replayed_as={**OPT_STR, "description": "the task this dead task was last replayed as"},
        not_before={**OPT_NUM, "description": "a delayed task: not started before"},
    ),
    "Status": obj(
        ("total_workers", "healthy_workers", "unhealthy_workers", "agent_types", "queues"),
        total_workers=INT,
        healthy_workers=INT,
        unhealthy_workers=INT,
        quarantined_workers=INT,
        agent_types={"type": "object", "additionalProperties": OBJECT},
        queues={"type": "object", "additionalProperties": OBJECT},
        healer={"enum": ["running", "not running"]},
        host={"type": ["object", "null"]},
        hosts={
            "type": "object",
            "additionalProperties": OBJECT,
            "description": "per host id: its workers' totals, healer, leader, host sample",
        },
        leader={**OPT_STR, "description": "the host whose healer does cluster-wide duties"},
        remediation=ANY,
        nats={"enum": ["connected", "unreachable"]},
        redis={"enum": ["connected", "unreachable"]},
    ),
    "Agents": obj(
        ("agents", "count"),
        agents={"type": "array", "items": OBJECT},
        count=INT,
        hosts={
            "type": "object",
            "additionalProperties": {"type": "array", "items": STR},
            "description": "per host id: its worker ids",
        },
    ),
    "Healed": obj(
        ("healed_workers", "count", "message"),
        healed_workers={"type": "array", "items": STR},
        count=INT,
        message=STR,
        quarantined={"type": "array", "items": STR},
        hosts={
            "type": "object",
            "additionalProperties": STR,
            "description": "per host: its answer",
        },
    ),
    "History": obj(
        ("events", "count", "offset", "total"),
        events={"type": "array", "items": OBJECT},
        count=INT,
        offset=INT,
        total=INT,
    ),
    "Released": obj(("released", "worker_id"), released={"const": True}, worker_id=STR, state=STR),
    "Cancelled": obj(
        ("task_id", "status", "already"),
        task_id=STR,
        status={"enum": ["cancelled", "cancelling"]},
        already={**BOOL, "description": "it was cancelled before this request"},
    ),
    "DeadLetter": obj(
        ("task_id", "agent_type", "dead_seq", "dead_at", "action", "reason", "replayed_as"),
        task_id=STR,
        agent_type=STR,
        dead_seq={**INT, "description": "the letter's sequence in AGENT_DEAD"},
        dead_at={"type": "number", "description": "Unix time the letter was stored"},
        action={"enum": list(values(DeadLetterAction))},
        reason=STR,
        task_seq={**INT, "description": "the task's sequence in AGENT_TASKS"},
        evidence={"type": "array", "items": OBJECT},
        payload={**STR, "description": "the task's payload (its first 1024 characters)"},
        payload_chars=INT,
        replayed_as=OPT_STR,
    ),
    "DeadLetters": obj(
        ("dead_letters", "count", "offset", "total", "scanned", "truncated"),
        dead_letters={"type": "array", "items": ref("DeadLetter")},
        count=INT,
        offset=INT,
        total={**INT, "description": "letters matching the filters among those scanned"},
        scanned=INT,
        truncated={**BOOL, "description": "the scan stopped at its bound before the end"},
        filters=OBJECT,
    ),
    "Replayed": obj(
        ("task_id", "new_task_id", "agent_type", "status"),
        task_id=STR,
        new_task_id={**STR, "description": "<task_id stem>.replay-<n>"},
        agent_type=STR,
        dead_seq=INT,
        status={"const": "queued"},
    ),
    "ReplayedMany": obj(
        ("dry_run", "count", "letters", "already_replayed", "more"),
        dry_run=BOOL,
        count=INT,
        letters={
            "type": "array",
            "items": obj(("task_id", "dead_seq"), task_id=STR, dead_seq=INT, new_task_id=STR),
        },
        already_replayed=INT,
        not_in_fleet=INT,
        more={**BOOL, "description": "stopped at limit: more letters may match"},
        scanned=INT,
        truncated=BOOL,
        filters=OBJECT,
    ),
}
