"""Servers and child processes of one benchmark run, all stopped by pid at the end.

One nats-server (JetStream, file storage) and one redis-server (no persistence,
as in the test suite) on free loopback ports under a temporary folder, both
with authorization as ``foundry up`` configures it (:mod:`bench.credentials`);
with ``tls``, a second nats-server serving TLS with a CA made at run time. Every
Python child is started through :class:`Procs`, which stops it by pid
(SIGCONT, SIGTERM, then SIGKILL) however the run ends.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bench.credentials import (
    NatsAccess,
    RedisAccess,
    nats_access,
    write_nats_config,
    write_redis_config,
)
from bench.pki import ca_path, make_server_tls
from foundry.pidfiles import kill_recorded, stop_child
from foundry.secrets import private_dir
from foundry.servers import ServerProcess, free_port, nats_server, redis_server
from foundry.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def child_env(extra: Mapping[str, str], pythonpath: list[Path] | None = None) -> dict[str, str]:
    """The environment of a child: ours without FOUNDRY_* variables, plus ``extra``.

    ``pythonpath`` folders come first on the child's path (shims, a scratch copy of the code).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    paths = [str(p) for p in (pythonpath or [])] + [str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra)
    return env


@dataclass
class Procs:
    """Python children of the benchmark."""

    log_dir: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    run_dirs: list[Path] = field(default_factory=list)

    def start(
        self,
        name: str,
        args: list[str],
        env: Mapping[str, str],
        executable: str = sys.executable,
    ) -> subprocess.Popen[bytes]:
        """Start a child in the run's folder: ``python -m`` then imports from ``PYTHONPATH``
        (shims, ``--code`` copies, then this checkout), not from the current directory."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                [executable, *args],
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=str(self.log_dir.parent),
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def adopt_run_dir(self, path: Path) -> None:
        """Also stop what a healer recorded in its pid files (in case it could not)."""
        self.run_dirs.append(path)

    def stop(self, proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
        stop_child(proc, grace)

    def stop_all(self, grace: float = 10.0) -> None:
        for proc in reversed(self.procs):
            stop_child(proc, grace)
        for folder in self.run_dirs:
            kill_recorded(folder)


TLS_NAMESPACE = "tls"  # the TLS cluster's namespace: its Redis keys stay apart from the others'


@dataclass
class Infra:
    """The servers and children of one run; :meth:`close` stops them all."""

    root: Path
    nats: ServerProcess
    redis: ServerProcess
    procs: Procs
    bus: NatsAccess  # the plain nats-server's users (default namespace)
    store: RedisAccess
    tls_nats: ServerProcess | None = None
    tls_bus: NatsAccess | None = None  # the TLS nats-server's users (namespace ``tls``)
    keep: bool = False

    @property
    def redis_url(self) -> str:
        """Redis as the cluster's ACL user (the bench and the baseline use it too)."""
        return self.store.url

    @classmethod
    def start(
        cls, keep: bool = False, tls: bool = False, settings: Settings | None = None
    ) -> Infra:
        """Start the servers; ``settings`` gives the limits the NATS config derives from."""
        root = Path(tempfile.mkdtemp(prefix="foundry-bench-"))
        secrets = private_dir(root / "secrets")
        limits = settings or Settings()
        started: list[ServerProcess] = []
        try:
            bus = nats_access(secrets, "", free_port(), monitor_port=free_port())
            conf = write_nats_config(
                secrets / "nats.conf", bus, root / "nats" / "jetstream", limits
            )
            started.append(nats_server(bus.port, root / "nats", config=conf).start())
            port = free_port()
            rconf, store = write_redis_config(secrets / "redis.conf", secrets, port, root / "redis")
            started.append(redis_server(port, root / "redis", config=rconf).start())
            tls_nats, tls_bus = None, None
            if tls:
                files = make_server_tls(root / "pki")
                tls_bus = nats_access(
                    secrets, TLS_NAMESPACE, free_port(), ca_path(files), free_port()
                )
                store_dir = root / "nats-tls" / "jetstream"
                conf = write_nats_config(
                    secrets / "nats-tls.conf", tls_bus, store_dir, limits, tls=files
                )
                tls_nats = nats_server(tls_bus.port, root / "nats-tls", config=conf).start()
                started.append(tls_nats)
        except BaseException:
            for server in reversed(started):
                server.stop()
            shutil.rmtree(root, ignore_errors=True)
            raise
        nats, redis = started[0], started[1]
        return cls(root, nats, redis, Procs(root / "logs"), bus, store, tls_nats, tls_bus, keep)

    def server_pids(self) -> dict[str, int]:
        return {"nats-server": self.nats.pid, "redis-server": self.redis.pid}

    def tls_server_pids(self) -> dict[str, int]:
        """The servers the TLS cluster uses (its nats-server under the usual role name)."""
        assert self.tls_nats is not None
        return {"nats-server": self.tls_nats.pid, "redis-server": self.redis.pid}

    def close(self) -> None:
        try:
            self.procs.stop_all()
        finally:
            self.redis.stop()
            self.nats.stop()
            if self.tls_nats is not None:
                self.tls_nats.stop()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)
