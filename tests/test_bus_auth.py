"""The bus is locked: nobody anonymous, and each role can do its job and no more.

Every test runs against the suite's nats-server with the allow-lists a
``foundry up`` cluster gets (generated for the test's namespace), and checks
both sides: what the role needs goes through, what it must not do is refused
by the server (a permissions violation) and has no effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from foundry.connect import connect_nats
from foundry.natsauth import ADMIN, CLIENT, GATEWAY, HEALER, MONITOR, inbox_prefix, worker_role
from foundry.settings import Settings
from tests.bus import AuthNats, nats_login_ok
from tests.conftest import eventually


class Conn:
    """A connection as one role, with the errors the server sent it."""

    def __init__(self, nc: NATS, errors: list[str]) -> None:
        self.nc = nc
        self.errors = errors
        self.js = nc.jetstream(timeout=1.0)

    async def refused(self, subject: str) -> None:
        """Wait for the server's permissions violation naming ``subject``."""
        want = subject.lower()

        def seen() -> bool:
            return any("permissions violation" in e and want in e for e in self.errors)

        await eventually(seen, 5)

    async def publish_refused(self, subject: str, payload: bytes = b"{}") -> None:
        await self.nc.publish(subject, payload)
        await self.nc.flush()
        await self.refused(subject)

    async def api_refused(self, subject: str, call: Awaitable[Any]) -> None:
        with pytest.raises(asyncio.TimeoutError):
            await call
        await self.refused(subject)


@pytest.fixture
async def connect_as(
    settings: Settings, nats_bus: AuthNats | None, nc: NATS
) -> AsyncIterator[Callable[[str], Awaitable[Conn]]]:
    """Connect as a role of the test's namespace (its streams exist: ``nc`` provisioned)."""
    if nats_bus is None:
        pytest.skip("permission tests need the suite's own nats-server (not FOUNDRY_TEST_NATS_URL)")
    opened: list[NATS] = []

    async def connect(role: str) -> Conn:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        as_role = dataclasses.replace(
            settings,
            nats_url=nats_bus.url_for(settings.namespace, role),
            nats_inbox_prefix=inbox_prefix(settings.names, role),
        )
        conn = await connect_nats(as_role, f"test-{role}", error_cb=on_error)
        opened.append(conn)
        return Conn(conn, errors)

    yield connect
    for conn in opened:
        with contextlib.suppress(Exception):
            await conn.close()


