"""Redis with replicas and Sentinel: the extra lines of each server's config, and a Sentinel's.

Every node (master or replica; a failover swaps them) gets the :func:`node_lines`
appended to :func:`foundry.embedded.redis_config`: an ACL user for replication,
one for the Sentinels (the commands Redis documents for them, nothing else), and
the credentials it replicates with once it is a replica. :func:`sentinel_config`
is one Sentinel's config file; the file must stay writable (Sentinel records what
it learns there). The cluster's own user (``foundry``) is untouched: it reaches
only the cluster's keys and may run ``WAIT``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPLICATION_USER = "replication"
SENTINEL_USER = "sentinel"
# Redis's documented minimum for a Sentinel's user on the servers it monitors.
SENTINEL_COMMANDS = (
    "allchannels +multi +slaveof +ping +exec +subscribe +config|rewrite +role +publish "
    "+info +client|setname +client|kill +script|kill"
)


@dataclass(frozen=True)
class HaPasswords:
    """The replication user's and the Sentinels' passwords (the same on every node)."""

    replication: str = field(repr=False)
    sentinel: str = field(repr=False)


def node_lines(passwords: HaPasswords, replica_of: tuple[str, int] | None = None) -> str:
    """Config lines for one node: the two ACL users, its replication credentials, and,
    for a replica, its master."""
    lines = [
        f"user {REPLICATION_USER} on >{passwords.replication} +psync +replconf +ping",
        f"user {SENTINEL_USER} on >{passwords.sentinel} {SENTINEL_COMMANDS}",
        f"masteruser {REPLICATION_USER}",
        f"masterauth {passwords.replication}",
        # a replica (re)joining gets its copy at once, not after the default 5 s
        "repl-diskless-sync-delay 0",
    ]
    if replica_of is not None:
        lines.append(f"replicaof {replica_of[0]} {replica_of[1]}")
    return "\n".join(lines) + "\n"


def sentinel_config(
    *,
    bind: str,
    port: int,
    data_dir: Path,
    master_name: str,
    master: tuple[str, int],
    passwords: HaPasswords,
    quorum: int = 2,
    requirepass: str = "",
    down_after: float = 5.0,
    failover_timeout: float = 60.0,
) -> str:
    """One Sentinel watching ``master``. With ``requirepass`` clients (and the other
    Sentinels, which use the same password) must authenticate."""
    name = master_name
    lines = [
        f"bind {bind}",
        f"port {port}",
        f'dir "{data_dir}"',
        "daemonize no",
        f"sentinel monitor {name} {master[0]} {master[1]} {quorum}",
        f"sentinel auth-user {name} {SENTINEL_USER}",
        f"sentinel auth-pass {name} {passwords.sentinel}",
        f"sentinel down-after-milliseconds {name} {int(down_after * 1000)}",
        f"sentinel failover-timeout {name} {int(failover_timeout * 1000)}",
        f"sentinel parallel-syncs {name} 1",
    ]
    if requirepass:
        lines.append(f"requirepass {requirepass}")
    return "\n".join(lines) + "\n"
