"""Building the slots the healer supervises from the settings."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from foundry.childenv import env_for
from foundry.contracts import SlotKind
from foundry.embedded import nats_config_path, redis_config_path
from foundry.errors import ConfigError
from foundry.hostid import worker_name
from foundry.natsauth import GATEWAY, MONITOR, ORCHESTRATOR, worker_role
from foundry.roles import role_env
from foundry.servers import nats_command, redis_command
from foundry.settings import Settings, split_urls
from healer.slots import Slot

SERVICES = ("gateway", "monitor", "orchestrator")
EMBEDDABLE = ("nats", "redis")


def _port(url: str, default: int) -> int:
    return urlsplit(split_urls(url)[0]).port or default


def _local(url: str, var: str) -> None:
    host = urlsplit(split_urls(url)[0]).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"{var}: an embedded server listens on loopback only, not {host!r}")


def build_slots(settings: Settings, services: list[str], embedded: list[str]) -> list[Slot]:
    """Servers first, then services, then one worker slot per (type, index)."""
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    slots: list[Slot] = []

    def add(
        name: str,
        kind: SlotKind,
        command: list[str],
        agent_type: str | None = None,
        index: int | None = None,
        port: int | None = None,
        role: str = "",
    ) -> None:
        log_path = logs / f"{name}.log"
        # only the secrets its handler needs, and its own role's NATS credentials
        env = {**env_for(settings, kind, agent_type, os.environ), **role_env(settings, role)}
        slots.append(Slot(name, kind, command, agent_type, index, env, log_path, port))

    for server in embedded:
        if server not in EMBEDDABLE:
            raise ConfigError(f"--embedded: unknown server {server!r} (choose from nats, redis)")
        root = settings.data_dir / server
        root.mkdir(parents=True, exist_ok=True)
        if server == "nats":
            _local(settings.nats_url, "FOUNDRY_NATS_URL")
            store = root / "jetstream"
            store.mkdir(exist_ok=True)
            config = nats_config_path(settings)
            if not config.exists():
                raise ConfigError(f"--embedded nats: {config} is missing (foundry up writes it)")
            port = _port(settings.nats_url, 4222)
            add("nats-server", SlotKind.SERVER, nats_command(port, store, config=config), port=port)
        else:
            _local(settings.redis_url, "FOUNDRY_REDIS_URL")
            config = redis_config_path(settings)
            if not config.exists():
                raise ConfigError(f"--embedded redis: {config} is missing (foundry up writes it)")
            port = _port(settings.redis_url, 6379)
            add(
                "redis-server", SlotKind.SERVER, redis_command(port, root, config=config), port=port
            )
    for service in services:
        if service not in SERVICES:
            raise ConfigError(
                f"--services: unknown service {service!r} (choose from {', '.join(SERVICES)})"
            )
        if importlib.util.find_spec(service) is None:
            raise ConfigError(f"--services: package {service!r} is not installed")
        role = {"gateway": GATEWAY, "monitor": MONITOR, "orchestrator": ORCHESTRATOR}[service]
        add(service, SlotKind.SERVICE, [sys.executable, "-m", service], role=role)
    for agent_type, count in settings.fleet.items():
        slots.extend(worker_slot(settings, agent_type, index) for index in range(count))
    return slots


def worker_slot(settings: Settings, agent_type: str, index: int) -> Slot:
    """The worker slot ``<type>-<index>@<host>`` (foundry.hostid): the same command and
    environment for every index, whether the fleet starts with it or the autoscaler adds it."""
    name = worker_name(agent_type, index, settings.host_id)
    command = [
        sys.executable,
        "-m",
        "workers",
        "--type",
        agent_type,
        "--worker-id",
        name,
        "--slot",
        str(index),
    ]
    env = {
        **env_for(settings, SlotKind.WORKER, agent_type, os.environ),
        **role_env(settings, worker_role(agent_type)),
    }
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    return Slot(name, SlotKind.WORKER, command, agent_type, index, env, logs / f"{name}.log")


def scalable_names(settings: Settings) -> list[str]:
    """Worker slots the autoscaler may add (beyond each type's minimum), by name."""
    return [
        worker_name(agent_type, index, settings.host_id)
        for agent_type, bounds in settings.fleet_ranges.items()
        for index in range(bounds.minimum, bounds.maximum)
    ]


def run_dir(settings: Settings) -> Path:
    return settings.data_dir / "run"
