"""Users, passwords and server config files of a bench run, made as ``foundry up`` makes them.

The generators are Foundry's own (:mod:`foundry.natsauth`, :mod:`foundry.embedded`):
one NATS user per role of a namespace (``healer``, ``gateway``, ``monitor``,
``worker-bench``, ``client``, ``admin``) with its subject allow-lists, nobody
anonymous; one Redis ACL user limited to ``foundry:*`` keys, the default user
off. Passwords are generated into a private ``passwords.json`` (0600) and the
config files are written 0600, so no secret reaches a command line. The one
difference from ``foundry up``: Redis keeps no append-only file, as the bench
always ran it (persistence is not what it measures).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from foundry.embedded import REDIS_USER, redis_config
from foundry.names import Names
from foundry.natsauth import (
    HEALER,
    TlsFiles,
    all_roles,
    inbox_prefix,
    server_config,
    service_roles,
    user_name,
    users,
)
from foundry.provision import max_payload
from foundry.roles import with_userinfo
from foundry.secrets import SecretStore, write_private
from foundry.settings import Settings

AGENT_TYPE = "bench"  # the one agent type of every cluster the bench runs
AGENT_TYPES = (AGENT_TYPE,)


@dataclass(frozen=True)
class NatsAccess:
    """How to reach one nats-server as each role of one namespace."""

    namespace: str
    port: int
    passwords: Mapping[str, str]  # role → password
    tls_ca: str = ""  # set when the server serves TLS: the CA that signed its certificate
    monitor_port: int = 0  # its loopback HTTP monitoring port (0: none)

    @property
    def names(self) -> Names:
        return Names(self.namespace)

    @property
    def address(self) -> str:
        return f"{'tls' if self.tls_ca else 'nats'}://127.0.0.1:{self.port}"

    def url(self, role: str) -> str:
        """The server's URL carrying ``role``'s user and password."""
        return with_userinfo(self.address, user_name(self.names, role), self.passwords[role])

    def for_healer(self, settings: Settings) -> Settings:
        """``settings`` with the healer's NATS access, as ``foundry up`` gives it (see
        ``embedded.prepare``): its own user, every launched role's password, its reply prefix."""
        roles = service_roles(AGENT_TYPES)
        return dataclasses.replace(
            settings,
            namespace=self.namespace,
            nats_url=self.url(HEALER),
            nats_role_passwords={role: self.passwords[role] for role in roles},
            nats_inbox_prefix=inbox_prefix(self.names, HEALER),
            nats_tls_ca=self.tls_ca,
        )


def nats_access(
    secrets: Path, namespace: str, port: int, tls_ca: str = "", monitor_port: int = 0
) -> NatsAccess:
    """Passwords for every role of ``namespace`` (generated once, kept under ``secrets``)."""
    store = SecretStore(secrets)
    kind = f"nats-{namespace}" if namespace else "nats"
    passwords = store.passwords(kind, all_roles(AGENT_TYPES))
    return NatsAccess(namespace, port, passwords, tls_ca, monitor_port)


def write_nats_config(
    path: Path,
    access: NatsAccess,
    store_dir: Path,
    settings: Settings,
    tls: TlsFiles | None = None,
) -> Path:
    """nats-server's config for ``access``'s users (``settings``: the cluster's limits)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    text = server_config(
        users(access.names, access.passwords, AGENT_TYPES),
        port=access.port,
        store_dir=store_dir,
        http_port=access.monitor_port,
        max_payload=max_payload(settings),
        tls=tls,
    )
    return write_private(path, text)


@dataclass(frozen=True)
class RedisAccess:
    port: int
    password: str

    @property
    def url(self) -> str:
        return f"redis://{REDIS_USER}:{self.password}@127.0.0.1:{self.port}/0"


def write_redis_config(
    path: Path, secrets: Path, port: int, data_dir: Path
) -> tuple[Path, RedisAccess]:
    """redis-server's config with the cluster's ACL user (keys ``foundry:*``), default off."""
    password = SecretStore(secrets).passwords("redis", [REDIS_USER])[REDIS_USER]
    data_dir.mkdir(parents=True, exist_ok=True)
    text = redis_config(port, data_dir, password, Names().key_prefix, persist=False)
    return write_private(path, text), RedisAccess(port, password)
