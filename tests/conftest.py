"""Real servers for the suite: nats-server and redis-server on free loopback ports.

Session fixtures start one of each in a temporary folder (binaries from the
project's own dependencies) and stop them by pid. Both run with authorization,
from the generators ``foundry up`` uses: every test's namespace gets its own
role users on the shared nats-server (``tests/bus.py``), its settings carry
that namespace's admin in ``nats_url`` and the service roles' passwords, and
processes the tests start connect as their role, as under a healer. ``FOUNDRY_TEST_NATS_URL`` /
``FOUNDRY_TEST_REDIS_URL`` point the suite at servers that already run instead;
``FOUNDRY_TEST_DOCKER=1`` runs them in containers via testcontainers (the
``docker`` extra). Fault tests that stop a server always use local processes.
Every test gets its own namespace, so streams, subjects and keys never collide.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import nats
import pytest
import redis.asyncio as aioredis
from aiohttp import ClientSession, web
from aiohttp.test_utils import TestServer
from nats.aio.client import Client as NATS

from foundry.apitokens import create_token
from foundry.connect import connect_nats
from foundry.natsauth import ADMIN, GATEWAY, service_roles
from foundry.provision import provision
from foundry.roles import role_settings
from foundry.settings import Settings
from gateway.app import create_app
from tests.bus import AuthNats, AuthRedis
from tests.procs import ProcessGroup


@pytest.fixture(scope="session")
def server_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("servers")


def _external(var: str) -> str | None:
    return os.environ.get(var) or None


def _docker_wanted() -> bool:
    return os.environ.get("FOUNDRY_TEST_DOCKER") == "1"


@contextlib.contextmanager
def _container(image: str, port: int, ready_log: str, *command: str) -> Iterator[str]:
    """A server in a Docker container (FOUNDRY_TEST_DOCKER=1), yielding host:port."""
    try:
        from testcontainers.core.container import (  # type: ignore[import-not-found]
            DockerContainer,
        )
        from testcontainers.core.waiting_utils import (  # type: ignore[import-not-found]
            wait_for_logs,
        )
    except ImportError:
        pytest.fail("FOUNDRY_TEST_DOCKER=1 needs testcontainers: pip install -e '.[docker]'")
    container = DockerContainer(image).with_exposed_ports(port)
    if command:
        container = container.with_command(" ".join(command))
    try:
        container.start()
    except Exception as exc:
        pytest.fail(f"FOUNDRY_TEST_DOCKER=1 but no Docker engine answered: {exc}")
    try:
        wait_for_logs(container, ready_log, timeout=60)
        yield f"{container.get_container_host_ip()}:{container.get_exposed_port(port)}"
    finally:
        container.stop()


@pytest.fixture(scope="session")
def nats_bus(server_root: Path) -> Iterator[AuthNats | None]:
    """The suite's nats-server with per-namespace role users (None for external servers)."""
    if _external("FOUNDRY_TEST_NATS_URL") or _docker_wanted():
        yield None
        return
    bus = AuthNats(server_root / "nats").start()
    try:
        yield bus
    finally:
        bus.stop()


@pytest.fixture(scope="session")
def nats_url(nats_bus: AuthNats | None) -> Iterator[str]:
    if nats_bus is not None:
        yield nats_bus.url
        return
    url = _external("FOUNDRY_TEST_NATS_URL")
    if url:
        yield url
        return
    with _container("nats:2.10", 4222, "Server is ready", "-js") as where:
        yield f"nats://{where}"


@pytest.fixture(scope="session")
def redis_url(server_root: Path) -> Iterator[str]:
    url = _external("FOUNDRY_TEST_REDIS_URL")
    if url:
        yield url
        return
    if _docker_wanted():
        with _container("redis:7", 6379, "Ready to accept connections") as where:
            yield f"redis://{where}/0"
        return
    server = AuthRedis(server_root / "redis").start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[AuthRedis]:
    """A redis-server for this test alone, for outage tests (stop / start it at will)."""
    server = AuthRedis(tmp_path / "own-redis").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[AuthNats]:
    """A nats-server for this test alone, for broker restart tests: make_settings(bus=own_nats)."""
    bus = AuthNats(tmp_path / "own-nats").start()
    try:
        yield bus
    finally:
        bus.stop()


TEST_FLEET = {"coder": 1, "architect": 1, "executor": 1, "critic": 1, "deployer": 1}
TEST_HOST = "host-a"  # FOUNDRY_HOST_ID of the tests' healers: their slots are <type>-<n>@host-a


