"""Writes the Grafana dashboards in grafana/dashboards/ from the panel lists below.

Run ``python grafana/build_dashboards.py`` after editing; the test suite checks
the JSON files are what this script writes, that every panel's query returns
data from a real Prometheus scraping a running cluster, and that every
datasource reference is the provisioned one (uid ``foundry-prometheus``).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DS_UID = "foundry-prometheus"
DS = {"type": "prometheus", "uid": DS_UID}
SCHEMA_VERSION = 39
OUT = Path(__file__).resolve().parent / "dashboards"
T = '{agent_type=~"$agent_type"}'  # the Tasks dashboard's type filter
RI = "[$__rate_interval]"

GREEN, YELLOW, RED = "green", "#EAB839", "red"


def thresholds(*steps: tuple[float, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": GREEN, "value": None}] + [
        {"color": color, "value": value} for value, color in steps]}  # fmt: skip


@dataclass
class Panel:
    """One panel: a title, its queries (expr, legend) and how to draw them."""

    title: str
    kind: str
    queries: list[tuple[str, str]]
    w: int = 12
    h: int = 8
    unit: str = "short"
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    overrides: list[dict[str, Any]] = field(default_factory=list)
    transformations: list[dict[str, Any]] = field(default_factory=list)
    instant: bool = False

    def to_json(self, pid: int, x: int, y: int) -> dict[str, Any]:
        targets = []
        for i, (expr, legend) in enumerate(self.queries):
            target: dict[str, Any] = {
                "refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                "legendFormat": legend or "__auto", "range": not self.instant,
                "instant": self.instant,
            }  # fmt: skip
            if self.instant:
                target["format"] = "table"
            targets.append(target)
        return {
            "id": pid,
            "type": self.kind,
            "title": self.title,
            "description": self.description,
            "datasource": DS,
            "gridPos": {"h": self.h, "w": self.w, "x": x, "y": y},
            "targets": targets,
            "fieldConfig": {
                "defaults": {"unit": self.unit, **self.defaults},
                "overrides": self.overrides,
            },
            "options": self.options,
            "transformations": self.transformations,
        }


def stat(title: str, expr: str, w: int = 4, **kw: Any) -> Panel:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "background", "graphMode": "none", "textMode": "auto",
               "justifyMode": "center"}  # fmt: skip
    kw.setdefault("defaults", {"thresholds": thresholds(), "color": {"mode": "thresholds"}})
    return Panel(title, "stat", [(expr, "")], w=w, h=4, options=options, **kw)


def gauge(title: str, expr: str, legend: str = "") -> Panel:
    steps = thresholds((0.7, YELLOW), (0.9, RED))
    return Panel(title, "gauge", [(expr, legend)], w=8, h=6, unit="percentunit",
                 defaults={"min": 0, "max": 1, "thresholds": steps,
                           "color": {"mode": "thresholds"}},
                 options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                            "values": False},
                          "showThresholdLabels": False, "showThresholdMarkers": True})  # fmt: skip


def series(title: str, *queries: tuple[str, str], unit: str = "short", bars: bool = False,
           w: int = 12, description: str = "") -> Panel:  # fmt: skip
    custom: dict[str, Any] = {"drawStyle": "bars" if bars else "line", "lineWidth": 1,
                              "fillOpacity": 80 if bars else 10, "showPoints": "never",
                              "spanNulls": True}  # fmt: skip
    if bars:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return Panel(title, "timeseries", list(queries), w=w, unit=unit, description=description,
                 defaults={"custom": custom, "color": {"mode": "palette-classic"}},
                 options={"legend": {"displayMode": "list", "placement": "bottom",
                                     "showLegend": True},
                          "tooltip": {"mode": "multi", "sort": "desc"}})  # fmt: skip


def quantiles(
    metric: str, by: str, flt: str = "", qs: tuple[float, ...] = (0.5, 0.95, 0.99)
) -> list[tuple[str, str]]:
    return [(f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{flt}{RI})))",
             f"p{round(q * 100):d} {{{{{by}}}}}") for q in qs]  # fmt: skip


def status_mapping() -> list[dict[str, Any]]:
    return [{"type": "value", "options": {
        "1": {"text": "healthy", "color": "green", "index": 0},
        "0": {"text": "silent", "color": "red", "index": 1}}}]  # fmt: skip


def up_stat(title: str, expr: str) -> Panel:
    mappings = [{"type": "value", "options": {
        "1": {"text": "up", "color": "green", "index": 0},
        "0": {"text": "down", "color": "red", "index": 1}}}]  # fmt: skip
    return stat(title, expr, defaults={"mappings": mappings, "color": {"mode": "thresholds"},
                                       "thresholds": thresholds()})  # fmt: skip


def worker_table() -> Panel:
    columns = [  # (expr, header, unit)
        ("foundry_worker_up", "status", "none"),
        ("foundry_worker_pid", "pid", "none"),
        ("foundry_worker_tasks_completed_total", "tasks", "short"),
        ("foundry_worker_tasks_failed_total", "errors", "short"),
        ("foundry_worker_in_flight", "in flight", "short"),
        ("foundry_worker_uptime_seconds", "uptime", "s"),
        ("foundry_worker_heartbeat_age_seconds", "heartbeat age", "s"),
        ("foundry_worker_rss_bytes", "memory", "bytes"),
    ]
    # each worker's series come from its own host's monitor: sum only drops instance/job
    queries = [(f"sum by (agent_type, worker) ({expr})", "") for expr, _, _ in columns]
    rename = {f"Value #{chr(ord('A') + i)}": header for i, (_, header, _) in enumerate(columns)}
    rename |= {"agent_type": "type"}
    overrides: list[dict[str, Any]] = []
    for _, header, unit in columns:
        props: list[dict[str, Any]] = [{"id": "unit", "value": unit}]
        if header == "status":
            props += [
                {"id": "mappings", "value": status_mapping()},
                {"id": "custom.cellOptions", "value": {"type": "color-background"}},
            ]
        overrides.append({"matcher": {"id": "byName", "options": header}, "properties": props})
    return Panel(
        "Live workers", "table", queries, w=24, h=10, instant=True,
        description="One row per worker heard from recently (from heartbeats, via the monitor).",
        defaults={"custom": {"align": "auto"}}, overrides=overrides,
        options={"showHeader": True, "sortBy": [{"displayName": "type", "desc": False}]},
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}, "renameByName": rename,
                                           "indexByName": {"agent_type": 0, "worker": 1}}},
        ],
    )  # fmt: skip


def overview() -> list[Panel]:
    return [
        stat("Total workers", "sum(foundry_workers)"),
        stat("Healthy workers", 'sum(foundry_workers{state!="silent"})'),
        stat("Unhealthy workers", 'sum(foundry_workers{state="silent"})',
             defaults={"thresholds": thresholds((1, RED)), "color": {"mode": "thresholds"}}),
        stat("Desired workers", "sum(foundry_workers_desired)"),
        up_stat("NATS", "min(foundry_nats_up)"),
        up_stat("Redis", "min(foundry_redis_up)"),
        gauge("CPU", "max(foundry_host_cpu_usage_ratio)"),
        gauge("Memory", "max(foundry_host_memory_usage_ratio)"),
        gauge("Disk", "max by (path) (foundry_host_disk_usage_ratio)", "{{path}}"),
        worker_table(),
        series("Workers by state", ("sum by (state) (foundry_workers)", "{{state}}")),
        series("Tasks completed per second",
               (f"sum by (agent_type) (rate(foundry_tasks_completed_total{RI}))",
                "{{agent_type}}"), unit="reqps"),
        series("Host load", ("max(foundry_host_load1)", "load1"),
               ("max(foundry_host_swap_usage_ratio)", "swap used")),
        series("Worker memory", ("sum by (worker) (foundry_worker_rss_bytes)", "{{worker}}"),
               unit="bytes"),
        series("Fleet size by type",
               ("sum by (agent_type) (foundry_healer_fleet_target)", "{{agent_type}} target"),
               ('sum by (agent_type) (foundry_workers{state!="silent"})', "{{agent_type}} live"),
               ("sum by (agent_type) (foundry_healer_fleet_max)", "{{agent_type}} max"), w=24,
               description="Workers each type runs (the healers' targets, which the autoscaler "
                           "moves between FOUNDRY_FLEET's min..max), beside those heard from."),
    ]  # fmt: skip


def tasks() -> list[Panel]:
    return [
        series("Throughput",
               (f"sum by (agent_type) (rate(foundry_tasks_submitted_total{T}{RI}))",
                "{{agent_type}} submitted"),
               (f"sum by (agent_type) (rate(foundry_tasks_completed_total{T}{RI}))",
                "{{agent_type}} completed"),
               (f"sum by (agent_type) (rate(foundry_tasks_failed_total{T}{RI}))",
                "{{agent_type}} failed"), unit="reqps"),
        series("Task duration (p50 / p95 / p99)",
               *quantiles("foundry_task_duration_seconds", "agent_type", T), unit="s"),
        series("Queue wait (p50 / p95 / p99)",
               *quantiles("foundry_task_queue_wait_seconds", "agent_type", T), unit="s",
               description="From submission to a worker starting the task."),
        series("Queue depth",
               (f"sum by (agent_type) (foundry_queue_pending{T})", "{{agent_type}} pending"),
               (f"sum by (agent_type) (foundry_queue_ack_pending{T})",
                "{{agent_type}} ack pending"),
               (f"sum by (agent_type) (foundry_queue_redelivered{T})",
                "{{agent_type}} redelivered")),
        series("Queue depth by priority lane",
               (f"max by (agent_type, priority) (foundry_queue_lane_pending{T})",
                "{{agent_type}} {{priority}}"),
               description="Tasks waiting for a first delivery in each priority lane "
                           "(high, normal, low) of each type."),
        series("Failures by type",
               (f"sum by (agent_type) (increase(foundry_tasks_failed_total{T}{RI}))",
                "{{agent_type}}"), bars=True),
        series("Dead letters by type",
               (f"sum by (agent_type) (foundry_dead_letters{T})", "{{agent_type}} in AGENT_DEAD"),
               (f"sum by (agent_type) (increase(foundry_tasks_dead_total{T}{RI}))",
                "{{agent_type}} new"), bars=True),
        series("Cancelled tasks",
               (f"sum by (agent_type) (increase(foundry_tasks_cancelled_total{T}{RI}))",
                "{{agent_type}}"), bars=True,
               description="Tasks cancelled by request (POST /api/cluster/task/{id}/cancel)."),
        series("Dead letters replayed",
               (f"sum by (agent_type) (increase(foundry_dead_letters_replayed_total{T}{RI}))",
                "{{agent_type}}"), bars=True,
               description="Dead letters published again as <task_id>.replay-<n>."),
        series("Failure ratio",
               (f"sum by (agent_type) (rate(foundry_tasks_failed_total{T}{RI})) / ("
                f"sum by (agent_type) (rate(foundry_tasks_failed_total{T}{RI})) + "
                f"sum by (agent_type) (rate(foundry_tasks_completed_total{T}{RI})))",
                "{{agent_type}}"), unit="percentunit"),
        series("Limit waits",
               (f"sum by (limit) (rate(foundry_limit_waits_total{RI}))", "{{limit}} waits"),
               (f"sum by (limit) (rate(foundry_limit_wait_seconds_total{RI}))",
                "{{limit}} seconds waited"),
               (f"sum by (model) (increase(foundry_llm_provider_throttled_total{RI}))",
                "{{model}} provider 429s"),
               description="Tasks and llm requests held back by FOUNDRY_RATE_LIMITS, "
                           "FOUNDRY_TOKEN_BUDGETS or a provider's Retry-After."),
        series("Tokens by model",
               (f"sum by (model, kind) (rate(foundry_llm_tokens_total{RI}))",
                "{{model}} {{kind}}"),
               description="Tokens per second the llm servers reported (prompt, completion)."),
        series("Gateway latency p95 by route",
               *quantiles("foundry_gateway_request_duration_seconds", "route", qs=(0.95,)),
               unit="s"),
        series("Gateway requests by status",
               ("sum by (status) (rate(foundry_gateway_request_duration_seconds_count"
                f"{RI}))", "{{status}}"), unit="reqps", w=24),
        series("Workflows by state",
               ("sum by (status) (foundry_workflows)", "{{status}}"),
               ("sum by (event) (increase(foundry_workflow_events_total"
                f'{{event=~"completed|failed|cancelled"}}{RI}))', "{{event}}"),
               description="Unfinished workflows by status (as the leading orchestrator last "
                           "reported), and workflows finishing."),
        series("Workflow step duration (p50 / p95) and orchestration overhead",
               *quantiles("foundry_workflow_step_seconds", "agent_type", T, qs=(0.5, 0.95)),
               ("histogram_quantile(0.95, sum by (le) (rate("
                f"foundry_workflow_step_overhead_seconds_bucket{RI})))", "p95 overhead"),
               unit="s", description="How long workflow steps run, by agent type, and the "
               "time from one step finishing to the next being submitted."),
    ]  # fmt: skip


def healer() -> list[Panel]:
    return [
        stat("Relaunches (1h)", "sum(increase(foundry_relaunches_total[1h]))", w=6),
        stat("Silent kills (1h)", "sum(increase(foundry_silent_kills_total[1h]))", w=6),
        stat("Quarantines (1h)", "sum(increase(foundry_quarantines_total[1h]))", w=6),
        stat("Slots in quarantine", "sum(foundry_slots_quarantined)", w=6,
             defaults={"thresholds": thresholds((1, RED)), "color": {"mode": "thresholds"}}),
        series("Relaunches by reason",
               (f"sum by (reason) (increase(foundry_relaunches_total{RI}))", "{{reason}}"),
               bars=True),
        series("Relaunches by type",
               (f"sum by (agent_type) (increase(foundry_relaunches_total{RI}))",
                "{{agent_type}}"), bars=True),
        series("Silent kills and quarantines",
               (f"sum by (agent_type) (increase(foundry_silent_kills_total{RI}))",
                "{{agent_type}} silent kill"),
               (f"sum by (agent_type) (increase(foundry_quarantines_total{RI}))",
                "{{agent_type}} quarantine"), bars=True),
        series("Remediation timeline",
               (f"sum by (policy, outcome) (increase(foundry_remediations_total{RI}))",
                "{{policy}} {{outcome}}"), bars=True,
               description="Host remediation actions; heal events are annotations."),
        series("Heal events by action",
               (f"sum by (action) (increase(foundry_heal_events_total{RI}))", "{{action}}"),
               bars=True),
        series("Time to detect a failure (p95)",
               *quantiles("foundry_relaunch_detect_seconds", "reason", qs=(0.95,)), unit="s"),
        series("Heartbeat age",
               ("sum by (worker) (foundry_worker_heartbeat_age_seconds)", "{{worker}}"),
               unit="s"),
        series("Worker uptime (drops are restarts)",
               ("sum by (worker) (foundry_worker_uptime_seconds)", "{{worker}}"), unit="s"),
        series("Leaders",
               ("max by (host) (foundry_monitor_leader)", "monitor on {{host}}"),
               (f'sum(increase(foundry_heal_events_total{{action="leader"}}{RI}))', "elections"),
               description="Which host's monitor exports the cluster-wide series (1), and "
                           "leader elections (healer, monitor, orchestrator leases)."),
    ]  # fmt: skip


def nats() -> list[Panel]:
    return [
        up_stat("JetStream stats", "min(foundry_jetstream_up)"),
        up_stat("Server monitoring", "min(foundry_nats_server_monitoring_up)"),
        stat("Connections", "max(foundry_nats_server_connections)"),
        stat("Slow consumers", "max(foundry_nats_server_slow_consumers_total)",
             defaults={"thresholds": thresholds((1, RED)), "color": {"mode": "thresholds"}}),
        stat("JetStream storage", "max(foundry_jetstream_storage_bytes)", unit="bytes"),
        stat("Consumers", "sum(foundry_stream_consumers)"),
        series("Stream messages", ("sum by (stream) (foundry_stream_messages)", "{{stream}}")),
        series("Stream bytes", ("sum by (stream) (foundry_stream_bytes)", "{{stream}}"),
               unit="bytes"),
        series("Stream ingest",
               (f"sum by (stream) (rate(foundry_stream_received_messages_total{RI}))",
                "{{stream}}"), unit="reqps"),
        series("Consumer backlog (workers-<type>)",
               ("sum by (agent_type) (foundry_queue_pending)", "{{agent_type}} pending"),
               ("sum by (agent_type) (foundry_queue_ack_pending)", "{{agent_type}} ack pending")),
        series("Redeliveries and waiting pulls",
               ("sum by (agent_type) (foundry_queue_redelivered)", "{{agent_type}} redelivered"),
               ("sum by (agent_type) (foundry_queue_waiting_pulls)",
                "{{agent_type}} waiting pulls")),
        series("Dead letter stream by type",
               ("sum by (agent_type) (foundry_dead_letters)", "{{agent_type}}")),
        series("Server messages per second",
               (f"sum(rate(foundry_nats_server_in_msgs_total{RI}))", "in"),
               (f"sum(rate(foundry_nats_server_out_msgs_total{RI}))", "out"), unit="reqps"),
        series("Server bytes per second",
               (f"sum(rate(foundry_nats_server_in_bytes_total{RI}))", "in"),
               (f"sum(rate(foundry_nats_server_out_bytes_total{RI}))", "out"), unit="Bps"),
        series("Round trips from the monitor",
               ("max(foundry_nats_rtt_seconds)", "NATS"),
               ("max(foundry_redis_rtt_seconds)", "Redis"), unit="s"),
        series("nats-server memory",
               ("max(foundry_nats_server_memory_bytes)", "resident"),
               ("max(foundry_jetstream_memory_bytes)", "JetStream memory store"), unit="bytes"),
    ]  # fmt: skip


AGENT_TYPE_VAR = {
    "name": "agent_type", "label": "agent type", "type": "query", "datasource": DS,
    "definition": "label_values(foundry_workers_desired, agent_type)",
    "query": {"query": "label_values(foundry_workers_desired, agent_type)",
              "refId": "PrometheusVariableQueryEditor-VariableQuery"},
    "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "sort": 1,
    "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
}  # fmt: skip

HEAL_ANNOTATION = {
    "name": "Heal events", "datasource": DS, "enable": True, "iconColor": "orange",
    "expr": "sum by (action) (increase(foundry_heal_events_total[1m])) > 0",
    "step": "30s", "titleFormat": "heal: {{action}}", "textFormat": "{{action}}",
    "tagKeys": "action", "useValueForTime": False,
}  # fmt: skip


def dashboard(uid: str, title: str, panels: list[Panel], variables: list[dict[str, Any]],
              annotations: list[dict[str, Any]]) -> dict[str, Any]:  # fmt: skip
    out, x, y, row_h = [], 0, 0, 0
    for pid, panel in enumerate(panels, start=1):
        if x + panel.w > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append(panel.to_json(pid, x, y))
        x, row_h = x + panel.w, max(row_h, panel.h)
    return {
        "uid": uid, "title": title, "tags": ["agent-foundry"], "timezone": "browser",
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": annotations}, "templating": {"list": variables},
        "links": [{"type": "dashboards", "tags": ["agent-foundry"], "asDropdown": True,
                   "title": "Agent Foundry", "includeVars": False, "keepTime": True}],
        "panels": out,
    }  # fmt: skip


def build() -> dict[str, dict[str, Any]]:
    """File name -> dashboard."""
    return {
        "cluster-overview.json": dashboard(
            "foundry-overview", "Agent Foundry / Cluster overview", overview(), [], []),
        "tasks.json": dashboard(
            "foundry-tasks", "Agent Foundry / Tasks", tasks(), [AGENT_TYPE_VAR], []),
        "healer.json": dashboard(
            "foundry-healer", "Agent Foundry / Healer", healer(), [], [HEAL_ANNOTATION]),
        "nats-jetstream.json": dashboard(
            "foundry-nats", "Agent Foundry / NATS and JetStream", nats(), [], []),
    }  # fmt: skip


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2) + "\n"


def main() -> int:
    OUT.mkdir(exist_ok=True)
    for name, board in build().items():
        (OUT / name).write_text(render(board))
        print(f"wrote {OUT / name} ({len(board['panels'])} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
