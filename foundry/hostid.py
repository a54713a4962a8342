"""Host identity: ``FOUNDRY_HOST_ID`` and the cluster-unique worker ids built from it.

A host is one healer and the fleet it supervises. Its id is one NATS subject
token and a safe file name: 1-63 lowercase letters, digits, ``_`` or ``-``,
starting with a letter or digit. By default it is the machine's host name made
such a token (lowercased, every other character turned into ``-``).

A worker id is ``<type>-<index>@<host>``: one subject token (the heartbeat
subject's last one), a safe file name (the healer's pid file
``run/<worker id>.json``) and unique across the cluster, because no two hosts
share an id. ``@`` appears in neither an agent type nor a host id, so the id
splits back into its parts without ambiguity.
"""

from __future__ import annotations

import re
import socket

HOST_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
HOST_ID_HINT = "1-63 lowercase letters, digits, '_' or '-', starting with a letter or digit"
SEPARATOR = "@"


def host_token(name: str) -> str:
    """``name`` (a host name) made a valid host id; ``host`` when nothing usable is left."""
    token = re.sub(r"[^a-z0-9_-]+", "-", name.strip().lower()).strip("-_")[:63].rstrip("-_")
    return token or "host"


def default_host_id() -> str:
    return host_token(socket.gethostname())


def parse_host_id(text: str) -> str:
    """A ``FOUNDRY_HOST_ID`` value: empty means the default (the host name as a token)."""
    if not text:
        return ""
    if not HOST_ID_RE.fullmatch(text):
        raise ValueError(f"a host id is {HOST_ID_HINT} (one subject token, a safe file name)")
    return text


def worker_name(agent_type: str, index: int, host: str) -> str:
    """The worker id (and healer slot name) of slot ``index`` of ``agent_type`` on ``host``."""
    return f"{agent_type}-{index}{SEPARATOR}{host}"


def host_of(worker_id: str) -> str | None:
    """The host id a worker id names, or None for an id without one."""
    _, sep, host = worker_id.rpartition(SEPARATOR)
    return host if sep and HOST_ID_RE.fullmatch(host) else None
