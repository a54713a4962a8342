"""Idempotent provisioning of streams and per-type durable pull consumers.

The server defaults are unsafe for a task queue (unlimited ``max_deliver``,
``max_ack_pending`` 1000 shared by everything): both are set on purpose here.
Re-running with the same settings changes nothing and writes nothing (so a
role allowed only to read stream and consumer info can run it); changed
settings update the existing stream or consumer in place, never recreate it.
Every stream is bounded in bytes and in message size.

Replicas (``FOUNDRY_STREAM_REPLICAS``): a set value is applied to every stream,
up or down; unset (0) means 3 when the server's INFO shows a cluster of at least
three servers, else 1, and never lowers what a stream already has (a process that
saw fewer servers does not shrink a stream).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable
from typing import Any

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, NotFoundError

from foundry.errors import ProvisioningError
from foundry.settings import Settings

log = logging.getLogger(__name__)

# Room for headers (Nats-Msg-Id, trace ids) and the JSON around a payload.
MSG_HEADROOM = 64 * 1024
# A dead letter carries the task's payload as a JSON string: escaping may grow it.
DEAD_LETTER_GROWTH = 6


def task_msg_bytes(settings: Settings) -> int:
    """Largest message on AGENT_TASKS and AGENT_EVENTS."""
    return settings.max_task_bytes + MSG_HEADROOM


def dead_msg_bytes(settings: Settings) -> int:
    """Largest message on AGENT_DEAD (a whole task, escaped, plus evidence)."""
    return DEAD_LETTER_GROWTH * settings.max_task_bytes + MSG_HEADROOM


def max_payload(settings: Settings) -> int:
    """The embedded nats-server's max_payload: room for the largest stream message."""
    return max(1024 * 1024, task_msg_bytes(settings), dead_msg_bytes(settings))


AUTO_REPLICAS = 3


def cluster_size(server_info: dict[str, Any]) -> int:
    """How many servers a server's INFO shows: its ``connect_urls`` (every server of the
    cluster, itself included) when it names a cluster, else 1. Servers started with
    ``no_advertise`` list none: set FOUNDRY_STREAM_REPLICAS for those."""
    if not server_info.get("cluster"):
        return 1
    return max(1, len(set(server_info.get("connect_urls") or ())))


def auto_replicas(server_info: dict[str, Any]) -> int:
    """The replicas an unset ``FOUNDRY_STREAM_REPLICAS`` stands for (also for KV buckets)."""
    return AUTO_REPLICAS if cluster_size(server_info) >= AUTO_REPLICAS else 1


def stream_replicas(settings: Settings, server_info: dict[str, Any]) -> int:
    return settings.stream_replicas or auto_replicas(server_info)


