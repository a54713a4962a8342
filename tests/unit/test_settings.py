"""Settings: FOUNDRY_FLEET / FOUNDRY_HANDLERS parsing, from_env with a dict, errors, redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from foundry.errors import ConfigError
from foundry.settings import (
    DEFAULT_FLEET,
    LlmSettings,
    Settings,
    WebhookSettings,
    parse_bindings,
    parse_fleet,
    redact_url,
)


def test_parse_fleet_keeps_order_and_skips_blanks() -> None:
    fleet = parse_fleet(" critic=2, coder = 0 ,, architect=256,")
    assert fleet == {"critic": 2, "coder": 0, "architect": 256}
    assert list(fleet) == ["critic", "coder", "architect"]
    assert list(parse_fleet(DEFAULT_FLEET)) == [
        "architect",
        "coder",
        "executor",
        "critic",
        "deployer",
    ]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("coder", "is not 'type=count'"),
        ("Coder=1", "invalid agent type"),
        ("co.der=1", "invalid agent type"),
        ("=1", "invalid agent type"),
        ("coder=two", "not a whole number"),
        ("coder=1.5", "not a whole number"),
        ("coder=-1", "between 0 and 256"),
        ("coder=257", "between 0 and 256"),
        ("coder=1,coder=2", "listed twice"),
        ("", "no agent types"),
        (" , ,", "no agent types"),
    ],
)
def test_parse_fleet_errors_name_the_variable(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_fleet(text)
    assert str(caught.value).startswith("FOUNDRY_FLEET: ") and words in str(caught.value)
    with pytest.raises(ConfigError, match=r"^OTHER_VAR: "):
        parse_fleet(text, var="OTHER_VAR")


def test_parse_bindings() -> None:
    assert parse_bindings("coder=echo, critic = my.pkg.mod:handle ,") == {
        "coder": "echo",
        "critic": "my.pkg.mod:handle",
    }
    assert parse_bindings("") == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [("coder", "is not 'type=handler'"), ("coder=", "is not"), ("Bad=echo", "invalid agent type")],
)
def test_parse_bindings_errors(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_bindings(text)
    assert str(caught.value).startswith("FOUNDRY_HANDLERS: ") and words in str(caught.value)


def test_from_an_empty_environment_everything_is_default() -> None:
    settings = Settings.from_env({})
    assert settings == Settings()
    assert settings.fleet == parse_fleet(DEFAULT_FLEET) and settings.handlers == {}
    assert settings.clean_paths == (Path(".foundry") / "logs",)
    assert settings.watched_paths == (Path(".foundry"),)


def test_from_env_converts_each_variable() -> None:
    env = {
        "FOUNDRY_FLEET": "coder=3",
        "FOUNDRY_HANDLERS": "coder=exec",
        "FOUNDRY_NAMESPACE": " team-a ",
        "FOUNDRY_GATEWAY_PORT": "9000",
        "FOUNDRY_ACK_WAIT": "2.5",
        "FOUNDRY_REMEDIATION_DRY_RUN": "yes",
        "FOUNDRY_LLM_STREAM": "off",
        "FOUNDRY_WORKER_MAX_RSS": "512M",
        "FOUNDRY_EXEC_MEMORY_BYTES": "1048576",
        "FOUNDRY_CLEAN_PATHS": "/tmp/a, /tmp/b,",
        "FOUNDRY_LOG_LEVEL": "debug",
        "FOUNDRY_DATA_DIR": "/var/foundry",
        "FOUNDRY_REDIS_URL": "unix:///run/redis.sock",
        "UNRELATED": "ignored",
    }
    s = Settings.from_env(env)
    assert (s.fleet, s.handlers, s.namespace) == ({"coder": 3}, {"coder": "exec"}, "team-a")
    assert (s.gateway_port, s.ack_wait) == (9000, 2.5)
    assert (s.remediation_dry_run, s.llm.stream) == (True, False)
    assert s.worker_max_rss == 512 * 1024**2 and s.exec.memory_bytes == 1048576
    assert s.clean_paths == (Path("/tmp/a"), Path("/tmp/b"))
    assert s.log_level == "DEBUG" and s.data_dir == Path("/var/foundry")
    assert s.redis_url == "unix:///run/redis.sock"
    assert s.names.tasks_stream == "TEAM_A_AGENT_TASKS"


def test_overrides_win_without_parsing_the_variable() -> None:
    s = Settings.from_env({"FOUNDRY_GATEWAY_PORT": "not a port"}, gateway_port=1234)
    assert s.gateway_port == 1234


def test_to_env_recreates_the_settings() -> None:
    s = Settings(
        fleet={"coder": 2, "critic": 0}, handlers={"coder": "echo"}, namespace="ns1",
        remediation_dry_run=True, worker_max_rss=5, clean_paths=(Path("/a"), Path("/b")),
        watch_paths=(Path("/data"),), ack_wait=0.75,
    )  # fmt: skip
    assert Settings.from_env(s.to_env()) == s


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FOUNDRY_GATEWAY_PORT", "70000"),
        ("FOUNDRY_GATEWAY_PORT", "http"),
        ("FOUNDRY_ACK_WAIT", "0.1"),
        ("FOUNDRY_MAX_DELIVER", "0"),
        ("FOUNDRY_RESULT_TTL", "0"),
        ("FOUNDRY_RESULT_TTL", "1.5"),
        ("FOUNDRY_SILENCE_TIMEOUT", "0.1"),
        ("FOUNDRY_TASK_TIMEOUT", "nan"),
        ("FOUNDRY_CPU_THRESHOLD", "0"),
        ("FOUNDRY_CPU_THRESHOLD", "100.5"),
        ("FOUNDRY_REMEDIATION_DRY_RUN", "maybe"),
        ("FOUNDRY_WORKER_MAX_RSS", "lots"),
        ("FOUNDRY_NAMESPACE", "Team"),
        ("FOUNDRY_NAMESPACE", "a.b"),
        ("FOUNDRY_NATS_URL", "http://127.0.0.1:4222"),
        ("FOUNDRY_NATS_URL", "nats://"),
        ("FOUNDRY_REDIS_URL", "127.0.0.1:6379"),
        ("FOUNDRY_LLM_URL", "ftp://models"),
        ("FOUNDRY_NATS_MONITOR_URL", "nats://127.0.0.1:8222"),
        ("FOUNDRY_FLEET", "coder"),
        ("FOUNDRY_FLEET", ""),
        ("FOUNDRY_HANDLERS", "coder"),
        ("FOUNDRY_GATEWAY_URL", "ftp://127.0.0.1:8080"),
        ("FOUNDRY_GATEWAY_URL", "127.0.0.1:8080"),
    ],
)
def test_bad_values_raise_config_error_naming_the_variable(var: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({var: value})
    assert str(caught.value).startswith(var)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://user:secret@127.0.0.1:4222", "nats://user:***@127.0.0.1:4222"),
        ("redis://:secret@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("redis://u:p@ss@h:6379/0", "redis://u:***@h:6379/0"),
        (
            "rediss://u:secret@h:6380/1?ssl_cert_reqs=none",
            "rediss://u:***@h:6380/1?ssl_cert_reqs=none",
        ),
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("unix:///run/redis.sock", "unix:///run/redis.sock"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_describe_and_repr_keep_passwords_and_keys_out() -> None:
    s = Settings(
        nats_url="nats://u:natspw@127.0.0.1:4222", redis_url="redis://:redispw@127.0.0.1:6379/0",
        llm=LlmSettings(api_key="sk-key"),
        webhook=WebhookSettings(secret="whsec", url="https://h/hook?t=tok"),
    )  # fmt: skip
    for text in (s.describe(), repr(s)):
        for secret in ("natspw", "redispw", "sk-key", "whsec", "t=tok"):
            assert secret not in text
    assert "nats://u:***@127.0.0.1:4222" in s.describe()


def test_describe_keeps_a_nats_token_out() -> None:
    s = Settings(nats_url="nats://s3cr3t-token@127.0.0.1:4222")
    assert "s3cr3t-token" not in s.describe()


def test_gateway_base_url_is_derived_unless_given() -> None:
    assert Settings().gateway_base_url == "http://127.0.0.1:8080"
    wild = Settings.from_env({"FOUNDRY_GATEWAY_HOST": "0.0.0.0", "FOUNDRY_GATEWAY_PORT": "9001"})
    assert wild.gateway_url == "" and wild.gateway_base_url == "http://127.0.0.1:9001"
    given = Settings.from_env(
        {"FOUNDRY_GATEWAY_URL": "https://api.example:8443/", "FOUNDRY_GATEWAY_PORT": "9001"}
    )
    assert given.gateway_base_url == "https://api.example:8443"
    assert Settings.from_env(given.to_env()) == given


def test_the_cli_token_stays_out_of_repr() -> None:
    s = Settings.from_env({"FOUNDRY_API_TOKEN": " fnd-tok-5 ", "FOUNDRY_GATEWAY_URL": ""})
    assert s.api_token == "fnd-tok-5" and "fnd-tok-5" not in repr(s)
