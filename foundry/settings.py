"""Settings: one frozen dataclass read from ``FOUNDRY_*`` environment variables.

Built by :meth:`Settings.from_env` in each service's ``main()``; never at
import time. A bad value raises :class:`ConfigError` naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from foundry.errors import ConfigError, InvalidAgentType
from foundry.names import Names, validate_agent_type
from foundry.urls import redact_url as redact_url  # re-exported: callers import it from here
from foundry.urls import split_urls as split_urls

DEFAULT_FLEET = "architect=1,coder=1,executor=1,critic=1,deployer=1"
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

T = TypeVar("T")


def parse_fleet(text: str, var: str = "FOUNDRY_FLEET") -> dict[str, int]:
    """Parse ``type=count,type=count`` into an ordered mapping."""
    fleet: dict[str, int] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, count_text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"{var}: {item!r} is not 'type=count' (example: {DEFAULT_FLEET})")
        try:
            validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ConfigError(f"{var}: {exc}") from None
        try:
            count = int(count_text.strip())
        except ValueError:
            raise ConfigError(f"{var}: count for {name!r} is not a whole number") from None
        if count < 0 or count > 256:
            raise ConfigError(f"{var}: count for {name!r} must be between 0 and 256")
        if name in fleet:
            raise ConfigError(f"{var}: agent type {name!r} is listed twice")
        fleet[name] = count
    if not fleet:
        raise ConfigError(f"{var}: no agent types given (example: {DEFAULT_FLEET})")
    return fleet


def parse_bindings(text: str, var: str = "FOUNDRY_HANDLERS") -> dict[str, str]:
    """Parse ``type=handler,type=handler`` (built-in names or ``package.module:attr``)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, spec = (part.strip() for part in item.partition("="))
        if not sep or not spec:
            raise ConfigError(f"{var}: {item!r} is not 'type=handler' (example: coder=echo)")
        try:
            validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ConfigError(f"{var}: {exc}") from None
        out[name] = spec
    return out


def _url(schemes: tuple[str, ...], many: bool = False) -> Callable[[str], str]:
    def check(text: str) -> str:
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"{redact_url(text)!r} is not a URL") from None
        if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
            raise ValueError(
                f"{redact_url(text)!r}: expected a URL like {schemes[0]}://127.0.0.1:port"
            )
        return text

    def conv(text: str) -> str:
        if not many:
            return check(text)
        urls = split_urls(text)
        if not urls:
            raise ValueError(f"expected a URL like {schemes[0]}://127.0.0.1:port")
        return ",".join(check(url) for url in urls)

    return conv


def _positive(conv: Callable[[str], T], minimum: float = 0.0, strict: bool = True) -> Any:
    def check(text: str) -> T:
        value = conv(text)
        if strict and not value > minimum:  # type: ignore[operator]
            raise ValueError(f"must be greater than {minimum}")
        if not strict and value < minimum:  # type: ignore[operator]
            raise ValueError(f"must be at least {minimum}")
        return value

    return check


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no")


def _percent(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise ValueError("must be a percentage in (0, 100]")
    return value


def _paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(p.strip()) for p in text.split(",") if p.strip())


_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def _size(text: str) -> int:
    """Bytes, with an optional K/M/G/T suffix (binary units); 0 means off."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError("expected a size like 512M, 2G or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def _namespace(text: str) -> str:
    if text and not _NAMESPACE_RE.fullmatch(text):
        raise ValueError("lowercase letters, digits, '_' or '-', starting with a letter")
    return text


def _optional_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    conv = _url(schemes)
    return lambda text: conv(text) if text else ""


def _lower_words(text: str) -> tuple[str, ...]:
    return tuple(w.strip().lower() for w in text.split(",") if w.strip())


def _origins(text: str) -> tuple[str, ...]:
    out = _lower_words(text)
    for origin in out:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com:8443")
    return tuple(o.rstrip("/") for o in out)


def _default_on(text: str) -> bool:
    """A switch that an empty value leaves on (``off``/``0``/``false`` turn it off)."""
    return True if not text.strip() else _bool(text)


def _max_wait(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError("must be seconds in (0, 3600]")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def _choice(*allowed: str) -> Callable[[str], str]:
    def conv(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return conv


def _words(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, blanks dropped."""
    return tuple(w.strip() for w in text.split(",") if w.strip())


