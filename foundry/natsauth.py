"""NATS users and subject allow-lists, one per role, and the nats-server config that holds them.

Roles: ``healer``, ``gateway``, ``monitor``, ``orchestrator``, ``client`` (people and the ``nats``
CLI), ``admin``, and one ``worker-<type>`` per agent type, so a worker can
publish, fetch and ack only for its own type. Every list is generated for one
namespace (subjects ``<ns>.agents.…``, streams ``<NS>_AGENT_…``); user names
carry the namespace too, so several namespaces' users can share one server.
JetStream API subjects are listed one by one: only ``admin`` gets ``$JS.API.>``,
and nobody may publish ``$JS.EVENT.>`` (only the server does).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from foundry.contracts import TaskStatus
from foundry.names import LOW, Names

HEALER, GATEWAY, MONITOR, CLIENT, ADMIN = "healer", "gateway", "monitor", "client", "admin"
ORCHESTRATOR = "orchestrator"
WORKER_PREFIX = "worker-"
# Services the healer launches (plus the healer itself); people use client or admin.
SERVICE_ROLES = (HEALER, GATEWAY, MONITOR, ORCHESTRATOR)
PERSON_ROLES = (CLIENT, ADMIN)
CLIENT_INBOX = "_INBOX"  # the nats CLI's default reply prefix
# DEAD: re-announced on a duplicate delivery of a dead-lettered task
WORKER_STATUSES = (
    TaskStatus.RUNNING,
    TaskStatus.COMPLETED,
    TaskStatus.FAILED,
    TaskStatus.DEAD,
    TaskStatus.CANCELLED,
)
API = "$JS.API"


def worker_role(agent_type: str) -> str:
    return f"{WORKER_PREFIX}{agent_type}"


def service_roles(agent_types: Iterable[str]) -> list[str]:
    """The roles of the processes a healer runs: itself, gateway, monitor, one per type."""
    return [*SERVICE_ROLES, *(worker_role(t) for t in agent_types)]


def all_roles(agent_types: Iterable[str]) -> list[str]:
    return [*service_roles(agent_types), *PERSON_ROLES]


def user_name(names: Names, role: str) -> str:
    """The NATS user of ``role`` in this namespace (``healer``, ``ns1-healer``)."""
    return f"{names.namespace}-{role}" if names.namespace else role


def inbox_prefix(names: Names, role: str) -> str:
    """Reply subjects of ``role``: its own prefix, so no other role can read its replies."""
    if role == CLIENT:
        return CLIENT_INBOX
    return f"_INBOX_{user_name(names, role)}"


@dataclass(frozen=True)
class Permissions:
    """One user's allow-lists (and the few explicit denials)."""

    publish: list[str]
    subscribe: list[str]
    publish_deny: list[str] = field(default_factory=list)
    allow_responses: bool = False

    def as_config(self) -> dict[str, object]:
        publish: dict[str, object] = {"allow": self.publish}
        if self.publish_deny:
            publish["deny"] = self.publish_deny
        out: dict[str, object] = {"publish": publish, "subscribe": {"allow": self.subscribe}}
        if self.allow_responses:
            out["allow_responses"] = True
        return out


def _stream_api(names: Names, *verbs: str, streams: Iterable[str] | None = None) -> list[str]:
    chosen = list(streams) if streams is not None else _streams(names)
    return [f"{API}.STREAM.{verb}.{stream}" for verb in verbs for stream in chosen]


def _streams(names: Names) -> list[str]:
    return [names.tasks_stream, names.events_stream, names.dead_stream, names.schedules_stream]


def _buckets(names: Names) -> list[str]:
    """The streams behind the KV buckets (workflow state, leases)."""
    return [names.kv_stream(names.workflow_bucket), names.kv_stream(names.lease_bucket)]


def _kv_access(names: Names, bucket: str, key: str = ">") -> list[str]:
    """Read and write one KV bucket's keys, or one key (revision-checked puts, direct gets)."""
    stream = names.kv_stream(bucket)
    return [
        names.kv_subject(bucket, key),
        f"{API}.DIRECT.GET.{stream}",
        f"{API}.DIRECT.GET.{stream}.>",
        f"{API}.STREAM.MSG.GET.{stream}",
    ]


def _consumer_create(stream: str, consumer: str) -> list[str]:
    # nats-py names the consumer (and its filter) in the subject; older clients use DURABLE.
    return [
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}",
        f"{API}.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"{API}.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
    ]


def _short_read(stream: str) -> list[str]:
    """An ephemeral consumer that reads ``stream`` once: create, fetch, info, delete."""
    return [
        f"{API}.CONSUMER.CREATE.{stream}",
        f"{API}.CONSUMER.CREATE.{stream}.*",
        f"{API}.CONSUMER.CREATE.{stream}.*.>",
        f"{API}.CONSUMER.MSG.NEXT.{stream}.*",
        f"{API}.CONSUMER.INFO.{stream}.*",
        f"{API}.CONSUMER.DELETE.{stream}.*",
    ]


