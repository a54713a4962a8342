"""Settings: one frozen dataclass read from ``FOUNDRY_*`` environment variables.

Built by :meth:`Settings.from_env` in each service's ``main()``; never at
import time. A bad value raises :class:`ConfigError` naming the variable.
The built-in handlers' knobs are sections (:mod:`foundry.handlersettings`);
value parsers live in :mod:`foundry.settingsparse`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundry.errors import ConfigError
from foundry.handlersettings import ExecSettings, LlmSettings, WebhookSettings
from foundry.hostid import default_host_id, parse_host_id
from foundry.names import Names
from foundry.rates import Rate, parse_rate_limits, parse_token_budgets

# The parsers keep the short private names the field table below has always used.
from foundry.settingsparse import (
    DEFAULT_FLEET,
    MAX_WORKERS_PER_TYPE,
    FleetRange,
    parse_bindings,
    parse_fleet,
    parse_fleet_ranges,
    parse_role_secrets,
    read_fields,
    section,
    write_fields,
)
from foundry.settingsparse import choice as _choice
from foundry.settingsparse import default_on as _default_on
from foundry.settingsparse import existing_file as _file
from foundry.settingsparse import flag as _bool
from foundry.settingsparse import grants as _grants
from foundry.settingsparse import lease_ttl as _lease_ttl
from foundry.settingsparse import lower_words as _lower_words
from foundry.settingsparse import max_wait as _max_wait
from foundry.settingsparse import namespace_name as _namespace
from foundry.settingsparse import opt as _opt
from foundry.settingsparse import optional_url as _optional_url
from foundry.settingsparse import origins as _origins
from foundry.settingsparse import paths as _paths
from foundry.settingsparse import percent as _percent
from foundry.settingsparse import port as _port
from foundry.settingsparse import positive as _positive
from foundry.settingsparse import size as _size
from foundry.settingsparse import subject_prefix as _subject_prefix
from foundry.settingsparse import url as _url
from foundry.urls import host_port, is_sentinel_url, parse_sentinel_url, redact_url, split_urls

# Callers import these from here.
__all__ = [
    "DEFAULT_FLEET",
    "MAX_WORKERS_PER_TYPE",
    "ExecSettings",
    "FleetRange",
    "LlmSettings",
    "Rate",
    "Settings",
    "WebhookSettings",
    "local_gateway_url",
    "parse_bindings",
    "parse_fleet",
    "parse_fleet_ranges",
    "parse_role_secrets",
    "redact_url",
    "split_urls",
]


def local_gateway_url(host: str, port: int) -> str:
    """The gateway's URL as seen from this host (a wildcard bind is reached on loopback)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return f"http://{host}:{port}"


