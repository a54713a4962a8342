"""Replaying dead letters: one by task id, or every letter the filters match.

A replay publishes the letter's original payload again on
``agents.tasks.<type>`` under a new task id that keeps its lineage
(``foundry.replays``: ``<task_id>.replay-<n>``), so it runs as a new task with
a fresh attempt count. In a JSON payload ``task_id`` becomes the new id and
``submitted_at`` the time of the replay; a plain-text payload goes as it was
(the ``Nats-Msg-Id`` header carries the id). The claim in Redis comes first, so
a letter is replayed once however many replays race; a publish that fails
undoes the claim. The replay is announced as a ``task.queued`` event naming
``replay_of``, which the monitor counts.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from aiohttp import web

from foundry import codec
from foundry.contracts import TASK_ID_HINT, TASK_ID_RE, Task, TaskEvent, TaskStatus, valid_task_id
from foundry.errors import AlreadyReplayed, BrokerUnavailable
from foundry.replays import Claim
from gateway.audit import audited, note
from gateway.deadletters import DeadScan, Filters, Found, ledger
from gateway.errors import ApiError, bad_request
from gateway.jsonio import json_response
from gateway.keys import NC, SETTINGS
from gateway.spec import Param
from gateway.tasks import _publish as publish_task

REPLAY_MAX = 1000

DEAD_TASK_ID = Param(
    "task_id",
    "path",
    {"type": "string", "pattern": TASK_ID_RE.pattern},
    f"The dead task's id: {TASK_ID_HINT}",
)
BULK_LIMIT = Param(
    "limit",
    "query",
    {"type": "integer", "minimum": 1, "maximum": REPLAY_MAX, "default": REPLAY_MAX},
    "Replay at most this many letters in this request (more: true says it stopped there)",
)
DRY_RUN = Param(
    "dry_run",
    "query",
    {"type": "integer", "minimum": 0, "maximum": 1, "default": 0},
    "1: answer what would be replayed (count and ids) and change nothing",
)


def replayed_payload(payload: str, new_id: str, now: float) -> bytes:
    """The task to publish again: a JSON object with the new id and time, else the text."""
    with contextlib.suppress(ValueError):
        body = codec.loads(payload)
        if isinstance(body, dict):
            return codec.dumps({**body, "task_id": new_id, "submitted_at": now})
    return payload.encode()


async def replay(request: web.Request, found: Found) -> Claim:
    """Claim, publish and announce one replay; AlreadyReplayed when it was replayed before."""
    letter = found.letter
    settings = request.app[SETTINGS]
    now = time.time()
    book = ledger(request)
    claim = await book.claim(letter.task_id, found.seq, letter.agent_type, now)
    task = Task(claim.new_task_id, letter.agent_type, "", submitted_at=now)
    try:
        await publish_task(request, task, replayed_payload(letter.payload, task.task_id, now))
    except (BrokerUnavailable, ApiError):
        await book.undo(claim)
        raise
    event = TaskEvent(
        TaskStatus.QUEUED, task.task_id, task.agent_type, at=now, replay_of=letter.task_id
    )
    subject = settings.names.task_event(TaskStatus.QUEUED, task.agent_type)
    await request.app[NC].publish(subject, event.to_payload())
    return claim


def _in_fleet(request: web.Request, found: Found) -> bool:
    return found.letter.agent_type in request.app[SETTINGS].fleet


@audited("replay", "task_id")
async def replay_one(request: web.Request) -> web.Response:
    """POST /api/cluster/dead/{task_id}/replay → 202 {"task_id", "new_task_id", ...}"""
    task_id = request.match_info["task_id"]
    if not valid_task_id(task_id):
        raise bad_request(f"task_id must be {TASK_ID_HINT}", "task_id")
    newest: Found | None = None
    scan = DeadScan(request, Filters(), within=10.0)
    async with contextlib.aclosing(scan.batches()) as batches:
        async for batch in batches:
            for found in batch:
                if found.letter.task_id == task_id:
                    newest = found
    if newest is None:
        raise ApiError(404, "not_found", f"no dead letter for task {task_id!r}", task_id=task_id)
    if not _in_fleet(request, newest):
        raise ApiError(
            409,
            "not_in_fleet",
            f"agent type {newest.letter.agent_type!r} is not in FOUNDRY_FLEET: no worker "
            "would run the replay",
            task_id=task_id,
            agent_type=newest.letter.agent_type,
        )
    try:
        claim = await replay(request, newest)
    except AlreadyReplayed as exc:
        raise ApiError(
            409,
            "already_replayed",
            f"{exc}; see GET /api/cluster/task/{exc.new_task_id}",
            task_id=task_id,
            new_task_id=exc.new_task_id,
        ) from None
    note(request, new_task_id=claim.new_task_id)
    body = {
        "task_id": task_id,
        "new_task_id": claim.new_task_id,
        "agent_type": newest.letter.agent_type,
        "dead_seq": newest.seq,
        "status": TaskStatus.QUEUED,
    }
    return json_response(body, status=202)


@audited("replay_all")
async def replay_many(request: web.Request) -> web.Response:
    """POST /api/cluster/dead/replay — every matching letter not replayed yet (dry_run=1:
    count them and change nothing)."""
    filters = Filters.from_request(request)
    limit, dry_run = BULK_LIMIT.integer(request), bool(DRY_RUN.integer(request))
    chosen: list[dict[str, Any]] = []
    already = not_in_fleet = 0
    more = False
    book = ledger(request)
    scan = DeadScan(request, filters, within=30.0)
    async with contextlib.aclosing(scan.batches()) as batches:
        async for batch in batches:
            markers = await book.replayed_as((f.letter.task_id, f.seq) for f in batch)
            for found, marker in zip(batch, markers, strict=True):
                if marker is not None:
                    already += 1
                    continue
                if not _in_fleet(request, found):
                    not_in_fleet += 1
                    continue
                if len(chosen) >= limit:
                    more = True
                    break
                entry: dict[str, Any] = {"task_id": found.letter.task_id, "dead_seq": found.seq}
                if not dry_run:
                    try:
                        entry["new_task_id"] = (await replay(request, found)).new_task_id
                    except AlreadyReplayed:  # replayed by another request meanwhile
                        already += 1
                        continue
                chosen.append(entry)
            if more:
                break
    note(request, filters=filters.to_json(), dry_run=dry_run, count=len(chosen))
    return json_response(
        {
            "dry_run": dry_run,
            "count": len(chosen),
            "letters": chosen,
            "already_replayed": already,
            "not_in_fleet": not_in_fleet,
            "more": more,
            "scanned": scan.scanned,
            "truncated": scan.truncated,
            "filters": filters.to_json(),
        },
        status=200 if dry_run else 202,
    )
