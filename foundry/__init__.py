"""Agent Foundry's shared core: settings, names, messages, connections, provisioning."""

from __future__ import annotations

from foundry.errors import (
    BrokerUnavailable,
    CacheUnavailable,
    ConfigError,
    FoundryError,
    InvalidAgentType,
    MalformedTask,
    QueueFull,
)
from foundry.names import Names, validate_agent_type
from foundry.settings import Settings

__all__ = [
    "BrokerUnavailable",
    "CacheUnavailable",
    "ConfigError",
    "FoundryError",
    "InvalidAgentType",
    "MalformedTask",
    "Names",
    "QueueFull",
    "Settings",
    "validate_agent_type",
]
