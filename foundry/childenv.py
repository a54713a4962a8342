"""The environment of each process the healer starts: settings scoped to what it needs.

Settings reach a child as ``FOUNDRY_*`` variables (:meth:`Settings.to_env`).
The settings that open something outside the cluster — the LLM server's URL
and API key, the deploy webhook's URL and signing secret — go only to the
workers whose handler uses them: an ``llm`` worker gets the LLM's, a
``webhook`` worker the webhook's; ``exec``, ``echo``, servers, the gateway and
the monitor get neither; the foundry CLI's own API token (``FOUNDRY_API_TOKEN``)
goes to none. A custom ``module:attr`` handler gets none of these unless the
operator grants them to its agent type in ``FOUNDRY_HANDLER_SECRETS``
(``reviewer=FOUNDRY_LLM_API_KEY,reviewer=FOUNDRY_LLM_URL``); a grant may also
name a variable of the healer's own environment (``reviewer=OPENAI_API_KEY``).

From the healer's own environment a child inherits everything except
``FOUNDRY_*`` variables (its settings come from :func:`env_for`) and variables
named like a secret (a ``_``-separated part such as ``KEY``, ``SECRET``,
``TOKEN``, ``PASSWORD``), unless granted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from foundry.bindings import handler_spec
from foundry.settings import Settings

WORKER = "worker"  # the role of a worker process; any other role gets no handler secrets

# Built-in handler -> the secret-bearing settings it needs.
HANDLER_SECRETS: dict[str, tuple[str, ...]] = {
    "llm": ("FOUNDRY_LLM_URL", "FOUNDRY_LLM_API_KEY"),
    "webhook": ("FOUNDRY_DEPLOY_WEBHOOK_URL", "FOUNDRY_WEBHOOK_SECRET"),
}
# Settings only the foundry CLI uses: no child gets them unless granted.
# No child gets these: the CLI's API token, and the NATS route password (a route is
# trusted by the other servers beyond any user's permissions; nats-server reads it
# from its config file).
CLIENT_ONLY = ("FOUNDRY_API_TOKEN", "FOUNDRY_NATS_CLUSTER_PASSWORD")
SCOPED = frozenset(var for names in HANDLER_SECRETS.values() for var in names) | frozenset(
    CLIENT_ONLY
)
SECRET_WORDS = frozenset(
    {
        "KEY",
        "APIKEY",
        "SECRET",
        "SECRETS",
        "TOKEN",
        "TOKENS",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "CREDENTIAL",
        "CREDENTIALS",
        "CREDS",
        "AUTH",
        "PRIVATE",
    }
)


def looks_secret(name: str) -> bool:
    """A variable whose name says it holds a secret (``AWS_SECRET_ACCESS_KEY``, ``GH_TOKEN``)."""
    return any(part in SECRET_WORDS for part in re.split(r"[_\W]+", name.upper()))


def granted(settings: Settings, agent_type: str) -> frozenset[str]:
    """The variables ``FOUNDRY_HANDLER_SECRETS`` grants to ``agent_type``'s workers."""
    return frozenset(
        var
        for name, _, var in (g.partition("=") for g in settings.handler_secrets)
        if name == agent_type
    )


def secrets_for(settings: Settings, role: str, agent_type: str | None = None) -> frozenset[str]:
    """The secret variables a process of ``role`` (serving ``agent_type``) may have."""
    if role != WORKER or agent_type is None:
        return frozenset()
    spec = handler_spec(agent_type, settings.handlers or {})
    return frozenset(HANDLER_SECRETS.get(spec, ())) | granted(settings, agent_type)


def env_for(
    settings: Settings,
    role: str,
    agent_type: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The variables a child of ``role`` gets beyond :func:`inherited`: its settings, and the
    granted variables of ``environ`` (the healer's environment) that are not settings."""
    allowed = secrets_for(settings, role, agent_type)
    env = {k: v for k, v in settings.to_env().items() if k not in SCOPED or k in allowed}
    for var in sorted(allowed):
        if environ is not None and var in environ and not var.startswith("FOUNDRY_"):
            env[var] = environ[var]
    return env


def inherited(environ: Mapping[str, str]) -> dict[str, str]:
    """What every child takes from the healer's own environment: no ``FOUNDRY_*`` variable
    (settings come from :func:`env_for`) and nothing named like a secret."""
    return {
        k: v for k, v in environ.items() if not k.startswith("FOUNDRY_") and not looks_secret(k)
    }
