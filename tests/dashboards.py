"""Reading the Grafana dashboards for the tests: panels, their PromQL, Grafana's variables."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"

# What Grafana substitutes before sending a query, for a 1 s scrape interval.
GRAFANA_VARIABLES = {
    "$__rate_interval": "15s",
    "$__interval": "5s",
    "$__range": "5m",
    "$agent_type": ".*",  # the Tasks dashboard's "All"
}


def builder() -> ModuleType:
    """grafana/build_dashboards.py, imported from its path (grafana/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "build_dashboards", GRAFANA / "build_dashboards.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def load() -> dict[str, dict[str, Any]]:
    """File name -> dashboard, as committed."""
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def concrete(expr: str) -> str:
    for name in sorted(GRAFANA_VARIABLES, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARIABLES[name])
    assert "$" not in expr, f"unknown Grafana variable in {expr!r}"
    return expr


def panel_queries(board: dict[str, Any]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) for every query of every panel, rows' children included."""
    for panel in board["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield inner, target


def variable_metrics(board: dict[str, Any]) -> Iterator[str]:
    """The metric behind each ``label_values(metric, label)`` template variable."""
    for var in board.get("templating", {}).get("list", []):
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        if text.startswith("label_values("):
            yield text[len("label_values(") :].split(",", 1)[0].strip()
