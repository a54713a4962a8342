"""A replicated cluster on namespace hosts: three nats-server nodes, Redis with Sentinel.

Each host of :class:`tests.netns.Hosts` runs one nats-server (routes to the two
others, mutual TLS for clients and routes with a CA made here, the role users
``foundry up`` generates) and one Sentinel; host 1 runs the Redis master and host 2
its replica. Configs come from the project's generators (``natsauth.server_config``
with its ``cluster`` block, ``embedded.redis_config`` plus ``redisha.node_lines``,
``redisha.sentinel_config``). Processes are started inside their host and stopped by
pid with the hosts.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from foundry.connect import connect_nats
from foundry.embedded import REDIS_USER, redis_config
from foundry.names import Names
from foundry.natsauth import (
    ADMIN,
    HEALER,
    ClusterConfig,
    TlsFiles,
    all_roles,
    server_config,
    service_roles,
    user_name,
    users,
)
from foundry.provision import provision
from foundry.redisha import HaPasswords, node_lines, sentinel_config
from foundry.roles import with_userinfo
from foundry.secrets import new_secret, write_private
from foundry.servers import find_nats_server, find_redis_server
from foundry.settings import Settings
from tests.netns import Host, Hosts, wait_for_log
from tests.procs import child_env

NATS_PORT, ROUTE_PORT, REDIS_PORT, SENTINEL_PORT = 4222, 6222, 6379, 26379
MASTER_NAME = "fhmaster"
MASTER_HOST, REPLICA_HOST = 1, 2


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_pki(root: Path, addresses: list[str]) -> TlsFiles:
    """A CA and one certificate for every host's address (server and client alike)."""
    root.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(_name("fh test CA")).issuer_name(_name("fh test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    sans = [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    cert = (
        x509.CertificateBuilder().subject_name(_name("fh node")).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    (root / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (root / "node.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private(root / "node-key.pem", pem.decode())
    return TlsFiles(str(root / "node.pem"), str(root / "node-key.pem"), str(root / "ca.pem"))


@dataclass
class HaCluster:
    hosts: Hosts
    root: Path
    fleet: dict[str, int]
    master_host: int = MASTER_HOST

    def __post_init__(self) -> None:
        self.namespace = "h" + uuid.uuid4().hex[:8]
        self.names = Names(self.namespace)
        self.passwords = {role: new_secret() for role in all_roles(self.fleet)}
        self.route_password = new_secret()
        self.redis_password = new_secret()
        self.sentinel_password = new_secret()
        self.ha = HaPasswords(new_secret(), new_secret())
        self.tls = make_pki(self.root / "pki", [h.address for h in self.hosts])
        self.nats: dict[int, subprocess.Popen[bytes]] = {}
        self.redis: dict[int, subprocess.Popen[bytes]] = {}

    # ---- addresses and settings -------------------------------------------------------
    def nats_url(self, role: str) -> str:
        urls = ",".join(f"tls://{h.address}:{NATS_PORT}" for h in self.hosts)
        return with_userinfo(urls, user_name(self.names, role), self.passwords[role])

    @property
    def redis_url(self) -> str:
        sentinels = ",".join(f"{h.address}:{SENTINEL_PORT}" for h in self.hosts)
        return f"redis+sentinel://{REDIS_USER}:{self.redis_password}@{sentinels}/{MASTER_NAME}/0"

    def settings(self, **overrides: Any) -> Settings:
        """The admin's settings (what the tests connect with); the healer gets its own."""
        base: dict[str, Any] = {
            "nats_url": self.nats_url(ADMIN),
            "redis_url": self.redis_url,
            "redis_sentinel_password": self.sentinel_password,
            "nats_tls_ca": self.tls.ca,
            "nats_tls_cert": self.tls.cert,
            "nats_tls_key": self.tls.key,
            "namespace": self.namespace,
            "fleet": dict(self.fleet),
            "handlers": dict.fromkeys(self.fleet, "echo"),
            "nats_role_passwords": {r: self.passwords[r] for r in service_roles(self.fleet)},
            "data_dir": self.root / "data",
            "ack_wait": 10.0,
            "heartbeat_interval": 0.5,
            "silence_timeout": 5.0,
            "connect_timeout": 20.0,
            "retry_delay": 0.5,
            "healer_port": 0,
            "gateway_port": 0,
            "monitor_port": 0,
        }
        base.update(overrides)
        return Settings(**base)

    # ---- NATS -------------------------------------------------------------------------
    def start_nats(self, index: int) -> None:
        host = self.hosts[index]
        folder = self.root / f"nats-{index}"
        cluster = ClusterConfig(
            name="fh",
            listen=f"{host.address}:{ROUTE_PORT}",
            routes=tuple(f"nats-route://{h.address}:{ROUTE_PORT}" for h in self.hosts),
            server_name=f"n{index}",
            password=self.route_password,
            tls=self.tls,
        )
        text = server_config(
            users(self.names, self.passwords, self.fleet),
            port=NATS_PORT,
            store_dir=folder / "jetstream",
            host=host.address,
            tls=self.tls,
            cluster=cluster,
        )
        config = write_private(folder / "nats.conf", text)
        log = folder / "nats.log"
        proc = host.spawn([find_nats_server(), "-c", str(config)], log)
        self.nats[index] = proc
        wait_for_log(log, "Server is ready", 20, proc)

    def node_of(self, server_name: str) -> int:
        return int(server_name.removeprefix("n"))

    # ---- Redis and Sentinel -------------------------------------------------------------
    def start_redis(self, index: int, replica_of: int | None = None) -> None:
        host = self.hosts[index]
        folder = self.root / f"redis-{index}"
        data = folder / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = folder / "redis.conf"
        if not config.exists():  # a restart keeps what Sentinel wrote into it
            master = None
            if replica_of is not None:
                master = (self.hosts[replica_of].address, REDIS_PORT)
            text = redis_config(
                REDIS_PORT, data, self.redis_password, self.names.key_prefix, bind=host.address
            )
            write_private(config, text + node_lines(self.ha, master))
        log = folder / "redis.log"
        proc = host.spawn([find_redis_server(), str(config)], log)
        self.redis[index] = proc
        wait_for_log(log, "eady to accept connections", 20, proc)

    def start_sentinel(self, index: int) -> None:
        host = self.hosts[index]
        folder = self.root / f"sentinel-{index}"
        folder.mkdir(parents=True, exist_ok=True)
        text = sentinel_config(
            bind=host.address,
            port=SENTINEL_PORT,
            data_dir=folder,
            master_name=MASTER_NAME,
            master=(self.hosts[self.master_host].address, REDIS_PORT),
            passwords=self.ha,
            requirepass=self.sentinel_password,
            down_after=1.0,
            failover_timeout=10.0,
        )
        config = write_private(folder / "sentinel.conf", text)
        log = folder / "sentinel.log"
        proc = host.spawn([find_redis_server(), str(config), "--sentinel"], log)
        wait_for_log(log, "+monitor master", 20, proc)

    # ---- the fleet ----------------------------------------------------------------------
    def start_healer(
        self, host: Host, settings: Settings, log: str = "healer.log"
    ) -> subprocess.Popen[bytes]:
        env = child_env(settings, HEALER)
        return host.spawn([sys.executable, "-m", "healer"], self.root / log, env)

    def logs(self) -> str:
        out = []
        paths = [
            *self.root.glob("*.log"),
            *self.root.glob("*/*.log"),
            *self.root.glob("data/logs/*.log"),
        ]
        for path in sorted(paths):
            out.append(f"--- {path}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


def start(
    hosts: Hosts,
    root: Path,
    fleet: dict[str, int],
    master: int = MASTER_HOST,
    replica: int = REPLICA_HOST,
) -> HaCluster:
    """Every server of the cluster, ready (NATS nodes first, then Redis, then Sentinels);
    the Redis master on host ``master``, its replica on host ``replica``."""
    cluster = HaCluster(hosts, root, fleet, master)
    for index in range(len(hosts)):
        cluster.start_nats(index)
    cluster.start_redis(master)
    cluster.start_redis(replica, replica_of=master)
    for index in range(len(hosts)):
        cluster.start_sentinel(index)
    return cluster


async def wait_jetstream(cluster: HaCluster, timeout: float = 30) -> None:
    """Until the cluster has a JetStream meta leader (account info answers)."""
    nc = await connect_nats(cluster.settings(), "probe")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await nc.jetstream().account_info()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.25)
    finally:
        await nc.close()


async def provisioned(cluster: HaCluster, timeout: float = 30) -> None:
    """Until the healer has provisioned the streams and the fleet's consumers."""
    settings = cluster.settings()
    nc = await connect_nats(settings, "probe")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                await nc.jetstream().consumer_info(
                    settings.names.tasks_stream, settings.names.consumer("echo")
                )
                return
            except Exception:
                if time.monotonic() > deadline:
                    await provision(nc.jetstream(), settings)  # say why, if it cannot
                    raise
                await asyncio.sleep(0.25)
    finally:
        await nc.close()
