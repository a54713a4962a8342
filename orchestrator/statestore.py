"""Workflow state in the JetStream KV bucket ``names.workflow_bucket``: one key per workflow.

Every write names the revision it replaces (``Nats-Expected-Last-Subject-Sequence``;
0 for a new key), so a write based on a stale read fails with
:class:`StateConflict` instead of undoing someone else's change. Reads are direct
gets of the key's last message. The keys are listed from the stream's subjects.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError

from foundry.contracts import MessageRejected
from foundry.contracts.workflow import WorkflowState
from foundry.lease import WRONG_LAST_SEQUENCE
from foundry.names import Names
from foundry.rejections import REJECTIONS
from orchestrator.errors import StateConflict

log = logging.getLogger(__name__)
TIMEOUT = 3.0


class StateStore:
    def __init__(self, js: JetStreamContext, names: Names) -> None:
        self.js = js
        self.bucket = names.workflow_bucket
        self.stream = names.kv_stream(self.bucket)
        self.prefix = f"$KV.{self.bucket}."

    async def get(self, workflow_id: str) -> tuple[WorkflowState, int] | None:
        """The state and its revision, or None (never started, expired, or unreadable)."""
        try:
            msg = await self.js.get_msg(self.stream, subject=self.prefix + workflow_id, direct=True)
        except NotFoundError:
            return None
        try:
            return WorkflowState.from_payload(msg.data or b""), int(msg.seq or 0)
        except MessageRejected as exc:
            REJECTIONS.rejected(exc, msg.subject or "")
            return None

    async def _write(self, state: WorkflowState, last: int) -> int:
        headers = {"Nats-Expected-Last-Subject-Sequence": str(last)}
        subject = self.prefix + state.workflow_id
        try:
            ack = await self.js.publish(
                subject, state.to_payload(), headers=headers, timeout=TIMEOUT
            )
        except APIError as exc:
            if exc.err_code in WRONG_LAST_SEQUENCE:
                raise StateConflict(f"workflow {state.workflow_id} changed meanwhile") from None
            raise
        return int(ack.seq)

    async def create(self, state: WorkflowState) -> int:
        """Store a new workflow; StateConflict when its id is taken."""
        return await self._write(state, 0)

    async def update(self, state: WorkflowState, revision: int) -> int:
        """Replace revision ``revision``; returns the new revision."""
        return await self._write(state, revision)

    async def ids(self) -> list[str]:
        """Every workflow id in the bucket."""
        info = await self.js.stream_info(self.stream, subjects_filter=self.prefix + ">")
        subjects = info.state.subjects or {}
        return sorted(s[len(self.prefix) :] for s in subjects)
