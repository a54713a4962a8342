"""Errors of the orchestrator."""

from __future__ import annotations

from foundry.errors import ConfigError, FoundryError


class DefinitionError(ConfigError):
    """A workflow definition is malformed; the message names the file and the problem."""


class WorkflowInputError(FoundryError):
    """A workflow's input lacks what its definition requires."""


class StateConflict(FoundryError):
    """The stored workflow state changed since it was read (another writer)."""


class WorkflowConflict(FoundryError):
    """The request does not fit the workflow's state (approve with nothing waiting, …)."""
