"""Each process the healer starts holds only the secrets its job needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from nats.aio.client import Client as NATS

from foundry.childenv import env_for, inherited, looks_secret
from foundry.settings import LlmSettings, Settings, WebhookSettings
from tests.cluster import start_healer, wait_running
from tests.conftest import eventually
from tests.procs import ROOT, ProcessGroup

LLM_KEY, HOOK_SECRET, PARENT_KEY = "sk-child-llm-77", "whsec-child-88", "sk-parent-openai-99"
LLM = LlmSettings(url="http://127.0.0.1:9/v1", model="m", api_key=LLM_KEY)
CLI_TOKEN = "fnd-cli-token-66"
HOOK = WebhookSettings(url="http://127.0.0.1:9/deploy", secret=HOOK_SECRET)


def with_secrets(**overrides: Any) -> Settings:
    return Settings(llm=LLM, webhook=HOOK, **overrides)


def test_each_role_gets_only_its_handlers_secrets() -> None:
    settings = with_secrets(
        handlers={"reviewer": "tests.handlers:record"},
        handler_secrets=("reviewer=FOUNDRY_LLM_API_KEY", "reviewer=OPENAI_API_KEY"),
        api_token=CLI_TOKEN,
    )
    parent = {"OPENAI_API_KEY": PARENT_KEY, "PATH": "/usr/bin"}
    llm = env_for(settings, "worker", "coder", parent)
    hook = env_for(settings, "worker", "deployer", parent)
    exe = env_for(settings, "worker", "executor", parent)
    custom = env_for(settings, "worker", "reviewer", parent)
    gateway = env_for(settings, "service", None, parent)
    assert llm["FOUNDRY_LLM_API_KEY"] == LLM_KEY and "FOUNDRY_WEBHOOK_SECRET" not in llm
    assert hook["FOUNDRY_WEBHOOK_SECRET"] == HOOK_SECRET and "FOUNDRY_LLM_API_KEY" not in hook
    for env in (exe, gateway):
        assert not {"FOUNDRY_LLM_API_KEY", "FOUNDRY_WEBHOOK_SECRET", "OPENAI_API_KEY"} & set(env)
        assert "FOUNDRY_LLM_URL" not in env and "FOUNDRY_DEPLOY_WEBHOOK_URL" not in env
    # a custom handler gets what the operator granted to its type, and nothing else
    assert custom["FOUNDRY_LLM_API_KEY"] == LLM_KEY and custom["OPENAI_API_KEY"] == PARENT_KEY
    assert "FOUNDRY_WEBHOOK_SECRET" not in custom
    # the CLI's API token goes to no child
    for env in (llm, hook, exe, custom, gateway):
        assert "FOUNDRY_API_TOKEN" not in env and CLI_TOKEN not in env.values()
    # every child keeps the settings that are not secrets
    assert exe["FOUNDRY_LLM_MODEL"] == "m" and exe["FOUNDRY_NAMESPACE"] == settings.namespace


def test_inherited_environment_drops_settings_and_secret_names() -> None:
    parent = {
        "PATH": "/usr/bin",
        "LANG": "C.UTF-8",
        "FOUNDRY_LLM_API_KEY": LLM_KEY,
        "AWS_SECRET_ACCESS_KEY": "x",
        "GITHUB_TOKEN": "x",
        "DB_PASSWORD": "x",
        "KEYBOARD": "us",
    }
    assert inherited(parent) == {"PATH": "/usr/bin", "LANG": "C.UTF-8", "KEYBOARD": "us"}
    assert looks_secret("OPENAI_API_KEY") and not looks_secret("MONKEY_BUSINESS")


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode().split("\0") if "=" in item)


async def test_healer_children_hold_only_their_secrets(
    make_settings: Any, nc: NATS, procs: ProcessGroup
) -> None:
    # Given a healer holding the LLM key, the webhook secret and a parent-only secret,
    # running the gateway, an exec worker, an llm worker and a granted custom worker
    settings = make_settings(
        fleet={"executor": 1, "coder": 1, "reviewer": 1},
        handlers={"executor": "exec", "coder": "llm", "reviewer": "tests.handlers:record"},
        handler_secrets=("reviewer=OPENAI_API_KEY",),
        llm=LLM,
        webhook=HOOK,
    )
    start_healer(procs, settings, "--services", "gateway", OPENAI_API_KEY=PARENT_KEY)
    current = await wait_running(nc, settings)
    await eventually(lambda: current.get("gateway", {}).get("pid"), 30)
    # When each child's /proc/<pid>/environ is read
    env = {name: environ_of(slot["pid"]) for name, slot in current.items()}
    # Then the executor and the gateway hold no handler secret ...
    for name in ("executor-0@host-a", "gateway"):
        text = "\0".join(f"{k}={v}" for k, v in env[name].items())
        assert LLM_KEY not in text and HOOK_SECRET not in text and PARENT_KEY not in text, name
        assert "PATH" in env[name]
    # ... the llm worker holds the LLM key only ...
    assert env["coder-0@host-a"]["FOUNDRY_LLM_API_KEY"] == LLM_KEY
    assert (
        HOOK_SECRET not in env["coder-0@host-a"].values()
        and "OPENAI_API_KEY" not in env["coder-0@host-a"]
    )
    # ... and the custom worker what was granted to its type
    assert env["reviewer-0@host-a"]["OPENAI_API_KEY"] == PARENT_KEY
    assert "FOUNDRY_LLM_API_KEY" not in env["reviewer-0@host-a"]


def test_compose_gives_handler_secrets_to_the_healer_only() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    services = compose["services"]
    secret_vars = {"FOUNDRY_LLM_API_KEY", "FOUNDRY_WEBHOOK_SECRET", "FOUNDRY_DEPLOY_WEBHOOK_URL"}
    assert secret_vars <= set(services["healer"]["environment"])
    for name in ("gateway", "monitor"):
        assert not secret_vars & set(services[name]["environment"]), name
    # the healer's exec workers need namespaces and a /proc mount inside the container
    assert {"seccomp=unconfined", "systempaths=unconfined"} <= set(
        services["healer"]["security_opt"]
    )
