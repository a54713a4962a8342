"""Subject, stream, consumer and Redis key names, and agent type validation.

Everything lives under an optional namespace so that several clusters (or
several tests) can share one NATS server and one Redis without seeing each
other. The default namespace is empty: subjects start with ``agents.``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from foundry.errors import InvalidAgentType

AGENT_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
AGENT_TYPE_HINT = (
    "an agent type is 1-32 characters: a lowercase letter, then lowercase letters, "
    "digits, '_' or '-' (no dots, spaces, '*' or '>')"
)


def validate_agent_type(value: object) -> str:
    """Return ``value`` if it is a valid agent type, else raise InvalidAgentType."""
    if not isinstance(value, str) or not AGENT_TYPE_RE.fullmatch(value):
        shown = value if not isinstance(value, str) else value[:40]
        raise InvalidAgentType(f"invalid agent type {shown!r}: {AGENT_TYPE_HINT}")
    return value


@dataclass(frozen=True)
class Names:
    """All names for one namespace ('' is the default cluster)."""

    namespace: str = ""

    @property
    def root(self) -> str:
        return f"{self.namespace}.agents" if self.namespace else "agents"

    def _stream(self, base: str) -> str:
        if not self.namespace:
            return base
        return f"{self.namespace.upper().replace('-', '_')}_{base}"

    # streams
    @property
    def tasks_stream(self) -> str:
        return self._stream("AGENT_TASKS")

    @property
    def events_stream(self) -> str:
        return self._stream("AGENT_EVENTS")

    @property
    def dead_stream(self) -> str:
        return self._stream("AGENT_DEAD")

    # JetStream KV buckets (each is the stream KV_<bucket>)
    @property
    def workflow_bucket(self) -> str:
        return self._stream("WORKFLOWS")

    @property
    def lease_bucket(self) -> str:
        return self._stream("LEASES")

    @staticmethod
    def kv_stream(bucket: str) -> str:
        return f"KV_{bucket}"

    @staticmethod
    def kv_subject(bucket: str, key: str = ">") -> str:
        return f"$KV.{bucket}.{key}"

    # subjects
    def tasks(self, agent_type: str = "*") -> str:
        return f"{self.root}.tasks.{agent_type}"

    def heartbeat(self, agent_type: str = "*", worker_id: str = "*") -> str:
        return f"{self.root}.heartbeat.{agent_type}.{worker_id}"

    def events(self, *tokens: str) -> str:
        return ".".join((f"{self.root}.events", *tokens)) if tokens else f"{self.root}.events.>"

    def task_event(self, status: str, agent_type: str) -> str:
        return f"{self.root}.events.task.{status}.{agent_type}"

    def heal_event(self, action: str) -> str:
        return f"{self.root}.events.heal.{action}"

    def host(self, host: str = "*") -> str:
        return f"{self.root}.host.{host}"

    def control(self, *tokens: str) -> str:
        return ".".join((f"{self.root}.control", *tokens))

    def dead(self, agent_type: str = "*") -> str:
        return f"{self.root}.dead.{agent_type}"

    def output(self, agent_type: str = "*", task_id: str = ">") -> str:
        """Where a worker streams a task's output (core NATS; ids may hold dots)."""
        return f"{self.root}.output.{agent_type}.{task_id}"

    def cancel_notice(self) -> str:
        """Where the healer tells every worker to stop a task it has marked cancelled."""
        return f"{self.root}.control.cancel.notice"

    def workflows(self, verb: str = "*") -> str:
        """Requests to the orchestrator (``start``, ``get``, ``cancel``, ``approve``)."""
        return f"{self.root}.workflows.{verb}"

    def workflow_event(self, kind: str = ">") -> str:
        return f"{self.root}.events.workflow.{kind}"

    def worker_control(self, agent_type: str) -> str:
        """Subject that workers of one type listen on (e.g. concurrency changes)."""
        return f"{self.root}.control.workers.{agent_type}"

    def max_deliveries_advisory(self, agent_type: str = "*") -> str:
        consumer = self.consumer(agent_type) if agent_type != "*" else "*"
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.tasks_stream}.{consumer}"

    @staticmethod
    def consumer(agent_type: str) -> str:
        return f"workers-{agent_type}"

    @staticmethod
    def type_of_consumer(consumer: str) -> str | None:
        return consumer[len("workers-") :] if consumer.startswith("workers-") else None

    # redis keys
    @property
    def key_prefix(self) -> str:
        return f"foundry:{self.namespace}" if self.namespace else "foundry"

    def task_key(self, task_id: str) -> str:
        return f"{self.key_prefix}:task:{task_id}"

    def result_key(self, task_id: str) -> str:
        return f"{self.key_prefix}:result:{task_id}"

    def replay_marker_key(self, task_id: str) -> str:
        """Hash of a dead task id's replayed letters: AGENT_DEAD sequence → new task id."""
        return f"{self.key_prefix}:replayed:{task_id}"

    def replay_counter_key(self, stem: str) -> str:
        """The last replay number used for ids ``<stem>.replay-<n>``."""
        return f"{self.key_prefix}:replays:{stem}"

    def output_key(self, task_id: str) -> str:
        return f"{self.key_prefix}:output:{task_id}"
