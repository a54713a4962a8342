"""Task control over HTTP: cancel a task (the healer decides, over ``agents.control.cancel``).

A task that has not started is cancelled at once (``cancelled``); a running one
is marked and its worker stops it (``cancelling``; its record ends
``cancelled``). Cancelling a task that is already cancelled answers the same
202 (``already``: a retried cancel is not an error); a task that finished
otherwise is a 409 naming its status, an unknown one a 404.
"""

from __future__ import annotations

from aiohttp import web

from foundry.contracts import TASK_ID_HINT, TASK_ID_RE, TaskStatus, valid_task_id
from gateway.audit import audited
from gateway.errors import ApiError, bad_request
from gateway.heal import control
from gateway.jsonio import json_response
from gateway.spec import Param

TASK_ID = Param(
    "task_id",
    "path",
    {"type": "string", "pattern": TASK_ID_RE.pattern},
    f"The task to cancel: {TASK_ID_HINT}",
)


@audited("cancel", "task_id")
async def cancel(request: web.Request) -> web.Response:
    """POST /api/cluster/task/{task_id}/cancel → 202 {"task_id", "status"}"""
    task_id = request.match_info["task_id"]
    if not valid_task_id(task_id):
        raise bad_request(f"task_id must be {TASK_ID_HINT}", "task_id")
    try:
        out = await control(request, "cancel", {"task_id": task_id})
    except ApiError as exc:
        if exc.status_code == 404:
            raise ApiError(
                404,
                "not_found",
                f"no task {task_id!r}: it was never submitted, or its record expired "
                "(FOUNDRY_RESULT_TTL)",
                task_id=task_id,
            ) from None
        if exc.status_code == 409:
            status = str(exc.extra.get("status"))
            if status == TaskStatus.CANCELLED:
                body = {"task_id": task_id, "status": TaskStatus.CANCELLED, "already": True}
                return json_response(body, status=202)
            raise ApiError(
                409,
                "already_final",
                f"task {task_id!r} is already {status}: nothing to cancel",
                task_id=task_id,
                status=status,
            ) from None
        raise
    body = {"task_id": task_id, "status": out.get("status"), "already": False}
    return json_response(body, status=202)
