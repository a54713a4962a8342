"""The monitor: samples the host, reads JetStream state, turns heartbeats into metrics."""

from __future__ import annotations

from monitor.service import MONITOR, Monitor, create_app

__all__ = ["MONITOR", "Monitor", "create_app"]
