"""Host remediation policies: one module each behind :class:`Policy`, plus a default list."""

from __future__ import annotations

from healer.remediation.base import Action, Actuator, HostView, Outcome, Policy
from healer.remediation.cpu import CpuPolicy
from healer.remediation.disk import DiskPolicy
from healer.remediation.engine import Remediator
from healer.remediation.memory import MemoryPolicy
from healer.remediation.reachability import ReachabilityPolicy

default_policies: list[type[Policy]] = [DiskPolicy, MemoryPolicy, CpuPolicy, ReachabilityPolicy]

__all__ = [
    "Action",
    "Actuator",
    "CpuPolicy",
    "DiskPolicy",
    "HostView",
    "MemoryPolicy",
    "Outcome",
    "Policy",
    "ReachabilityPolicy",
    "Remediator",
    "default_policies",
]
