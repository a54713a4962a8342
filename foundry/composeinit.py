"""The one-shot init of ``docker compose``: every secret and server config, in its data volume.

``python -m foundry.composeinit --data /data`` runs as compose's ``init`` service (the
``foundry-data`` volume mounted at ``/data``) before anything else starts. It makes the
same NATS role users and Redis ACL user as ``foundry up`` (:mod:`foundry.natsauth`,
:mod:`foundry.embedded`), for servers reached by their compose service names, plus the
API tokens, and puts each container's share in a folder of its own: a container mounts
its folder (a volume ``subpath``) and sees nothing else of the volume.

================== ============================================================ ==========
folder             files                                                        mounted by
================== ============================================================ ==========
``secrets/``       ``passwords.json``, ``admin.token``                          init
``nats-config/``   ``nats.conf`` (0600: nats-server runs as root)               nats
``redis-config/``  ``redis.conf`` (0644 in 0755: redis-server runs as the       redis
                   image's ``redis`` user), ``redis-cli.env`` (0600, for the
                   health check, which runs as root)
``healer/``        ``secrets/healer.env``; the healer's data dir (logs, pids)   healer
``gateway/``       ``secrets/gateway.env``, ``secrets/api-tokens.jsonl``        gateway
``monitor/``       ``secrets/monitor.env``                                      monitor
``metrics-token/`` ``metrics.token`` (0644: Prometheus's scrape token)          prometheus
================== ============================================================ ==========

Each ``<role>.env`` (0600) holds that role's ``FOUNDRY_NATS_URL`` (its own NATS user),
``FOUNDRY_NATS_INBOX_PREFIX`` and ``FOUNDRY_REDIS_URL``; the healer's also holds the
passwords of the workers it launches (``FOUNDRY_NATS_ROLE_PASSWORDS``). A service starts
with ``set -a && . /data/secrets/<role>.env && set +a && exec python -m <role>``, so no
secret is in compose.yaml or in the container's configured environment.

With ``--nats-cluster-hosts nats-1,nats-2,nats-3`` each role also gets
``<role>.cluster.env``: the same variables with ``FOUNDRY_NATS_URL`` listing the three
nodes (that role's user on each) and ``FOUNDRY_STREAM_REPLICAS=3``. Compose's
``cluster`` profile sources it instead (``COMPOSE_PROFILES=cluster``).

Idempotent: a second run reuses every password and token; a new agent type in
``FOUNDRY_FLEET`` adds its user (restart nats to load it). Exit codes: 0 done, 2 bad
arguments or settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from foundry.apitokens import ADMIN, METRICS, ensure_token
from foundry.embedded import REDIS_USER, redis_config
from foundry.errors import ConfigError
from foundry.natsauth import (
    HEALER,
    SERVICE_ROLES,
    all_roles,
    server_config,
    service_roles,
    users,
    worker_role,
)
from foundry.provision import max_payload
from foundry.roles import role_env, with_userinfo
from foundry.secrets import SecretStore, env_text, private_dir, write_private
from foundry.settings import Settings

_HOST_RE = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
ENV_HEADER = """\
{role}'s connections in docker compose, sourced by its command:
  set -a && . /data/secrets/{role}.env && set +a && exec python -m {role}
Written by python -m foundry.composeinit; keep it private."""
CLUSTER_ENV_HEADER = """\
{role}'s connections in docker compose's cluster profile (three NATS nodes, R3 streams),
sourced by its command instead of {role}.env when COMPOSE_PROFILES=cluster.
Written by python -m foundry.composeinit; keep it private."""


@dataclass(frozen=True)
class Layout:
    """Where each file goes under the volume's root (the init container's ``--data``)."""

    root: Path

    @property
    def secrets(self) -> Path:
        return self.root / "secrets"

    @property
    def nats_conf(self) -> Path:
        return self.root / "nats-config" / "nats.conf"

    @property
    def redis_conf(self) -> Path:
        return self.root / "redis-config" / "redis.conf"

    @property
    def redis_cli_env(self) -> Path:
        return self.root / "redis-config" / "redis-cli.env"

    def role_env(self, role: str) -> Path:
        return self.root / role / "secrets" / f"{role}.env"

    def cluster_env(self, role: str) -> Path:
        """``<role>.env`` for the services of the three-node NATS cluster profile."""
        return self.root / role / "secrets" / f"{role}.cluster.env"

    @property
    def api_tokens(self) -> Path:
        return self.root / "gateway" / "secrets" / "api-tokens.jsonl"

    @property
    def admin_token(self) -> Path:
        return self.secrets / "admin.token"

    @property
    def metrics_token(self) -> Path:
        return self.root / "metrics-token" / "metrics.token"


@dataclass(frozen=True)
class Targets:
    """The servers as the services reach them, and as the servers themselves see it."""

    nats_host: str = "nats"
    nats_port: int = 4222
    redis_host: str = "redis"
    redis_port: int = 6379
    listen_host: str = "0.0.0.0"  # what nats-server and redis-server bind
    nats_store: Path = Path("/data")  # the JetStream store, in the nats container
    redis_dir: Path = Path("/data")  # redis's data folder, in the redis container
    nats_cluster_hosts: tuple[str, ...] = ()  # the cluster profile's nodes (same port)

    def __post_init__(self) -> None:
        for flag, host in (
            ("--nats-host", self.nats_host),
            ("--redis-host", self.redis_host),
            ("--listen-host", self.listen_host),
            *(("--nats-cluster-hosts", h) for h in self.nats_cluster_hosts),
        ):
            if not _HOST_RE.fullmatch(host):
                raise ConfigError(f"{flag}: {host!r} is not a host name or IPv4 address")


def role_entries(settings: Settings, role: str, worker_passwords: dict[str, str]) -> dict[str, str]:
    """The variables of ``<role>.env``: that role's NATS user, reply prefix and Redis URL."""
    entries = {k: v for k, v in role_env(settings, role).items() if v}
    if role == HEALER:
        entries["FOUNDRY_NATS_ROLE_PASSWORDS"] = ",".join(
            f"{r}={p}" for r, p in worker_passwords.items()
        )
    entries["FOUNDRY_REDIS_URL"] = settings.redis_url
    if settings.namespace:
        entries["FOUNDRY_NAMESPACE"] = settings.namespace
    return entries


