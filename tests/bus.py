"""Servers with authorization for the suite, built from the same generators ``foundry up`` uses.

One nats-server serves the whole session; each test registers its namespace,
which adds that namespace's role users (``<ns>-healer``, ``<ns>-worker-coder`` …,
with exactly the allow-lists of a ``foundry up`` cluster in that namespace) and
reloads the server. Users of earlier tests are dropped at the next reload, so
the config stays small. Redis runs with the generated ACL user and the default
user off.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterable
from pathlib import Path

from foundry.embedded import REDIS_USER, redis_config
from foundry.names import Names
from foundry.natsauth import ADMIN, TlsFiles, all_roles, server_config, user_name, users
from foundry.roles import with_userinfo
from foundry.secrets import new_secret, write_private
from foundry.servers import ServerProcess, free_port, nats_server, redis_server


def nats_login_ok(port: int, user: str = "", password: str = "", timeout: float = 2.0) -> bool:
    """Whether the server on ``port`` accepts ``user``/``password`` (none: anonymous).

    Speaks the protocol on a plain socket (no TLS), so a refusal leaves nothing open.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.recv(4096)  # INFO
        connect: dict[str, object] = {"verbose": False, "pedantic": False}
        if user:
            connect.update(user=user, **{"pass": password})
        sock.sendall(b"CONNECT " + json.dumps(connect).encode() + b"\r\nPING\r\n")
        reply = b""
        deadline = time.monotonic() + timeout
        while b"PONG" not in reply and b"-ERR" not in reply and time.monotonic() < deadline:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
    return b"PONG" in reply


class AuthNats:
    """A nats-server whose users are the role users of the namespaces registered on it."""

    def __init__(self, root: Path, http_port: int | None = None, tls: TlsFiles | None = None):
        self.root = root
        self.port = free_port()
        self.http_port = http_port or 0
        self.tls = tls
        self.config = root / "nats.conf"
        self.namespaces: dict[str, tuple[dict[str, str], list[str]]] = {}
        self.proc: ServerProcess | None = None
        self._write()

    @property
    def url(self) -> str:
        scheme = "tls" if self.tls else "nats"
        return f"{scheme}://127.0.0.1:{self.port}"

    def _write(self) -> None:
        every = []
        for namespace, (passwords, types) in self.namespaces.items():
            every += users(Names(namespace), passwords, types)
        text = server_config(
            every,
            port=self.port,
            store_dir=self.root / "jetstream",
            http_port=self.http_port,
            tls=self.tls,
        )
        write_private(self.config, text)

    def start(self) -> AuthNats:
        self.proc = nats_server(self.port, self.root, config=self.config).start()
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def register(
        self, namespace: str, agent_types: Iterable[str], keep: bool = False
    ) -> dict[str, str]:
        """Add the role users of ``namespace`` (dropping earlier ones unless ``keep``)."""
        types = list(agent_types)
        passwords = {role: new_secret() for role in all_roles(types)}
        if not keep:
            self.namespaces.clear()
        self.namespaces[namespace] = (passwords, types)
        self._write()
        if self.proc is not None and self.proc.alive() and not self.tls:
            os.kill(self.proc.pid, signal.SIGHUP)  # nats-server reloads its config
            user = user_name(Names(namespace), ADMIN)
            deadline = time.monotonic() + 10
            while not nats_login_ok(self.port, user, passwords[ADMIN]):
                if time.monotonic() > deadline:
                    raise AssertionError("nats-server did not take the new users")
                time.sleep(0.02)
        return passwords

    def url_for(self, namespace: str, role: str) -> str:
        passwords, _ = self.namespaces[namespace]
        return with_userinfo(self.url, user_name(Names(namespace), role), passwords[role])


class AuthRedis:
    """A redis-server with the generated config: one ACL user, the default user off."""

    def __init__(self, root: Path, persist: bool = False):
        self.root = root
        self.port = free_port()
        self.password = new_secret()
        data = root / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.config = write_private(
            root / "redis.conf", redis_config(self.port, data, self.password, persist=persist)
        )
        self.proc = redis_server(self.port, root, config=self.config)

    @property
    def url(self) -> str:
        return f"redis://{REDIS_USER}:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def anonymous_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> AuthRedis:
        self.proc.start()
        return self

    def stop(self) -> None:
        self.proc.stop()


__all__ = ["AuthNats", "AuthRedis", "nats_login_ok"]