def _replicas(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 5:
        raise ValueError("must be 0 (3 on a cluster of 3 or more servers, else 1) to 5")
    return value


def _listen(text: str) -> str:
    """``host:port`` (port 6222 when left out), or empty."""
    if not text:
        return ""
    host, port = host_port(text, 6222)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _server_name(text: str) -> str:
    if text and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", text):
        raise ValueError("letters, digits, '_' and '-' only (at most 64)")
    return text


_plain_redis_url = _url(("redis", "rediss", "unix"))


def _redis_url(text: str) -> str:
    """A Redis URL, or a ``redis+sentinel://`` one naming Sentinels and a master."""
    if is_sentinel_url(text):
        parse_sentinel_url(text)
        return text
    return _plain_redis_url(text)


def _route_urls(text: str) -> tuple[str, ...]:
    """Cluster routes: ``host:port`` or ``nats-route://host:port``, comma-separated."""
    out = []
    for item in split_urls(text):
        url = item if "://" in item else f"nats-route://{item}"
        _url(("nats-route", "nats", "tls"))(url)
        out.append(url)
    return tuple(out)


@dataclass(frozen=True)
class Settings:
    """Every knob of the cluster. Field metadata names the environment variable."""

    # URLs may carry credentials: repr=False keeps them out of logs (use describe()).
    nats_url: str = _opt(
        "FOUNDRY_NATS_URL", _url(("nats", "tls"), many=True), "nats://127.0.0.1:4222", repr=False
    )
    # redis://, rediss://, unix://, or redis+sentinel://h1:26379,h2:26379/<master>/<db>
    redis_url: str = _opt("FOUNDRY_REDIS_URL", _redis_url, "redis://127.0.0.1:6379/0", repr=False)
    namespace: str = _opt("FOUNDRY_NAMESPACE", _namespace, "")
    # This host's id (foundry.hostid): on every heartbeat, heal event and worker id.
    # Empty: the machine's host name made a token (filled in by __post_init__).
    host_id: str = _opt("FOUNDRY_HOST_ID", parse_host_id, "")
    gateway_host: str = _opt("FOUNDRY_GATEWAY_HOST", str, "127.0.0.1")
    gateway_port: int = _opt("FOUNDRY_GATEWAY_PORT", _port, 8080)
    # API security (gateway): token file (foundry.apitokens), auth switch, Host/Origin lists.
    api_tokens: str = _opt("FOUNDRY_API_TOKENS", str, "")
    api_auth: bool = _opt("FOUNDRY_API_AUTH", _default_on, True)
    gateway_allowed_hosts: tuple[str, ...] = _opt("FOUNDRY_GATEWAY_ALLOWED_HOSTS", _lower_words, ())
    gateway_allowed_origins: tuple[str, ...] = _opt("FOUNDRY_GATEWAY_ALLOWED_ORIGINS", _origins, ())
    gateway_max_wait: float = _opt("FOUNDRY_GATEWAY_MAX_WAIT", _max_wait, 300.0)
    # Where the foundry CLI reaches the gateway (empty: gateway_base_url derives it from
    # host and port) and the API token it sends; no process the healer starts gets the token.
    gateway_url: str = _opt("FOUNDRY_GATEWAY_URL", _optional_url(("http", "https")), "", repr=False)
    api_token: str = _opt("FOUNDRY_API_TOKEN", str, "", repr=False)
    healer_port: int = _opt("FOUNDRY_HEALER_PORT", _port, 8081)
    monitor_port: int = _opt("FOUNDRY_MONITOR_PORT", _port, 8082)
    fleet: dict[str, int] = _opt("FOUNDRY_FLEET", parse_fleet, None)
    # FOUNDRY_FLEET read whole: each type's min..max (``fleet`` holds the minimums). It must
    # follow ``fleet``: to_env writes the variable once per field, and the last one stands.
    fleet_ranges: dict[str, FleetRange] = _opt("FOUNDRY_FLEET", parse_fleet_ranges, None)
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
    # tasks of a type with no consumer (no fleet serves it) are dead-lettered after this
    unserved_grace: float = _opt("FOUNDRY_UNSERVED_GRACE", _positive(float), 60.0)
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
    # The built-in handlers' knobs (FOUNDRY_EXEC_*, FOUNDRY_LLM_*, FOUNDRY_WEBHOOK_*).
    exec: ExecSettings = section(ExecSettings)
    llm: LlmSettings = section(LlmSettings)
    webhook: WebhookSettings = section(WebhookSettings)
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
    # Autoscaling between a type's min..max (healer.autoscale): pending tasks per live worker
    # above FOUNDRY_SCALE_BACKLOG for FOUNDRY_SCALE_SAMPLES checks adds workers; a queue
    # empty for FOUNDRY_SCALE_COOLDOWN seconds drains the idle surplus.
    scale_backlog: float = _opt("FOUNDRY_SCALE_BACKLOG", _positive(float), 100.0)
    scale_samples: int = _opt("FOUNDRY_SCALE_SAMPLES", _positive(int), 3)
    scale_interval: float = _opt("FOUNDRY_SCALE_INTERVAL", _positive(float, 0.1, strict=False), 1.0)
    scale_cooldown: float = _opt(
        "FOUNDRY_SCALE_COOLDOWN", _positive(float, 0.0, strict=False), 30.0
    )
    # Live views: a task's streamed output kept per attempt; SSE keep-alives and buffers.
    output_max_bytes: int = _opt("FOUNDRY_OUTPUT_MAX_BYTES", _size, 1024 * 1024)
    sse_keepalive: float = _opt("FOUNDRY_SSE_KEEPALIVE", _positive(float), 15.0)
    sse_buffer: int = _opt("FOUNDRY_SSE_BUFFER", _positive(int, 1, strict=False), 1000)
    # Traces (OpenTelemetry, foundry.tracing): off unless FOUNDRY_TRACING=1.
    tracing: bool = _opt("FOUNDRY_TRACING", _bool, False)
    otel_exporter: str = _opt("FOUNDRY_OTEL_EXPORTER", _choice("otlp", "file", "console"), "otlp")
    otel_endpoint: str = _opt(
        "FOUNDRY_OTEL_ENDPOINT", _optional_url(("http", "https")), "", repr=False
    )
    otel_file: str = _opt("FOUNDRY_OTEL_FILE", str, "")
    # Workflows (orchestrator): extra definitions, the state bucket's byte limit, and the
    # leader lease's lifetime in whole seconds (a dead leader is replaced within it).
    workflows_dir: str = _opt("FOUNDRY_WORKFLOWS_DIR", str, "")
    workflows_max_bytes: int = _opt("FOUNDRY_WORKFLOWS_MAX_BYTES", _positive(_size), 64 * 1024**2)
    lease_ttl: int = _opt("FOUNDRY_LEASE_TTL", _lease_ttl, 3)

    # Clustering (README "Run on several machines"). Replicas of every stream: 0 = 3 when
    # the server reports a cluster of at least 3 nodes, else 1.
    stream_replicas: int = _opt("FOUNDRY_STREAM_REPLICAS", _replicas, 0)
    # The Sentinels' own password (requirepass); the master's credentials are the URL's.
    redis_sentinel_password: str = _opt("FOUNDRY_REDIS_SENTINEL_PASSWORD", str, "", repr=False)
    # A result counts as stored once WAIT confirms this many replicas have it.
    redis_min_replicas: int = _opt("FOUNDRY_REDIS_MIN_REPLICAS", _positive(int, 0, strict=False), 0)
    redis_wait_timeout: float = _opt("FOUNDRY_REDIS_WAIT_TIMEOUT", _positive(float), 2.0)
    # The embedded nats-server joins a cluster when a cluster listen address is set.
    nats_cluster_listen: str = _opt("FOUNDRY_NATS_CLUSTER_LISTEN", _listen, "")
    nats_cluster_routes: tuple[str, ...] = _opt("FOUNDRY_NATS_CLUSTER_ROUTES", _route_urls, ())
    nats_cluster_name: str = _opt("FOUNDRY_NATS_CLUSTER_NAME", _namespace, "foundry")
    nats_cluster_password: str = _opt("FOUNDRY_NATS_CLUSTER_PASSWORD", str, "", repr=False)
    nats_server_name: str = _opt("FOUNDRY_NATS_SERVER_NAME", _server_name, "")
    # The embedded nats-server's own certificate (client listener and routes; peers are
    # verified against FOUNDRY_NATS_TLS_CA).
    nats_server_cert: str = _opt("FOUNDRY_NATS_SERVER_CERT", _file, "")
    nats_server_key: str = _opt("FOUNDRY_NATS_SERVER_KEY", _file, "")
    # AGENT_SCHEDULES (delayed tasks): new delays are refused at 90% of it
    schedules_max_bytes: int = _opt("FOUNDRY_SCHEDULES_MAX_BYTES", _positive(_size), 256 * 1024**2)
    # Cluster-wide limits kept in Redis (foundry.ratelimit): tasks started per agent type and
    # requests per model (FOUNDRY_RATE_LIMITS), tokens per model (FOUNDRY_TOKEN_BUDGETS).
    rate_limits: dict[str, Rate] = _opt("FOUNDRY_RATE_LIMITS", lambda t: parse_rate_limits(t), None)
    token_budgets: dict[str, Rate] = _opt(
        "FOUNDRY_TOKEN_BUDGETS", lambda t: parse_token_budgets(t), None
    )
    # The longest a task waits for a limit before it is handed back (nak) to wait again.
    rate_wait_max: float = _opt("FOUNDRY_RATE_WAIT_MAX", _positive(float), 300.0)

    def __post_init__(self) -> None:
        if self.fleet is None:
            fleet = (
                {t: r.minimum for t, r in self.fleet_ranges.items()}
                if self.fleet_ranges is not None
                else parse_fleet(DEFAULT_FLEET)
            )
            object.__setattr__(self, "fleet", fleet)
        if self.fleet_ranges is None:
            ranges = {t: FleetRange(n, n) for t, n in self.fleet.items()}
            object.__setattr__(self, "fleet_ranges", ranges)
        elif {t: r.minimum for t, r in self.fleet_ranges.items()} != self.fleet:
            raise ConfigError("FOUNDRY_FLEET: fleet and fleet_ranges name different minimums")
        if self.handlers is None:
            object.__setattr__(self, "handlers", {})
        if self.rate_limits is None:
            object.__setattr__(self, "rate_limits", {})
        if self.token_budgets is None:
            object.__setattr__(self, "token_budgets", {})
        if not self.host_id:
            object.__setattr__(self, "host_id", default_host_id())
        if self.nats_role_passwords is None:
            object.__setattr__(self, "nats_role_passwords", {})
        if self.clean_paths is None:
            object.__setattr__(self, "clean_paths", (self.data_dir / "logs",))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``); overrides win.

        An override names a field of this class: a whole section (``llm=LlmSettings(...)``)
        or a flat field, never parsed.
        """
        env = os.environ if environ is None else environ
        return cls(**read_fields(cls, env, overrides))

    def to_env(self) -> dict[str, str]:
        """The variables that recreate these settings in a child process."""
        return write_fields(self)

    @property
    def gateway_base_url(self) -> str:
        """Where clients reach the gateway: ``gateway_url``, else derived from host and port."""
        return self.gateway_url.rstrip("/") or local_gateway_url(
            self.gateway_host, self.gateway_port
        )

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
            f"namespace={self.namespace or '-'} host={self.host_id} fleet={self.fleet}"
        )