class Seen:
    """What the admin saw on a subject."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []

    async def add(self, msg: Msg) -> None:
        self.msgs.append(msg)


async def watching(nc: NATS, subject: str) -> Seen:
    seen = Seen()
    await nc.subscribe(subject, cb=seen.add)
    await nc.flush()
    return seen


async def test_anonymous_and_wrong_passwords_are_refused(
    nats_bus: AuthNats | None, settings: Settings
) -> None:
    if nats_bus is None:
        pytest.skip("needs the suite's own nats-server")
    # Given the suite's nats-server, Then no credentials, or a wrong password, get nowhere
    assert not await asyncio.to_thread(nats_login_ok, nats_bus.port)
    user = f"{settings.namespace}-{CLIENT}"
    assert not await asyncio.to_thread(nats_login_ok, nats_bus.port, user, "wrong")
    assert not await asyncio.to_thread(nats_login_ok, nats_bus.port, "admin", "admin")


async def test_worker_works_only_for_its_own_type(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    names = settings.names
    coder = await connect_as(worker_role("coder"))
    beats = await watching(nc, names.heartbeat())
    # A worker heartbeats and announces its own type's tasks
    await coder.nc.publish(names.heartbeat("coder", "coder-0"), b"{}")
    await coder.nc.publish(names.task_event("completed", "coder"), b"{}")
    await coder.nc.flush()
    await eventually(lambda: beats.msgs, 5)
    # and fetches and acks from its own consumer
    await nc.jetstream().publish(names.tasks("coder"), b"job", headers={"Nats-Msg-Id": "w-1"})
    psub = await coder.js.pull_subscribe_bind(
        durable=names.consumer("coder"), stream=names.tasks_stream
    )
    (msg,) = await psub.fetch(1, timeout=5)
    await msg.ack()
    await coder.nc.flush()
    # When it tries another type's heartbeat, task events, consumer, or the healer's work
    await coder.publish_refused(names.heartbeat("critic", "critic-0"))
    await coder.publish_refused(names.task_event("completed", "critic"))
    await coder.publish_refused(names.task_event("queued", "coder"))
    await coder.publish_refused(names.heal_event("relaunch"))
    await coder.publish_refused(names.tasks("coder"))
    await coder.publish_refused(names.worker_control("critic"))
    ack = f"$JS.ACK.{names.tasks_stream}.{names.consumer('critic')}.1.1.1.0.0"
    await coder.publish_refused(ack, b"+ACK")
    critic_next = f"$JS.API.CONSUMER.MSG.NEXT.{names.tasks_stream}.{names.consumer('critic')}"
    await coder.api_refused(critic_next, coder.nc.request(critic_next, b"{}", timeout=1))
    delete = f"$JS.API.STREAM.DELETE.{names.tasks_stream}"
    await coder.api_refused(delete, coder.js.delete_stream(names.tasks_stream))
    # and to listen to what is not its own
    await coder.nc.subscribe(names.heartbeat())
    await coder.refused(names.heartbeat())
    await coder.nc.subscribe(names.worker_control("critic"))
    await coder.refused(names.worker_control("critic"))
    # Then only its own heartbeat went through
    assert [m.subject for m in beats.msgs] == [names.heartbeat("coder", "coder-0")]


async def test_client_submits_and_reads_but_cannot_ack_delete_or_touch_consumers(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    names, stream = settings.names, settings.names.tasks_stream
    client = await connect_as(CLIENT)
    worker = await connect_as(worker_role("coder"))
    healer = await connect_as(HEALER)
    # A client submits with a request and gets the stream's ack (what `nats req` does)
    reply = await client.nc.request(names.tasks("coder"), b"from client", timeout=5)
    assert b'"seq"' in reply.data
    # reads the task stream's state, events and heartbeats
    assert (await client.js.stream_info(stream)).state.messages == 1
    await client.nc.subscribe(names.events())
    await client.nc.subscribe(names.heartbeat())

    # and asks the healer's read-only questions (the healer answers)
    async def answer(msg: Msg) -> None:
        await msg.respond(b'{"ok": true}')

    await healer.nc.subscribe(names.control("ping"), cb=answer)
    await healer.nc.flush()
    pong = await client.nc.request(names.control("ping"), b"{}", timeout=5)
    assert pong.data == b'{"ok": true}'
    # When a worker holds the task and the client tries to ack it for the worker
    psub = await worker.js.pull_subscribe_bind(durable=names.consumer("coder"), stream=stream)
    (msg,) = await psub.fetch(1, timeout=5)
    assert msg.reply
    await client.publish_refused(msg.reply, b"+ACK")
    # Then the task is still unacknowledged
    info = await nc.jetstream().consumer_info(stream, names.consumer("coder"))
    assert info.num_ack_pending == 1
    # and the client may not delete the stream, touch consumers, heal, or forge anything
    api = "$JS.API"
    await client.api_refused(f"{api}.STREAM.DELETE.{stream}", client.js.delete_stream(stream))
    consumer = names.consumer("coder")
    await client.api_refused(
        f"{api}.CONSUMER.DELETE.{stream}.{consumer}", client.js.delete_consumer(stream, consumer)
    )
    await client.api_refused(
        f"{api}.CONSUMER.INFO.{stream}.{consumer}", client.js.consumer_info(stream, consumer)
    )
    await client.api_refused(f"{api}.STREAM.PURGE.{stream}", client.js.purge_stream(stream))
    await client.api_refused(
        f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        client.nc.request(f"{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}", b"{}", timeout=1),
    )
    await client.publish_refused(names.control("heal"))
    await client.publish_refused(names.heal_event("quarantine"))
    await client.publish_refused(names.heartbeat("coder", "coder-0"))
    await client.publish_refused(names.task_event("completed", "coder"))
    await client.publish_refused(names.dead("coder"))
    await client.publish_refused(names.max_deliveries_advisory("coder"))
    # nor read the replies meant for a service
    worker_inbox = f"{inbox_prefix(names, worker_role('coder'))}.>"
    await client.nc.subscribe(worker_inbox)
    await client.refused(worker_inbox)


async def test_only_the_healer_publishes_heal_events_and_answers_control(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    names = settings.names
    heal = await watching(nc, names.heal_event(">"))
    # The healer publishes heal events and answers control requests
    healer = await connect_as(HEALER)
    await healer.nc.publish(names.heal_event("relaunch"), b"{}")
    await healer.nc.flush()
    await eventually(lambda: heal.msgs, 5)
    # When every other role tries to publish one, or to listen where requests arrive
    for role in (GATEWAY, MONITOR, CLIENT, worker_role("coder")):
        other = await connect_as(role)
        await other.publish_refused(names.heal_event("quarantine"))
        await other.nc.subscribe(names.control("heal"))
        await other.refused(names.control("heal"))
    # Then only the healer's event was delivered
    assert [m.subject for m in heal.msgs] == [names.heal_event("relaunch")]
    # and a role that may subscribe to requests' subjects cannot answer into a client's inbox
    client = await connect_as(CLIENT)
    gateway = await connect_as(GATEWAY)
    await gateway.publish_refused("_INBOX.forged-reply")
    assert client.errors == []


async def test_services_do_their_jobs_and_no_more(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    names, stream = settings.names, settings.names.tasks_stream
    gateway = await connect_as(GATEWAY)
    monitor = await connect_as(MONITOR)
    healer = await connect_as(HEALER)
    # The gateway submits through JetStream and announces queued tasks
    ack = await gateway.js.publish(names.tasks("coder"), b"x", headers={"Nats-Msg-Id": "g-1"})
    assert ack.seq == 1
    await gateway.nc.publish(names.task_event("queued", "coder"), b"{}")
    assert (await gateway.js.consumer_info(stream, names.consumer("coder"))).num_pending == 1
    # but cannot finish tasks, fetch them, or change streams
    await gateway.publish_refused(names.task_event("completed", "coder"))
    nxt = f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{names.consumer('coder')}"
    await gateway.api_refused(nxt, gateway.nc.request(nxt, b"{}", timeout=1))
    await gateway.api_refused(f"$JS.API.STREAM.DELETE.{stream}", gateway.js.delete_stream(stream))
    # The monitor publishes host samples and reads JetStream state, nothing more
    await monitor.nc.publish(names.host("box"), b"{}")
    assert (await monitor.js.stream_info(names.events_stream)).config.name
    await monitor.publish_refused(names.tasks("coder"))
    await monitor.publish_refused(names.task_event("dead", "coder"))
    # The healer reads and deletes a task to dead-letter it, but submits none
    raw = await healer.js.get_msg(stream, 1)
    await healer.js.publish(names.dead("coder"), raw.data or b"")
    assert await healer.js.delete_msg(stream, 1)
    await healer.publish_refused(names.tasks("coder"))
    await healer.publish_refused(names.heartbeat("coder", "coder-0"))
    await healer.api_refused(f"$JS.API.STREAM.DELETE.{stream}", healer.js.delete_stream(stream))
    # Nobody, not even an admin, may forge a server advisory
    admin = await connect_as(ADMIN)
    await admin.publish_refused(names.max_deliveries_advisory("coder"))
    for role in (monitor, healer):
        await role.publish_refused(f"$JS.EVENT.ADVISORY.API.{stream}")


async def test_a_namespace_cannot_reach_another(
    connect_as: Callable[[str], Awaitable[Conn]], make_settings: Callable[..., Settings]
) -> None:
    # Given a second namespace on the same server
    other = make_settings().names
    # When a worker and a client of the first reach into it, Then they are refused
    worker = await connect_as(worker_role("coder"))
    await worker.publish_refused(other.heartbeat("coder", "coder-0"))
    client = await connect_as(CLIENT)
    await client.publish_refused(other.tasks("coder"))
    await client.api_refused(
        f"$JS.API.STREAM.INFO.{other.tasks_stream}", client.js.stream_info(other.tasks_stream)
    )


async def test_redis_wants_the_password_and_keeps_to_the_key_prefix(settings: Settings) -> None:
    if "@" not in settings.redis_url:
        pytest.skip("FOUNDRY_TEST_REDIS_URL has no credentials")
    # Without the password nothing is allowed
    host = settings.redis_url.rsplit("@", 1)[1]
    anonymous = aioredis.Redis.from_url(f"redis://{host}")
    with pytest.raises((AuthenticationError, ResponseError)):
        await anonymous.ping()
    await anonymous.aclose()
    # With it, the cluster's keys are reachable and nothing else is
    client = aioredis.Redis.from_url(settings.redis_url)
    try:
        key = f"{settings.names.key_prefix}:task:probe"
        assert await client.set(key, "1", ex=10)
        await client.delete(key)
        with pytest.raises(NoPermissionError):
            await client.set("elsewhere:key", "1")
        for command in (("FLUSHALL",), ("CONFIG", "GET", "dir"), ("KEYS", "*")):
            with pytest.raises(NoPermissionError):
                await client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


async def test_a_service_started_with_the_role_passwords_connects_as_its_role(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    # Given the environment another host gets from cluster.env (every service role's password)
    assert settings.nats_role_passwords
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc).lower())

    beats = await watching(nc, settings.names.heartbeat())
    # When a worker connects by its role's name, Then it is worker-coder: its beat goes through
    worker = await connect_nats(settings, worker_role("coder"), error_cb=on_error)
    try:
        await worker.publish(settings.names.heartbeat("coder", "coder-9"), b"{}")
        await worker.publish(settings.names.heal_event("relaunch"), b"{}")
        await worker.flush()
        await eventually(lambda: beats.msgs, 5)
        # and it has no more than a worker's rights
        await eventually(lambda: any("permissions violation" in e for e in errors), 5)
    finally:
        await worker.close()


async def test_the_gateway_reads_dead_letters_and_replays_them_and_the_client_cannot(
    connect_as: Callable[[str], Awaitable[Conn]], nc: NATS, settings: Settings
) -> None:
    names, dead = settings.names, settings.names.dead_stream
    await nc.jetstream().publish(names.dead("coder"), b'{"task_id": "d-1"}')
    gateway = await connect_as(GATEWAY)
    client = await connect_as(CLIENT)
    # The gateway reads AGENT_DEAD through a short-lived consumer, as the dead listing does
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, filter_subject=names.dead("*"))
    psub = await gateway.js.pull_subscribe(names.dead("*"), stream=dead, config=config)
    (msg,) = await psub.fetch(1, timeout=5)
    assert msg.data == b'{"task_id": "d-1"}'
    consumer = (await psub.consumer_info()).name
    await psub.unsubscribe()
    assert await gateway.js.delete_consumer(dead, consumer)
    # and publishes a replay on the task subjects
    ack = await gateway.js.publish(names.tasks("coder"), b"again", headers={"Nats-Msg-Id": "r-1"})
    assert ack.stream == names.tasks_stream
    # but may not write dead letters, delete them or change the stream
    await gateway.publish_refused(names.dead("coder"))
    await gateway.api_refused(f"$JS.API.STREAM.MSG.DELETE.{dead}", gateway.js.delete_msg(dead, 1))
    await gateway.api_refused(f"$JS.API.STREAM.PURGE.{dead}", gateway.js.purge_stream(dead))
    # When the client tries to read the dead letters the same way, or one by one
    create = f"$JS.API.CONSUMER.CREATE.{dead}"
    await client.api_refused(
        create, client.js.add_consumer(dead, ConsumerConfig(ack_policy=AckPolicy.NONE))
    )
    await client.api_refused(f"$JS.API.STREAM.MSG.GET.{dead}", client.js.get_msg(dead, 1))
    # Then it is refused, and the letter is still there
    assert (await nc.jetstream().stream_info(dead)).state.messages == 1