def _uid_range(text: str) -> str:
    """``first-last`` (inclusive) of unprivileged uids; empty: none."""
    if not text:
        return ""
    match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if not match:
        raise ValueError("expected a uid range like 60000-60999")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1000 <= first <= last < 2**31:
        raise ValueError("the range must be ascending, from 1000 up (never root or system uids)")
    return f"{first}-{last}"


_VAR_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")


def _grants(text: str) -> tuple[str, ...]:
    """``type=VARIABLE`` items: which extra secret variables a type's worker may have."""
    out: list[str] = []
    for item in _words(text):
        name, sep, var = (part.strip() for part in item.partition("="))
        if not sep or not _VAR_RE.fullmatch(var):
            raise ValueError(
                f"{item!r} is not 'type=VARIABLE' (example: reviewer=FOUNDRY_LLM_API_KEY)"
            )
        try:
            validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ValueError(str(exc)) from None
        out.append(f"{name}={var}")
    return tuple(out)


def _subject_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*", text):
        raise ValueError("expected subject tokens such as _INBOX (no wildcards or spaces)")
    return text


def _file(text: str) -> str:
    if text and not Path(text).is_file():
        raise ValueError("no such file")
    return text


def parse_role_secrets(text: str, var: str = "FOUNDRY_NATS_ROLE_PASSWORDS") -> dict[str, str]:
    """Parse ``role=password,role=password`` (never echoing a password in an error)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        role, sep, secret = item.partition("=")
        if not sep or not role.strip() or not secret:
            raise ConfigError(f"{var}: an item is not 'role=password'")
        out[role.strip()] = secret
    return out


def _opt(var: str, conv: Callable[[str], Any], default: Any, repr: bool = True) -> Any:
    return field(default=default, repr=repr, metadata={"env": var, "conv": conv})


@dataclass(frozen=True)
class Settings:
    """Every knob of the cluster. Field metadata names the environment variable."""

    # URLs may carry credentials: repr=False keeps them out of logs (use describe()).
    nats_url: str = _opt(
        "FOUNDRY_NATS_URL", _url(("nats", "tls"), many=True), "nats://127.0.0.1:4222", repr=False
    )
    redis_url: str = _opt(
        "FOUNDRY_REDIS_URL",
        _url(("redis", "rediss", "unix")),
        "redis://127.0.0.1:6379/0",
        repr=False,
    )
    namespace: str = _opt("FOUNDRY_NAMESPACE", _namespace, "")
    gateway_host: str = _opt("FOUNDRY_GATEWAY_HOST", str, "127.0.0.1")
    gateway_port: int = _opt("FOUNDRY_GATEWAY_PORT", _port, 8080)
    # API security (gateway): token file (foundry.apitokens), auth switch, Host/Origin lists.
    api_tokens: str = _opt("FOUNDRY_API_TOKENS", str, "")
    api_auth: bool = _opt("FOUNDRY_API_AUTH", _default_on, True)
    gateway_allowed_hosts: tuple[str, ...] = _opt("FOUNDRY_GATEWAY_ALLOWED_HOSTS", _lower_words, ())
    gateway_allowed_origins: tuple[str, ...] = _opt("FOUNDRY_GATEWAY_ALLOWED_ORIGINS", _origins, ())
    gateway_max_wait: float = _opt("FOUNDRY_GATEWAY_MAX_WAIT", _max_wait, 300.0)
    healer_port: int = _opt("FOUNDRY_HEALER_PORT", _port, 8081)
    monitor_port: int = _opt("FOUNDRY_MONITOR_PORT", _port, 8082)
    fleet: dict[str, int] = _opt("FOUNDRY_FLEET", parse_fleet, None)
    data_dir: Path = _opt("FOUNDRY_DATA_DIR", Path, Path(".foundry"))
    result_ttl: int = _opt("FOUNDRY_RESULT_TTL", _positive(int), 86400)
    ack_wait: float = _opt("FOUNDRY_ACK_WAIT", _positive(float, 0.5, strict=False), 10.0)
    max_deliver: int = _opt("FOUNDRY_MAX_DELIVER", _positive(int, 1, strict=False), 5)
    max_ack_pending: int = _opt("FOUNDRY_MAX_ACK_PENDING", _positive(int), 1000)
    max_task_bytes: int = _opt("FOUNDRY_MAX_TASK_BYTES", _positive(int), 1024 * 1024)
    max_queue_per_type: int = _opt("FOUNDRY_MAX_QUEUE_PER_TYPE", _positive(int), 1_000_000)
    duplicate_window: float = _opt(
        "FOUNDRY_DUPLICATE_WINDOW", _positive(float, 600.0, strict=False), 900.0
    )
    events_max_age: float = _opt("FOUNDRY_EVENTS_MAX_AGE", _positive(float), 7 * 86400.0)
    # how far ahead a delayed task's not_before may be (seconds)
    max_delay: float = _opt("FOUNDRY_MAX_DELAY", _positive(float, 1.0, strict=False), 7 * 86400.0)
    concurrency: int = _opt("FOUNDRY_WORKER_CONCURRENCY", _positive(int), 16)
    # the most a control message may raise one worker's concurrency to
    max_concurrency: int = _opt("FOUNDRY_WORKER_MAX_CONCURRENCY", _positive(int), 256)
    task_timeout: float = _opt("FOUNDRY_TASK_TIMEOUT", _positive(float), 600.0)
    retry_delay: float = _opt("FOUNDRY_RETRY_DELAY", _positive(float, 0.0, strict=False), 2.0)
    drain_timeout: float = _opt("FOUNDRY_DRAIN_TIMEOUT", _positive(float, 0.0, strict=False), 10.0)
    heartbeat_interval: float = _opt("FOUNDRY_HEARTBEAT_INTERVAL", _positive(float, 0.05), 1.0)
    silence_timeout: float = _opt("FOUNDRY_SILENCE_TIMEOUT", _positive(float, 0.1), 3.0)
    max_restarts: int = _opt("FOUNDRY_MAX_RESTARTS", _positive(int), 5)
    restart_window: float = _opt("FOUNDRY_RESTART_WINDOW", _positive(float), 60.0)
    backoff_max: float = _opt("FOUNDRY_BACKOFF_MAX", _positive(float), 30.0)
    stable_after: float = _opt("FOUNDRY_STABLE_AFTER", _positive(float), 30.0)
    poison_kills: int = _opt("FOUNDRY_POISON_KILLS", _positive(int), 3)
    connect_timeout: float = _opt("FOUNDRY_CONNECT_TIMEOUT", _positive(float), 30.0)
    handlers: dict[str, str] = _opt("FOUNDRY_HANDLERS", lambda t: parse_bindings(t), None)
    cache_wait: float = _opt("FOUNDRY_CACHE_WAIT", _positive(float), 60.0)
    # host remediation (the healer acts on the monitor's samples; see README)
    host_interval: float = _opt("FOUNDRY_HOST_INTERVAL", _positive(float, 0.05), 5.0)
    disk_threshold: float = _opt("FOUNDRY_DISK_THRESHOLD", _percent, 90.0)
    memory_threshold: float = _opt("FOUNDRY_MEMORY_THRESHOLD", _percent, 85.0)
    cpu_threshold: float = _opt("FOUNDRY_CPU_THRESHOLD", _percent, 90.0)
    cpu_samples: int = _opt("FOUNDRY_CPU_SAMPLES", _positive(int), 3)
    clean_paths: tuple[Path, ...] = _opt("FOUNDRY_CLEAN_PATHS", _paths, None)
    clean_min_age: float = _opt(
        "FOUNDRY_CLEAN_MIN_AGE", _positive(float, 0.0, strict=False), 86400.0
    )
    worker_max_rss: int = _opt("FOUNDRY_WORKER_MAX_RSS", _size, 0)
    remediation_cooldown: float = _opt(
        "FOUNDRY_REMEDIATION_COOLDOWN", _positive(float, 0.0, strict=False), 60.0
    )
    remediation_dry_run: bool = _opt("FOUNDRY_REMEDIATION_DRY_RUN", _bool, False)
    probe_failures: int = _opt("FOUNDRY_PROBE_FAILURES", _positive(int), 3)
    log_level: str = _opt("FOUNDRY_LOG_LEVEL", str.upper, "INFO")
    # Built-in handler `exec`: caps on what one run may use (a task may ask for less).
    exec_timeout: float = _opt("FOUNDRY_EXEC_TIMEOUT", _positive(float), 30.0)
    exec_cpu_seconds: int = _opt("FOUNDRY_EXEC_CPU_SECONDS", _positive(int), 10)
    exec_memory_bytes: int = _opt("FOUNDRY_EXEC_MEMORY_BYTES", _positive(int), 512 * 1024 * 1024)
    exec_file_bytes: int = _opt("FOUNDRY_EXEC_FILE_BYTES", _positive(int), 16 * 1024 * 1024)
    exec_max_procs: int = _opt("FOUNDRY_EXEC_MAX_PROCS", _positive(int), 64)
    exec_output_bytes: int = _opt("FOUNDRY_EXEC_OUTPUT_BYTES", _positive(int), 64 * 1024)
    exec_python: str = _opt("FOUNDRY_EXEC_PYTHON", str, "python3")
    exec_user: str = _opt("FOUNDRY_EXEC_USER", str, "nobody")
    # How `exec` isolates task code: bubblewrap, or (explicitly) nothing beyond rlimits.
    exec_isolation: str = _opt("FOUNDRY_EXEC_ISOLATION", _choice("bwrap", "none"), "bwrap")
    exec_bwrap: str = _opt("FOUNDRY_EXEC_BWRAP", str, "bwrap")
    exec_allow_network: bool = _opt("FOUNDRY_EXEC_ALLOW_NETWORK", _bool, False)
    # Host uids for sandboxes when the worker runs as root: one per concurrent task.
    exec_uids: str = _opt("FOUNDRY_EXEC_UIDS", _uid_range, "60000-60999")
    exec_tmp_bytes: int = _opt("FOUNDRY_EXEC_TMP_BYTES", _size, 64 * 1024 * 1024)
    # Built-in handler `llm`: an OpenAI-compatible chat-completions server.
    llm_url: str = _opt(
        "FOUNDRY_LLM_URL", lambda t: _url(("http", "https"))(t) if t else "", "", repr=False
    )
    llm_model: str = _opt("FOUNDRY_LLM_MODEL", str, "")
    llm_api_key: str = _opt("FOUNDRY_LLM_API_KEY", str, "", repr=False)
    llm_timeout: float = _opt("FOUNDRY_LLM_TIMEOUT", _positive(float), 120.0)
    llm_retries: int = _opt("FOUNDRY_LLM_RETRIES", _positive(int, 0, strict=False), 4)
    llm_backoff: float = _opt("FOUNDRY_LLM_BACKOFF", _positive(float, 0.0, strict=False), 1.0)
    llm_stream: bool = _opt("FOUNDRY_LLM_STREAM", _bool, True)
    llm_prompts_dir: str = _opt("FOUNDRY_LLM_PROMPTS_DIR", str, "")
    # Models a task may pick (FOUNDRY_LLM_MODEL is always allowed), the max_tokens cap,
    # and whether a task may bring its own system messages.
    llm_models: tuple[str, ...] = _opt("FOUNDRY_LLM_MODELS", _words, ())
    llm_max_tokens: int = _opt("FOUNDRY_LLM_MAX_TOKENS", _positive(int), 4096)
    llm_allow_system: bool = _opt("FOUNDRY_LLM_ALLOW_SYSTEM", _bool, False)
    # Built-in handler `webhook`. The URL may embed a token: kept out of repr too.
    deploy_webhook_url: str = _opt(
        "FOUNDRY_DEPLOY_WEBHOOK_URL",
        lambda t: _url(("http", "https"))(t) if t else "",
        "",
        repr=False,
    )
    webhook_secret: str = _opt("FOUNDRY_WEBHOOK_SECRET", str, "", repr=False)
    webhook_timeout: float = _opt("FOUNDRY_WEBHOOK_TIMEOUT", _positive(float), 10.0)
    # Extra secret variables for custom handlers, per type (see foundry.childenv).
    handler_secrets: tuple[str, ...] = _opt("FOUNDRY_HANDLER_SECRETS", _grants, ())
    monitor_host: str = _opt("FOUNDRY_MONITOR_HOST", str, "127.0.0.1")
    # Paths whose disk the monitor watches, comma-separated; empty means the data dir.
    watch_paths: tuple[Path, ...] = _opt("FOUNDRY_WATCH_PATHS", _paths, ())
    # nats-server's HTTP monitoring endpoint (-m); empty: the monitor skips server stats.
    nats_monitor_url: str = _opt(
        "FOUNDRY_NATS_MONITOR_URL", _optional_url(("http", "https")), "", repr=False
    )

    # Credentials and TLS for NATS and Redis (see README "Security").
    # A .creds file: a JWT with its user seed, or a user nkey seed alone.
    nats_creds: str = _opt("FOUNDRY_NATS_CREDS", _file, "")
    nats_tls_ca: str = _opt("FOUNDRY_NATS_TLS_CA", _file, "")
    nats_tls_cert: str = _opt("FOUNDRY_NATS_TLS_CERT", _file, "")
    nats_tls_key: str = _opt("FOUNDRY_NATS_TLS_KEY", _file, "")
    redis_tls_ca: str = _opt("FOUNDRY_REDIS_TLS_CA", _file, "")
    redis_tls_cert: str = _opt("FOUNDRY_REDIS_TLS_CERT", _file, "")
    redis_tls_key: str = _opt("FOUNDRY_REDIS_TLS_KEY", _file, "")
    # Per-role NATS passwords the healer hands to the processes it launches, each only its own.
    nats_role_passwords: dict[str, str] = _opt(
        "FOUNDRY_NATS_ROLE_PASSWORDS", lambda t: parse_role_secrets(t), None, repr=False
    )
    # Reply subjects start with this; a role's own prefix keeps others from reading its replies.
    nats_inbox_prefix: str = _opt("FOUNDRY_NATS_INBOX_PREFIX", _subject_prefix, "_INBOX")
    # The embedded nats-server's loopback HTTP monitoring port (0: none).
    nats_monitor_port: int = _opt("FOUNDRY_NATS_MONITOR_PORT", _port, 8222)
    # Stream byte limits (the oldest events and dead letters go first; a full task queue refuses).
    tasks_max_bytes: int = _opt("FOUNDRY_TASKS_MAX_BYTES", _positive(_size), 1024**3)
    events_max_bytes: int = _opt("FOUNDRY_EVENTS_MAX_BYTES", _positive(_size), 256 * 1024**2)
    dead_max_bytes: int = _opt("FOUNDRY_DEAD_MAX_BYTES", _positive(_size), 256 * 1024**2)
    # AGENT_SCHEDULES (delayed tasks): new delays are refused at 90% of it
    schedules_max_bytes: int = _opt("FOUNDRY_SCHEDULES_MAX_BYTES", _positive(_size), 256 * 1024**2)

    def __post_init__(self) -> None:
        if self.fleet is None:
            object.__setattr__(self, "fleet", parse_fleet(DEFAULT_FLEET))
        if self.handlers is None:
            object.__setattr__(self, "handlers", {})
        if self.nats_role_passwords is None:
            object.__setattr__(self, "nats_role_passwords", {})
        if self.clean_paths is None:
            object.__setattr__(self, "clean_paths", (self.data_dir / "logs",))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); overrides win."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            var = f.metadata["env"]
            if f.name in overrides or var not in env:
                continue
            text = env[var].strip()
            try:
                values[f.name] = f.metadata["conv"](text)
            except ConfigError:
                raise
            except (ValueError, TypeError) as exc:
                # A field kept out of repr may hold a secret: never echo its value.
                shown = f"={text!r}" if f.repr else ""
                raise ConfigError(f"{var}{shown} is invalid: {exc}") from None
        values.update(overrides)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The variables that recreate these settings in a child process."""
        out: dict[str, str] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, dict):
                text = ",".join(f"{k}={v}" for k, v in value.items())
            elif isinstance(value, tuple):
                text = ",".join(str(v) for v in value)
            elif isinstance(value, bool):
                text = "1" if value else "0"
            else:
                text = str(value)
            out[f.metadata["env"]] = text
        return out

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    @property
    def agent_types(self) -> list[str]:
        return list(self.fleet)

    @property
    def watched_paths(self) -> tuple[Path, ...]:
        """What the monitor measures: ``watch_paths``, else the data dir."""
        return self.watch_paths or (self.data_dir,)

    def describe(self) -> str:
        """A one-line summary safe to log (no secrets)."""
        return (
            f"nats={redact_url(self.nats_url)} redis={redact_url(self.redis_url)} "
            f"namespace={self.namespace or '-'} fleet={self.fleet}"
        )
