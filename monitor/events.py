"""Task and heal events turned into counters: submissions, dead letters, replays, relaunches,
remediation.

Events arrive on core NATS subscriptions (the same messages the AGENT_EVENTS
stream stores). A monitor restart starts these counters from zero, which
Prometheus' ``rate``/``increase`` treat as an ordinary counter reset. Label
values come from fixed lists (anything else becomes ``other``) or from the
admitted agent types, never from task or worker ids.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from foundry.contracts import HealAction, HealEvent, RelaunchReason, SlotKind, TaskStatus, values
from foundry.contracts.workflow import STATUS_COUNTS, WorkflowEvent, WorkflowEventKind
from monitor.labels import OTHER, AgentTypes, one_of

log = logging.getLogger(__name__)

HEAL_ACTIONS = values(HealAction)
RELAUNCH_REASONS = values(RelaunchReason)
POLICIES = ("disk", "memory", "cpu", "reachability")  # the healer's remediation policies
OUTCOMES = ("done", "dry_run", "failed", "skipped")
SERVICE_SLOTS = ("gateway", "monitor", "orchestrator", "nats-server", "redis-server")
DETECT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0)
WORKFLOW_EVENTS = values(WorkflowEventKind)
STEP_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)


class EventMetrics:
    """Counters fed by ``<root>.events.task.{queued,dead}.*`` and ``<root>.events.heal.*``."""

    def __init__(self, registry: CollectorRegistry, types: AgentTypes) -> None:
        self.types = types
        self.submitted = Counter(
            "foundry_tasks_submitted", "Tasks accepted by the gateway (task.queued events).",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.dead = Counter(
            "foundry_tasks_dead", "Tasks moved to the dead letter stream (task.dead events).",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.cancelled = Counter(
            "foundry_tasks_cancelled", "Tasks cancelled by request (task.cancelled events).",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.replayed = Counter(
            "foundry_dead_letters_replayed",
            "Dead letters published again as new tasks (task.queued events with replay_of).",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.heal = Counter(
            "foundry_heal_events", "Heal events by action.", ["action"], registry=registry
        )
        self.relaunches = Counter(
            "foundry_relaunches", "Worker relaunches by agent type and reason.",
            ["agent_type", "reason"], registry=registry,
        )  # fmt: skip
        self.detect = Histogram(
            "foundry_relaunch_detect_seconds",
            "Time from a worker failing to the healer noticing, by relaunch reason.",
            ["reason"], buckets=DETECT_BUCKETS, registry=registry,
        )  # fmt: skip
        self.silent_kills = Counter(
            "foundry_silent_kills", "Silent (hung) workers the healer killed.",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.quarantines = Counter(
            "foundry_quarantines", "Slots quarantined for crash looping.",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.quarantined = Gauge(
            "foundry_slots_quarantined", "Slots in quarantine now (since the monitor started).",
            ["agent_type"], registry=registry,
        )  # fmt: skip
        self.remediations = Counter(
            "foundry_remediations", "Host remediation actions by policy and outcome.",
            ["policy", "outcome"], registry=registry,
        )  # fmt: skip
        self.workflow_events = Counter(
            "foundry_workflow_events", "Workflow events by kind (started, completed, failed …).",
            ["event"], registry=registry,
        )  # fmt: skip
        self.workflows = Gauge(
            "foundry_workflows", "Unfinished workflows by status, as the leading orchestrator "
            "last reported them.", ["status"], registry=registry,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "foundry_workflow_step_seconds", "How long workflow steps ran, by agent type.",
            ["agent_type"], buckets=STEP_BUCKETS, registry=registry,
        )  # fmt: skip
        self.step_overhead = Histogram(
            "foundry_workflow_step_overhead_seconds",
            "From the steps a workflow step waited for finishing to its task being submitted.",
            buckets=OVERHEAD_BUCKETS, registry=registry,
        )  # fmt: skip
        for kind in WORKFLOW_EVENTS:
            self.workflow_events.labels(kind)
        for status in STATUS_COUNTS:
            self.workflows.labels(status).set(0)
        self._quarantined_slots: dict[str, str] = {}
        for agent_type in types.known:
            self._init_type(agent_type)
        for action in HEAL_ACTIONS:
            self.heal.labels(action)
        for reason in RELAUNCH_REASONS:
            self.detect.labels(reason)
        for policy in POLICIES:
            for outcome in OUTCOMES:
                self.remediations.labels(policy, outcome)

    def _init_type(self, agent_type: str) -> None:
        """Series exist from the start (at zero), so alerts and panels see every type."""
        self.submitted.labels(agent_type)
        self.dead.labels(agent_type)
        self.cancelled.labels(agent_type)
        self.replayed.labels(agent_type)
        self.silent_kills.labels(agent_type)
        self.quarantines.labels(agent_type)
        self.quarantined.labels(agent_type).set(0)
        for reason in RELAUNCH_REASONS:
            self.relaunches.labels(agent_type, reason)
        self.step_seconds.labels(agent_type)

    def _type(self, value: object) -> str | None:
        before = len(self.types.known)
        agent_type = self.types.admit(value)
        if agent_type is not None and len(self.types.known) != before:
            self._init_type(agent_type)
        return agent_type

    # ---- task events -----------------------------------------------------------------
    def on_task_event(self, status: str, agent_type: str, replay: bool = False) -> None:
        """A ``task.<status>`` event for ``agent_type`` (from the subject's last token);
        ``replay``: a queued event that names the dead letter it replays."""
        checked = self._type(agent_type)
        if checked is None:
            return
        if status == TaskStatus.QUEUED:
            self.submitted.labels(checked).inc()
            if replay:
                self.replayed.labels(checked).inc()
        elif status == TaskStatus.DEAD:
            self.dead.labels(checked).inc()
        elif status == TaskStatus.CANCELLED:
            self.cancelled.labels(checked).inc()

    # ---- workflow events -------------------------------------------------------------
    def on_workflow_event(self, event: WorkflowEvent) -> None:
        """A validated ``workflow.<kind>`` event."""
        self.workflow_events.labels(event.kind.value).inc()
        for status in STATUS_COUNTS:
            self.workflows.labels(status).set(event.active.get(status, 0))
        if event.kind is WorkflowEventKind.STEP_STARTED and event.overhead_seconds is not None:
            self.step_overhead.observe(event.overhead_seconds)
        if event.kind is WorkflowEventKind.STEP_FINISHED and event.duration_seconds is not None:
            agent_type = self._type(event.agent_type)
            if agent_type is not None:
                self.step_seconds.labels(agent_type).observe(event.duration_seconds)

    # ---- heal events -----------------------------------------------------------------
    def on_heal_event(self, event: HealEvent) -> None:
        """A validated ``heal.<action>`` event."""
        action = event.action
        self.heal.labels(action.value).inc()
        if action is HealAction.REMEDIATE:
            policy = one_of(event.text("policy"), POLICIES)
            self.remediations.labels(policy, one_of(event.text("outcome"), OUTCOMES)).inc()
            return
        if event.slot_kind not in (None, SlotKind.WORKER):
            # A supervised service or server: labelled by its slot, kept out of the agent types.
            agent_type: str | None = one_of(event.slot, SERVICE_SLOTS)
        else:
            agent_type = self._type(event.agent_type)
        if agent_type is None:
            return
        if action is HealAction.RELAUNCH:
            reason = one_of(event.reason, RELAUNCH_REASONS)
            self.relaunches.labels(agent_type, reason).inc()
            detect = event.number("detect_seconds")
            if detect is not None:
                self.detect.labels(reason).observe(detect)
        elif action is HealAction.KILL_SILENT:
            self.silent_kills.labels(agent_type).inc()
        elif action is HealAction.QUARANTINE:
            self.quarantines.labels(agent_type).inc()
            self._quarantined_slots[event.slot or OTHER] = agent_type
            self._refresh_quarantined()
        elif action is HealAction.RELEASE:
            self._quarantined_slots.pop(event.slot or OTHER, None)
            self._refresh_quarantined()

    def _refresh_quarantined(self) -> None:
        counts = dict.fromkeys(self.types.known, 0)
        for agent_type in self._quarantined_slots.values():
            counts[agent_type] = counts.get(agent_type, 0) + 1
        for agent_type, n in counts.items():
            self.quarantined.labels(agent_type).set(n)

    def quarantined_slots(self) -> Iterable[str]:
        return sorted(self._quarantined_slots)
