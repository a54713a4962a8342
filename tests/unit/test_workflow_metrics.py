"""Workflow events become the monitor's metrics: events by kind, unfinished workflows by
status, step durations by agent type, orchestration overhead; bad events are rejected."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from foundry.contracts import MessageRejected
from foundry.contracts.workflow import (
    StepStatus,
    WorkflowEvent,
    WorkflowEventKind,
    WorkflowStatus,
)
from monitor.events import EventMetrics
from monitor.labels import AgentTypes


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    got = registry.get_sample_value(name, labels)
    assert got is not None, (name, labels)
    return got


def event(kind: WorkflowEventKind, **fields: object) -> WorkflowEvent:
    sent = WorkflowEvent(kind, "wf-1", "build", WorkflowStatus.RUNNING, **fields)  # type: ignore[arg-type]
    return WorkflowEvent.from_payload(sent.to_payload())  # as the monitor receives it


def test_workflow_events_feed_counters_gauges_and_histograms() -> None:
    registry = CollectorRegistry()
    metrics = EventMetrics(registry, AgentTypes(["coder"]))
    assert value(registry, "foundry_workflows", status="running") == 0
    metrics.on_workflow_event(event(WorkflowEventKind.STARTED, active={"running": 2}))
    metrics.on_workflow_event(
        event(WorkflowEventKind.STEP_STARTED, step="code", agent_type="coder",
              overhead_seconds=0.004, active={"running": 2, "waiting_approval": 1})
    )  # fmt: skip
    metrics.on_workflow_event(
        event(WorkflowEventKind.STEP_FINISHED, step="code", agent_type="coder",
              step_status=StepStatus.COMPLETED, duration_seconds=1.5, active={"running": 1})
    )  # fmt: skip
    assert value(registry, "foundry_workflow_events_total", event="started") == 1
    assert value(registry, "foundry_workflows", status="running") == 1
    assert value(registry, "foundry_workflows", status="waiting_approval") == 0
    assert value(registry, "foundry_workflow_step_seconds_sum", agent_type="coder") == 1.5
    assert value(registry, "foundry_workflow_step_overhead_seconds_count") == 1


def test_a_malformed_workflow_event_is_rejected() -> None:
    with pytest.raises(MessageRejected) as caught:
        WorkflowEvent.from_payload(b'{"event": "exploded", "workflow_id": "wf-1"}')
    assert caught.value.reason == "enum"
