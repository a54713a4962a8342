"""Errors of the shared core; services translate broker and cache errors into these."""

from __future__ import annotations

# JetStream API error code: the stream's per-subject message limit is reached. On the
# task stream that limit is FOUNDRY_MAX_QUEUE_PER_TYPE, so the code means a full queue.
JS_ERR_MAX_MSGS_PER_SUBJECT = 10077


class FoundryError(Exception):
    """Base of every error Agent Foundry raises on purpose."""


class ConfigError(FoundryError):
    """A setting is missing or malformed; the message names the variable."""


class InvalidAgentType(FoundryError):
    """An agent type is not a single subject token."""


class MalformedTask(FoundryError):
    """A task payload cannot be read as a task; ``task_id`` is the id it will be failed under."""

    def __init__(self, task_id: str, reason: str) -> None:
        super().__init__(reason)
        self.task_id = task_id
        self.reason = reason


class BrokerUnavailable(FoundryError):
    """NATS cannot be reached or did not answer in time."""


class QueueFull(FoundryError):
    """An agent type's task queue holds FOUNDRY_MAX_QUEUE_PER_TYPE tasks; retry later."""

    def __init__(self, agent_type: str) -> None:
        super().__init__(
            f"the {agent_type} queue is full (FOUNDRY_MAX_QUEUE_PER_TYPE); retry later"
        )
        self.agent_type = agent_type


class CacheUnavailable(FoundryError):
    """Redis cannot be reached or did not answer in time."""


class ProvisioningError(FoundryError):
    """A stream or consumer is missing and this connection could not create it."""


class ServerStartError(FoundryError):
    """An embedded nats-server or redis-server did not start."""


class AlreadyReplayed(FoundryError):
    """A dead letter was replayed before, as ``new_task_id``."""

    def __init__(self, task_id: str, new_task_id: str) -> None:
        super().__init__(f"dead letter {task_id!r} was already replayed as {new_task_id!r}")
        self.task_id = task_id
        self.new_task_id = new_task_id