def permissions(names: Names, role: str, agent_types: Iterable[str] = ()) -> Permissions:
    """The allow-lists of ``role`` in this namespace (the healer provisions ``agent_types``)."""
    inbox = f"{inbox_prefix(names, role)}.>"
    tasks = names.tasks_stream
    if role.startswith(WORKER_PREFIX):
        agent_type = role[len(WORKER_PREFIX) :]
        consumers = names.consumers(agent_type)  # one per lane
        return Permissions(
            publish=[
                names.heartbeat(agent_type, "*"),
                *(names.task_event(status, agent_type) for status in WORKER_STATUSES),
                names.output(agent_type, ">"),  # streamed task output: its own type's only
                *(f"{API}.CONSUMER.MSG.NEXT.{tasks}.{c}" for c in consumers),
                *(f"{API}.CONSUMER.INFO.{tasks}.{c}" for c in consumers),
                *(f"$JS.ACK.{tasks}.{c}.>" for c in consumers),
                *_stream_api(names, "INFO"),
                # moving a task its headers ask for: to the low lane, or to a schedule
                names.tasks(agent_type, LOW),
                names.schedule(agent_type, ">"),
            ],
            subscribe=[inbox, names.worker_control(agent_type), names.cancel_notice()],
        )
    if role == HEALER:
        return Permissions(
            publish=[
                names.heal_event(">"),
                names.task_event(TaskStatus.DEAD, "*"),
                names.task_event(TaskStatus.CANCELLED, "*"),  # cancelled before it started
                names.worker_control("*"),
                names.cancel_notice(),
                names.dead("*"),
                f"$JS.ACK.{tasks}.>",  # nak / term the tasks of a dead worker
                *_stream_api(names, "INFO", "CREATE", "UPDATE"),
                f"{API}.STREAM.MSG.GET.{tasks}",
                f"{API}.STREAM.MSG.DELETE.{tasks}",
                *(
                    s
                    for t in agent_types
                    for c in names.consumers(t)
                    for s in _consumer_create(tasks, c)
                ),
                f"{API}.CONSUMER.INFO.{tasks}.*",
                # the healers' leader lease (cluster-wide duties): its bucket and its keys
                *_stream_api(
                    names, "INFO", "CREATE", "UPDATE", streams=[names.kv_stream(names.lease_bucket)]
                ),
                *_kv_access(names, names.lease_bucket),
            ],
            subscribe=[
                inbox,
                _all(names, "heartbeat"),
                names.control("*"),  # ping, status, heal, release, cancel: via allow_responses
                _all(names, "host"),
                names.max_deliveries_advisory(),
            ],
            allow_responses=True,
        )
    if role == GATEWAY:
        events = names.events_stream
        return Permissions(
            publish=[
                *names.task_lanes("*"),
                names.schedule("*", ">"),  # delayed tasks
                names.task_event(TaskStatus.QUEUED, "*"),
                names.heal_event("audit"),  # operator actions, naming the API token
                *(names.control(v) for v in ("ping", "status", "heal", "release", "cancel")),
                names.workflows("*"),  # start, get, cancel, approve: the orchestrator answers
                *_stream_api(names, "INFO"),
                f"{API}.CONSUMER.INFO.{tasks}.*",
                # heal history: a short-lived ordered read of the heal events
                f"{API}.CONSUMER.CREATE.{events}",
                f"{API}.CONSUMER.CREATE.{events}.*",
                f"{API}.CONSUMER.CREATE.{events}.*.>",
                f"{API}.CONSUMER.MSG.NEXT.{events}.*",
                f"{API}.CONSUMER.INFO.{events}.*",
                f"{API}.CONSUMER.DELETE.{events}.*",
                # dead letters: listed and replayed through the same kind of short-lived read
                *_short_read(names.dead_stream),
            ],
            subscribe=[
                inbox,
                _all(names, "heartbeat"),
                _all(names, "events"),
                _all(names, "output"),  # relayed to task stream clients
            ],
        )
    if role == ORCHESTRATOR:
        return Permissions(
            publish=[
                names.tasks("*"),  # each step is a task
                names.task_event(TaskStatus.QUEUED, "*"),
                names.workflow_event(">"),
                names.heal_event("leader"),  # its election
                names.control("cancel"),  # cancelling a workflow cancels its running steps
                *_kv_access(names, names.workflow_bucket),
                *_kv_access(names, names.lease_bucket),
                # it creates its buckets at start (only clusters with workflows hold them)
                *_stream_api(names, "INFO", "CREATE", "UPDATE", streams=_buckets(names)),
            ],
            subscribe=[inbox, names.workflows("*"), names.events("task", ">")],
            allow_responses=True,
        )
    if role == MONITOR:
        return Permissions(
            publish=[
                _all(names, "host"),
                *_stream_api(names, "INFO"),
                f"{API}.CONSUMER.INFO.{tasks}.*",
                # the monitors' leader lease (cluster-wide series) and its election event
                *_stream_api(
                    names, "INFO", "CREATE", "UPDATE", streams=[names.kv_stream(names.lease_bucket)]
                ),
                *_kv_access(names, names.lease_bucket, "monitor"),
                names.heal_event("leader"),
            ],
            subscribe=[inbox, _all(names, "heartbeat"), _all(names, "events")],
        )
    if role == CLIENT:
        return Permissions(
            publish=[
                *names.task_lanes("*"),
                names.control("ping"),
                names.control("status"),
                f"{API}.STREAM.INFO.{tasks}",
                f"{API}.INFO",
            ],
            subscribe=[
                inbox,
                _all(names, "events"),
                _all(names, "heartbeat"),
                _all(names, "host"),
            ],
        )
    if role == ADMIN:
        return Permissions(publish=[">"], subscribe=[">"], publish_deny=["$JS.EVENT.>"])
    raise ValueError(f"unknown NATS role {role!r}")