def compose_init(root: Path, settings: Settings, targets: Targets) -> bool:
    """Write every file of :class:`Layout` under ``root``; True when API tokens were made."""
    layout = Layout(root)
    private_dir(layout.secrets)
    store = SecretStore(layout.secrets)
    names, types = settings.names, settings.agent_types
    nats_passwords = store.passwords("nats", all_roles(types))
    redis_password = store.passwords("redis", [REDIS_USER])[REDIS_USER]

    nats_text = server_config(
        users(names, nats_passwords, types),
        port=targets.nats_port,
        store_dir=targets.nats_store,
        max_payload=max_payload(settings),
        host=targets.listen_host,
    )
    write_private(layout.nats_conf, nats_text)
    redis_text = redis_config(
        targets.redis_port,
        targets.redis_dir,
        redis_password,
        names.key_prefix,
        bind=targets.listen_host,
    )
    write_private(layout.redis_conf, redis_text)
    write_private(layout.redis_cli_env, env_text({"REDISCLI_AUTH": redis_password}))
    # redis-server drops to the image's redis user before reading its config
    os.chmod(layout.redis_conf.parent, 0o755)
    os.chmod(layout.redis_conf, 0o644)

    cluster = dataclasses.replace(
        settings,
        nats_url=f"nats://{targets.nats_host}:{targets.nats_port}",
        redis_url=with_userinfo(
            f"redis://{targets.redis_host}:{targets.redis_port}/0", REDIS_USER, redis_password
        ),
        nats_role_passwords={r: nats_passwords[r] for r in service_roles(types)},
    )
    workers = {worker_role(t): nats_passwords[worker_role(t)] for t in types}
    for role in SERVICE_ROLES:
        text = env_text(role_entries(cluster, role, workers), ENV_HEADER.format(role=role))
        write_private(layout.role_env(role), text)
    if targets.nats_cluster_hosts:
        nodes = ",".join(f"nats://{h}:{targets.nats_port}" for h in targets.nats_cluster_hosts)
        replicated = dataclasses.replace(cluster, nats_url=nodes)
        for role in SERVICE_ROLES:
            entries = role_entries(replicated, role, workers)
            entries["FOUNDRY_STREAM_REPLICAS"] = str(len(targets.nats_cluster_hosts))
            header = CLUSTER_ENV_HEADER.format(role=role)
            write_private(layout.cluster_env(role), env_text(entries, header))

    _move_old_token_file(layout)
    made = ensure_token(layout.api_tokens, "admin", [ADMIN], layout.admin_token, 0o600)
    # Prometheus runs as another user and mounts only that folder
    made |= ensure_token(layout.api_tokens, "prometheus", [METRICS], layout.metrics_token, 0o644)
    return made


def _move_old_token_file(layout: Layout) -> None:
    """A volume from before the per-service folders kept the token file in ``secrets/``."""
    old = layout.secrets / layout.api_tokens.name
    if old.exists() and not layout.api_tokens.exists():
        os.replace(old, layout.api_tokens)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number 1-65535")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m foundry.composeinit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = Targets()
    parser.add_argument("--data", type=Path, required=True, help="the volume's root")
    parser.add_argument("--nats-host", default=default.nats_host, help="as services reach it")
    parser.add_argument("--nats-port", type=_port, default=default.nats_port)
    parser.add_argument("--redis-host", default=default.redis_host, help="as services reach it")
    parser.add_argument("--redis-port", type=_port, default=default.redis_port)
    parser.add_argument("--listen-host", default=default.listen_host, help="what servers bind")
    parser.add_argument(
        "--nats-store", type=Path, default=default.nats_store, help="in the nats container"
    )
    parser.add_argument(
        "--redis-dir", type=Path, default=default.redis_dir, help="in the redis container"
    )
    parser.add_argument(
        "--nats-cluster-hosts",
        default="",
        help="comma-separated NATS nodes of the cluster profile: also write <role>.cluster.env",
    )
    args = parser.parse_args(argv)
    try:
        targets = Targets(
            nats_host=args.nats_host,
            nats_port=args.nats_port,
            redis_host=args.redis_host,
            redis_port=args.redis_port,
            listen_host=args.listen_host,
            nats_store=args.nats_store,
            redis_dir=args.redis_dir,
            nats_cluster_hosts=tuple(h for h in args.nats_cluster_hosts.split(",") if h),
        )
        made = compose_init(args.data, Settings.from_env(), targets)
    except ConfigError as exc:
        print(f"composeinit: {exc}", file=sys.stderr)
        return 2
    tokens = "created" if made else "already present"
    print(f"composeinit: secrets and server configs written under {args.data}; api tokens {tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
