"""Requests on ``agents.workflows.<verb>``: start, get, cancel, approve.

Each request is read with :class:`WorkflowRequest` and answered with a
:class:`ControlReply`: a body on success, else ``error`` and ``code``
(``bad_request``: the request or the input is wrong; ``not_found``: no such
workflow or definition; ``conflict``: the workflow's state does not allow it;
``internal``: something failed here). Every orchestrator answers ``get`` (it
reads the bucket); only the leader listens for the others.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from foundry.contracts import ControlReply, MessageRejected
from foundry.contracts.workflow import WorkflowRequest, WorkflowVerb
from foundry.rejections import REJECTIONS
from orchestrator.errors import StateConflict, WorkflowConflict, WorkflowInputError

if TYPE_CHECKING:
    from orchestrator.service import Orchestrator

log = logging.getLogger(__name__)
Handler = Callable[[WorkflowRequest], Awaitable[ControlReply]]


def new_workflow_id() -> str:
    return f"wf-{uuid.uuid4().hex[:16]}"


class Control:
    def __init__(self, orchestrator: Orchestrator) -> None:
        self.o = orchestrator
        self.handlers: dict[WorkflowVerb, Handler] = {
            WorkflowVerb.START: self.start,
            WorkflowVerb.GET: self.get,
            WorkflowVerb.CANCEL: self.cancel,
            WorkflowVerb.APPROVE: self.approve,
        }

    def callback(self, verb: WorkflowVerb) -> Callable[[Msg], Awaitable[None]]:
        async def handle(msg: Msg) -> None:
            try:
                request = WorkflowRequest.from_payload(verb, msg.data)
                reply = await self.handlers[verb](request)
            except MessageRejected as exc:
                REJECTIONS.rejected(exc, msg.subject)
                reply = ControlReply.failure("bad_request", f"bad request: {exc.detail}")
            except Exception as exc:
                log.exception("workflow %s failed", verb)
                reply = ControlReply.failure("internal", f"{type(exc).__name__}: {exc}")
            if msg.reply:
                await msg.respond(reply.to_payload())

        return handle

    async def start(self, request: WorkflowRequest) -> ControlReply:
        name = request.workflow or ""
        engine = self.o.engines.get(name)
        if engine is None:
            known = ", ".join(sorted(self.o.engines))
            return ControlReply.failure(
                "not_found", f"no workflow named {name!r}; known: {known}", workflow=name
            )
        workflow_id = request.workflow_id or new_workflow_id()
        try:
            state, duplicate = await self.o.start(
                engine, workflow_id, request.input or {}, request.submitted_by
            )
        except WorkflowInputError as exc:
            return ControlReply.failure("bad_request", str(exc), field="input")
        if state.workflow != name:
            return ControlReply.failure(
                "conflict",
                f"workflow id {workflow_id!r} is taken by a {state.workflow!r} workflow",
                workflow_id=workflow_id,
                status=state.status,
            )
        return ControlReply(
            {
                "workflow_id": workflow_id,
                "workflow": state.workflow,
                "status": state.status,
                "duplicate": duplicate,
            }
        )

    async def get(self, request: WorkflowRequest) -> ControlReply:
        entry = await self.o.states.get(request.workflow_id or "")
        if entry is None:
            return self._missing(request)
        # nested: a state has its own "error" field, which a reply uses to mean failure
        return ControlReply({"state": entry[0].to_json()})

    async def cancel(self, request: WorkflowRequest) -> ControlReply:
        workflow_id = request.workflow_id or ""
        try:
            state = await self.o.change(workflow_id, lambda e, s: e.cancel(s, time.time()))
        except KeyError:
            return self._missing(request)
        except WorkflowConflict as exc:
            return ControlReply.failure("conflict", str(exc), workflow_id=workflow_id)
        except StateConflict as exc:
            return ControlReply.failure("internal", str(exc))
        cancelled = [r.key for r in state.runs.values() if r.status == "cancelled"]
        return ControlReply(
            {"workflow_id": workflow_id, "status": state.status, "cancelled_steps": cancelled}
        )

    async def approve(self, request: WorkflowRequest) -> ControlReply:
        workflow_id = request.workflow_id or ""
        by, comment = request.submitted_by, request.comment
        try:
            state = await self.o.change(
                workflow_id, lambda e, s: e.approve(s, by, comment, time.time())
            )
        except KeyError:
            return self._missing(request)
        except WorkflowConflict as exc:
            return ControlReply.failure("conflict", str(exc), workflow_id=workflow_id)
        return ControlReply({"workflow_id": workflow_id, "status": state.status})

    @staticmethod
    def _missing(request: WorkflowRequest) -> ControlReply:
        return ControlReply.failure(
            "not_found",
            f"no workflow {request.workflow_id!r} (never started, or its record expired)",
            workflow_id=request.workflow_id,
        )
