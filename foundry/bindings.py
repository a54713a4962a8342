"""Which handler an agent type runs: ``FOUNDRY_HANDLERS``, else its default, else ``echo``.

Handler specs are names here (a built-in's name or ``package.module:attr``); the
worker turns them into callables (:mod:`workers.registry`), the healer uses
them to decide what each worker process may be given (:mod:`foundry.childenv`).
"""

from __future__ import annotations

from collections.abc import Mapping

# The built-in roles and what they run when FOUNDRY_HANDLERS says nothing.
DEFAULT_BINDINGS: dict[str, str] = {
    "architect": "llm",
    "coder": "llm",
    "critic": "llm",
    "executor": "exec",
    "deployer": "webhook",
}
FALLBACK_HANDLER = "echo"


def handler_spec(agent_type: str, bindings: Mapping[str, str]) -> str:
    """The handler spec bound to ``agent_type``: configured, else default, else echo."""
    return bindings.get(agent_type) or DEFAULT_BINDINGS.get(agent_type) or FALLBACK_HANDLER
