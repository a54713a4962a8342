"""The handler sections of Settings: each field's variable, round trips, errors, secrets."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from foundry.errors import ConfigError
from foundry.settings import ExecSettings, LlmSettings, Settings, WebhookSettings

# A value other than the default for every field of every section, by its variable.
NOT_DEFAULT: dict[str, str] = {
    "FOUNDRY_EXEC_TIMEOUT": "12.5",
    "FOUNDRY_EXEC_CPU_SECONDS": "3",
    "FOUNDRY_EXEC_MEMORY_BYTES": "1048576",
    "FOUNDRY_EXEC_FILE_BYTES": "4096",
    "FOUNDRY_EXEC_MAX_PROCS": "8",
    "FOUNDRY_EXEC_OUTPUT_BYTES": "2048",
    "FOUNDRY_EXEC_PYTHON": "/usr/bin/python3.11",
    "FOUNDRY_EXEC_USER": "sandbox",
    "FOUNDRY_EXEC_ISOLATION": "none",
    "FOUNDRY_EXEC_BWRAP": "/opt/bwrap",
    "FOUNDRY_EXEC_ALLOW_NETWORK": "1",
    "FOUNDRY_EXEC_UIDS": "61000-61009",
    "FOUNDRY_EXEC_TMP_BYTES": "1048576",
    "FOUNDRY_LLM_URL": "https://models.example:8443/v1",
    "FOUNDRY_LLM_MODEL": "llama3.2",
    "FOUNDRY_LLM_API_KEY": "sk-unit-secret-1",
    "FOUNDRY_LLM_TIMEOUT": "30",
    "FOUNDRY_LLM_RETRIES": "0",
    "FOUNDRY_LLM_BACKOFF": "0.25",
    "FOUNDRY_LLM_STREAM": "0",
    "FOUNDRY_LLM_PROMPTS_DIR": "/etc/foundry/prompts",
    "FOUNDRY_LLM_MODELS": "small,big",
    "FOUNDRY_LLM_MAX_TOKENS": "256",
    "FOUNDRY_LLM_ALLOW_SYSTEM": "1",
    "FOUNDRY_DEPLOY_WEBHOOK_URL": "https://deploy.example/hooks/tok-unit-2",
    "FOUNDRY_WEBHOOK_SECRET": "whsec-unit-3",
    "FOUNDRY_WEBHOOK_TIMEOUT": "2.5",
}
SECRETS = ("sk-unit-secret-1", "models.example", "tok-unit-2", "whsec-unit-3")
SECTIONS = {"exec": ExecSettings, "llm": LlmSettings, "webhook": WebhookSettings}


def section_vars(cls: type[Any]) -> dict[str, str]:
    """Field name -> variable, for one section."""
    return {f.name: f.metadata["env"] for f in dataclasses.fields(cls)}


def test_every_section_field_has_a_test_value() -> None:
    every = {var for cls in SECTIONS.values() for var in section_vars(cls).values()}
    assert every == set(NOT_DEFAULT)


def test_each_variable_lands_in_its_section_field_and_round_trips() -> None:
    # Given a non-default value for every handler variable
    settings = Settings.from_env(NOT_DEFAULT)
    # Then each field differs from its default, so the round trip below proves something
    for attr, cls in SECTIONS.items():
        part, default = getattr(settings, attr), cls()
        assert isinstance(part, cls)
        for name in section_vars(cls):
            assert getattr(part, name) != getattr(default, name), f"{attr}.{name}"
    assert settings.llm.max_tokens == 256 and settings.llm.models == ("small", "big")
    assert settings.exec.allow_network is True and settings.webhook.timeout == 2.5
    # And to_env writes each documented variable, which rebuilds the same settings
    env = settings.to_env()
    assert set(NOT_DEFAULT) <= set(env)
    assert env["FOUNDRY_LLM_MODELS"] == "small,big" and env["FOUNDRY_LLM_STREAM"] == "0"
    assert env["FOUNDRY_DEPLOY_WEBHOOK_URL"] == NOT_DEFAULT["FOUNDRY_DEPLOY_WEBHOOK_URL"]
    assert Settings.from_env(env) == settings
    assert Settings.from_env(Settings().to_env()) == Settings()


@pytest.mark.parametrize("value", ["0", "-3", "lots", "1.5", "nan"])
def test_a_bad_max_tokens_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**NOT_DEFAULT, "FOUNDRY_LLM_MAX_TOKENS": value})
    assert str(caught.value).startswith(f"FOUNDRY_LLM_MAX_TOKENS={value!r} is invalid")


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FOUNDRY_EXEC_ISOLATION", "docker"),
        ("FOUNDRY_EXEC_UIDS", "0-10"),
        ("FOUNDRY_EXEC_TIMEOUT", "0"),
        ("FOUNDRY_LLM_RETRIES", "-1"),
        ("FOUNDRY_LLM_STREAM", "maybe"),
        ("FOUNDRY_DEPLOY_WEBHOOK_URL", "ftp://deploy.example/x"),
        ("FOUNDRY_WEBHOOK_TIMEOUT", "never"),
    ],
)
def test_bad_section_values_name_their_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({var: value})
    assert str(caught.value).startswith(var)


def test_a_secret_variable_is_never_echoed_in_its_error() -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"FOUNDRY_LLM_URL": "ftp://user:hunter2@models/v1"})
    assert str(caught.value).startswith("FOUNDRY_LLM_URL is invalid") and "hunter2" not in str(
        caught.value
    )


def test_secrets_are_absent_from_repr() -> None:
    settings = Settings.from_env(NOT_DEFAULT)
    for text in (repr(settings), repr(settings.llm), repr(settings.webhook), str(settings)):
        for secret in SECRETS:
            assert secret not in text
    # the rest of a section still shows, so a log line says what was configured
    assert "llama3.2" in repr(settings) and "max_tokens=256" in repr(settings.llm)


def test_a_section_override_wins_without_parsing_its_variables() -> None:
    llm = LlmSettings(model="pinned")
    settings = Settings.from_env({"FOUNDRY_LLM_MAX_TOKENS": "lots"}, llm=llm)
    assert settings.llm is llm
