"""The orchestrator: runs workflow definitions as chains of tasks, durably, with one leader."""

from __future__ import annotations

from orchestrator.definition import Definition, load_definitions, parse_definition
from orchestrator.engine import Engine
from orchestrator.service import Orchestrator

__all__ = ["Definition", "Engine", "Orchestrator", "load_definitions", "parse_definition"]