def stream_configs(settings: Settings, replicas: int = 1) -> list[StreamConfig]:
    names = settings.names
    configs = [
        StreamConfig(
            name=names.tasks_stream,
            subjects=[names.tasks()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            max_msgs_per_subject=settings.max_queue_per_type,
            duplicate_window=settings.duplicate_window,
            max_bytes=settings.tasks_max_bytes,
            max_msg_size=task_msg_bytes(settings),
        ),
        StreamConfig(
            name=names.events_stream,
            subjects=[names.events()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=settings.events_max_age,
            max_msgs=1_000_000,
            max_bytes=settings.events_max_bytes,
            max_msg_size=task_msg_bytes(settings),
        ),
        StreamConfig(
            name=names.dead_stream,
            subjects=[names.dead()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs=100_000,
            max_bytes=settings.dead_max_bytes,
            max_msg_size=dead_msg_bytes(settings),
        ),
    ]
    for config in configs:
        config.num_replicas = replicas
    return configs


LEASE_BUCKET_BYTES = 1024 * 1024
LEASE_VALUE_BYTES = 4096


def _bucket(bucket: str, **limits: Any) -> StreamConfig:
    """A JetStream KV bucket's stream, as nats-py's create_key_value makes it (history 1)."""
    return StreamConfig(
        name=f"KV_{bucket}",
        subjects=[f"$KV.{bucket}.>"],
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=1,
        allow_rollup_hdrs=True,
        deny_delete=True,
        allow_direct=True,
        duplicate_window=120.0,
        **limits,
    )


def bucket_configs(settings: Settings) -> list[StreamConfig]:
    """The workflow state bucket (kept FOUNDRY_RESULT_TTL after each change) and the lease
    bucket (each lease a key with a per-message TTL: it vanishes when not renewed)."""
    names = settings.names
    return [
        _bucket(
            names.workflow_bucket,
            max_age=float(settings.result_ttl),
            max_bytes=settings.workflows_max_bytes,
            max_msg_size=dead_msg_bytes(settings),
        ),
        _bucket(
            names.lease_bucket,
            allow_msg_ttl=True,
            max_bytes=LEASE_BUCKET_BYTES,
            max_msg_size=LEASE_VALUE_BYTES,
        ),
    ]


def consumer_config(settings: Settings, agent_type: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=settings.names.consumer(agent_type),
        filter_subject=settings.names.tasks(agent_type),
        ack_policy=AckPolicy.EXPLICIT,
        deliver_policy=DeliverPolicy.ALL,
        ack_wait=settings.ack_wait,
        max_deliver=settings.max_deliver,
        max_ack_pending=settings.max_ack_pending,
        max_waiting=512,
    )


# A request the server refuses for lack of permission gets no reply at all.
_NO_ANSWER = (asyncio.TimeoutError, nats.errors.TimeoutError)


async def _create(what: str, call: Awaitable[Any]) -> None:
    try:
        await call
    except _NO_ANSWER:
        raise ProvisioningError(
            f"{what} does not exist and creating it got no answer: start the healer (it "
            "provisions), or connect as a user allowed to create it"
        ) from None


async def _update(what: str, changed: list[str], call: Awaitable[Any]) -> None:
    try:
        await call
        log.info("updated %s (%s)", what, ", ".join(changed))
    except _NO_ANSWER:
        log.warning(
            "%s differs from these settings (%s) but updating it got no answer (this user may "
            "not provision); using it as it is",
            what,
            ", ".join(changed),
        )


def differs(want: Any, have: Any) -> list[str]:
    """The fields ``want`` sets (left neither None nor at the default) that ``have`` lacks."""
    out = []
    for f in dataclasses.fields(want):
        value = getattr(want, f.name)
        if value is None or (f.default is not dataclasses.MISSING and value == f.default):
            continue  # the server's own default
        if getattr(have, f.name, None) != value:
            out.append(f.name)
    return out


async def ensure_streams(
    js: JetStreamContext,
    settings: Settings,
    configs: list[StreamConfig] | None = None,
    replicas: int | None = None,
) -> None:
    """Create AGENT_TASKS, AGENT_EVENTS and AGENT_DEAD (or ``configs``), or update them
    where they differ.

    ``replicas`` defaults to the settings' (or, unset, what the connected server shows).
    """
    if replicas is None:
        replicas = stream_replicas(settings, js._nc._server_info)
    for config in stream_configs(settings, replicas) if configs is None else configs:
        assert config.name is not None
        if config.num_replicas is None:  # KV buckets: the same replicas as the streams
            config.num_replicas = replicas
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await _create(f"stream {config.name}", js.add_stream(config))
                log.info("created stream %s (%d replica(s))", config.name, replicas)
                continue
            except BadRequestError:
                info = await js.stream_info(config.name)  # created concurrently
        have = info.config.num_replicas or 1
        if not settings.stream_replicas and have > replicas:
            config.num_replicas = have  # unset: never shrink a stream
        changed = differs(config, info.config)
        if config.num_replicas != have and "num_replicas" not in changed:
            changed.append("num_replicas")
        if changed:
            await _update(f"stream {config.name}", changed, js.update_stream(config))


async def ensure_buckets(js: JetStreamContext, settings: Settings) -> None:
    """Create the workflow and lease KV buckets, or update them where they differ. The
    orchestrator does this at start, so only clusters that run workflows hold them (a
    bucket's byte limit is reserved in JetStream's storage)."""
    await ensure_streams(js, settings, bucket_configs(settings))


async def ensure_consumer(js: JetStreamContext, settings: Settings, agent_type: str) -> None:
    """Create the durable pull consumer ``workers-<type>``, or update it where it differs."""
    config = consumer_config(settings, agent_type)
    stream = settings.names.tasks_stream
    assert config.durable_name is not None
    try:
        info = await js.consumer_info(stream, config.durable_name)
    except NotFoundError:
        await _create(f"consumer {config.durable_name}", js.add_consumer(stream, config))
        return
    changed = differs(config, info.config)
    if changed:
        await _update(f"consumer {config.durable_name}", changed, js.add_consumer(stream, config))


async def provision(
    js: JetStreamContext, settings: Settings, types: list[str] | None = None
) -> None:
    """Streams plus one consumer per agent type (default: the fleet's types)."""
    await ensure_streams(js, settings)
    for agent_type in types if types is not None else settings.agent_types:
        await ensure_consumer(js, settings, agent_type)