class ApiTokens:
    """A token file for this test, with an admin token; ``make`` adds narrower ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.admin = create_token(path, "test-admin", ["admin"])

    def make(self, name: str, *scopes: str) -> str:
        return create_token(self.path, name, list(scopes))

    @staticmethod
    def header(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def api_tokens(tmp_path: Path) -> ApiTokens:
    return ApiTokens(tmp_path / "secrets" / "api-tokens.jsonl")


def _drop_streams(made: list[Settings]) -> None:
    """Delete the streams of each namespace a test made on the session's nats-server.

    A stream's byte limit is reserved against the server's storage whether used or
    not, so namespaces left behind (a healer provisioned them) would use it up.
    Runs in its own thread and loop (a fixture teardown has none), bounded in time.
    """

    async def drop(settings: Settings) -> None:
        names = settings.names
        conn = await nats.connect(
            settings.nats_url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0
        )
        try:
            js = conn.jetstream(timeout=1)
            for stream in (names.tasks_stream, names.events_stream, names.dead_stream,
                           names.schedules_stream, names.kv_stream(names.workflow_bucket),
                           names.kv_stream(names.lease_bucket)):  # fmt: skip
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)
        finally:
            await conn.close()

    async def drop_all() -> None:
        for settings in made:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(drop(settings), 5)

    if made:
        sweeper = threading.Thread(target=asyncio.run, args=(drop_all(),), daemon=True)
        sweeper.start()
        sweeper.join(5 * len(made) + 5)


@pytest.fixture
def make_settings(
    nats_url: str,
    redis_url: str,
    nats_bus: AuthNats | None,
    tmp_path: Path,
    api_tokens: ApiTokens,
) -> Iterator[Callable[..., Settings]]:
    """Settings for a fresh namespace, quick timings, the test's token file; keyword
    overrides win.

    ``bus=`` names another :class:`AuthNats` to register the namespace on; an explicit
    ``nats_url`` is taken as it is.
    """
    registered: set[int] = set()

    def make(**overrides: Any) -> Settings:
        bus: AuthNats | None = overrides.pop("bus", nats_bus)
        base: dict[str, Any] = {
            "nats_url": nats_url,
            "redis_url": redis_url,
            "namespace": "t" + uuid.uuid4().hex[:10],
            "host_id": TEST_HOST,
            "fleet": dict(TEST_FLEET),
            "data_dir": tmp_path / "data",
            "ack_wait": 5.0,
            "heartbeat_interval": 0.2,
            "silence_timeout": 1.5,
            "drain_timeout": 5.0,
            "connect_timeout": 10.0,
            "retry_delay": 0.5,
            "gateway_port": 0,
            "healer_port": 0,
            "monitor_port": 0,
            # The built-in roles default to llm/exec/webhook; flow tests want plain echo.
            "handlers": dict.fromkeys(TEST_FLEET, "echo"),
            "api_tokens": str(api_tokens.path),
            # JetStream reserves each stream's byte limit on the shared server: keep every
            # test's streams small, or a few hundred namespaces exhaust its storage.
            "tasks_max_bytes": 32 * 1024**2,
            "events_max_bytes": 16 * 1024**2,
            "dead_max_bytes": 16 * 1024**2,
            "schedules_max_bytes": 16 * 1024**2,
        }
        base.update(overrides)
        if bus is not None and "nats_url" not in overrides:
            namespace, types = base["namespace"], list(base["fleet"])
            # a new test drops the users of earlier ones; this test's namespaces stay
            passwords = bus.register(namespace, types, keep=id(bus) in registered)
            registered.add(id(bus))
            base["nats_url"] = bus.url_for(namespace, ADMIN)
            base["nats_role_passwords"] = {r: passwords[r] for r in service_roles(types)}
        made = Settings(**base)
        if bus is not None and bus is nats_bus and "nats_url" not in overrides:
            on_session_server.append(made)
        return made

    on_session_server: list[Settings] = []
    yield make
    _drop_streams(on_session_server)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def nc(settings: Settings) -> AsyncIterator[NATS]:
    conn = await connect_nats(settings, "test")
    await provision(conn.jetstream(), settings)
    try:
        yield conn
    finally:
        js = conn.jetstream()
        names = settings.names
        for stream in (
            names.tasks_stream,
            names.events_stream,
            names.dead_stream,
            names.kv_stream(names.workflow_bucket),
            names.kv_stream(names.lease_bucket),
            names.schedules_stream,
        ):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await conn.close()


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(f"{settings.names.key_prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


class RunningApp:
    """An aiohttp app served on a real loopback port, with an HTTP session (admin token)."""

    def __init__(self, server: TestServer, session: ClientSession) -> None:
        self.server = server
        self.http = session

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))


Gateway = RunningApp

A = TypeVar("A", bound=RunningApp)


@pytest.fixture
async def serve_app(
    api_tokens: ApiTokens,
) -> AsyncIterator[Callable[[web.Application, type[A]], Awaitable[A]]]:
    """Start apps on loopback ports for this test; all are closed at teardown."""
    started: list[RunningApp] = []

    async def start(app: web.Application, kind: type[A]) -> A:
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        running = kind(server, ClientSession(headers=api_tokens.header(api_tokens.admin)))
        started.append(running)
        return running

    yield start
    for running in started:
        await running.http.close()
        await running.server.close()


@pytest.fixture
def make_gateway(serve_app: Any) -> Callable[[Settings], Awaitable[Gateway]]:
    async def start(settings: Settings) -> Gateway:
        # as under a healer: streams and consumers exist before the gateway starts
        conn = await connect_nats(settings, "provision")
        try:
            await provision(conn.jetstream(), settings)
        finally:
            await conn.close()
        gw: Gateway = await serve_app(create_app(role_settings(settings, GATEWAY)), Gateway)
        return gw

    return start


@pytest.fixture
async def gateway(
    settings: Settings, nc: NATS, redis: aioredis.Redis, make_gateway: Any
) -> Gateway:
    gw: Gateway = await make_gateway(settings)
    return gw


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessGroup]:
    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()


async def eventually(check: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``check`` (sync or async) until it returns truthy, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