def _all(names: Names, kind: str) -> str:
    return f"{names.root}.{kind}.>"


@dataclass(frozen=True)
class User:
    name: str
    password: str
    permissions: Permissions


def users(
    names: Names, passwords: Mapping[str, str], agent_types: Iterable[str] = ()
) -> list[User]:
    """One user per role in ``passwords`` (role → password)."""
    types = list(agent_types)
    return [
        User(user_name(names, role), secret, permissions(names, role, types))
        for role, secret in passwords.items()
    ]


@dataclass(frozen=True)
class TlsFiles:
    cert: str
    key: str
    ca: str = ""  # when set, clients must present a certificate it signed


ROUTE_USER = "route"


@dataclass(frozen=True)
class ClusterConfig:
    """A ``cluster {}`` block: this server's route listener and the routes to the others.

    ``routes`` are ``nats-route://host:port`` URLs (this server's own may be among them:
    nats-server skips it), so every node can share one list. With ``password`` the
    routes authenticate as user ``route``; with ``tls`` they speak mutual TLS (each
    side verifies the other against ``tls.ca``).
    """

    name: str
    listen: str
    routes: tuple[str, ...]
    server_name: str
    password: str = field(default="", repr=False)
    tls: TlsFiles | None = None


def _route_url(url: str, password: str) -> str:
    scheme, _, rest = url.partition("://")
    hostport = rest.rpartition("@")[2].rstrip("/")
    userinfo = f"{ROUTE_USER}:{password}@" if password else ""
    return f"{scheme}://{userinfo}{hostport}"


def cluster_block(cluster: ClusterConfig) -> dict[str, object]:
    block: dict[str, object] = {
        "name": cluster.name,
        "listen": cluster.listen,
        "routes": [_route_url(url, cluster.password) for url in cluster.routes],
    }
    if cluster.password:
        block["authorization"] = {"user": ROUTE_USER, "password": cluster.password}
    if cluster.tls is not None:
        block["tls"] = _tls_block(cluster.tls, verify=True)
    return block


def _tls_block(tls: TlsFiles, verify: bool = False) -> dict[str, object]:
    block: dict[str, object] = {"cert_file": tls.cert, "key_file": tls.key}
    if tls.ca:
        block.update({"ca_file": tls.ca, "verify": True})
    elif verify:
        raise ValueError("route TLS needs a CA to verify the other servers (tls.ca)")
    return block


def server_config(
    all_users: Iterable[User],
    *,
    port: int,
    store_dir: Path,
    http_port: int = 0,
    max_payload: int = 0,
    tls: TlsFiles | None = None,
    host: str = "127.0.0.1",
    cluster: ClusterConfig | None = None,
) -> str:
    """nats-server's config: a listener on ``host`` (loopback unless told), JetStream store,
    users; nobody anonymous. The HTTP monitoring port, when given, listens on ``host`` too.
    With ``cluster`` it is one node of a cluster (routes, server name, route TLS).

    Written as JSON, which nats-server's config syntax accepts, so every value is
    quoted exactly once and no password can be read as a variable or an include.
    """
    config: dict[str, object] = {
        "listen": f"{host}:{port}",
        "jetstream": {"store_dir": str(store_dir)},
        "authorization": {
            "users": [
                {"user": u.name, "password": u.password, "permissions": u.permissions.as_config()}
                for u in all_users
            ]
        },
    }
    if http_port:
        config["http"] = f"{host}:{http_port}"
    if max_payload:
        config["max_payload"] = max_payload
    if tls is not None:
        config["tls"] = _tls_block(tls)
    if cluster is not None:
        config["server_name"] = cluster.server_name  # JetStream clustering needs a stable one
        config["cluster"] = cluster_block(cluster)
    return json.dumps(config, indent=2) + "\n"
