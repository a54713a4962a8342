"""Idempotent provisioning of streams and per-type durable pull consumers.

The server defaults are unsafe for a task queue (unlimited ``max_deliver``,
``max_ack_pending`` 1000 shared by everything): both are set on purpose here.
Re-running with the same settings changes nothing; changed settings update
the existing stream or consumer in place.
"""

from __future__ import annotations

import logging

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

from foundry.settings import Settings

log = logging.getLogger(__name__)


def stream_configs(settings: Settings) -> list[StreamConfig]:
    names = settings.names
    return [
        StreamConfig(
            name=names.tasks_stream,
            subjects=[names.tasks()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            discard=DiscardPolicy.NEW,
            discard_new_per_subject=True,
            max_msgs_per_subject=settings.max_queue_per_type,
            duplicate_window=settings.duplicate_window,
        ),
        StreamConfig(
            name=names.events_stream,
            subjects=[names.events()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_age=settings.events_max_age,
            max_msgs=1_000_000,
            max_bytes=512 * 1024 * 1024,
        ),
        StreamConfig(
            name=names.dead_stream,
            subjects=[names.dead()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            max_msgs=100_000,
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


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update AGENT_TASKS, AGENT_EVENTS and AGENT_DEAD."""
    for config in stream_configs(settings):
        assert config.name is not None
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(config)
                log.info("created stream %s", config.name)
                continue
            except BadRequestError:
                pass  # created concurrently by another service; update below
        await js.update_stream(config)


async def ensure_consumer(js: JetStreamContext, settings: Settings, agent_type: str) -> None:
    """Create or update the durable pull consumer ``workers-<type>``."""
    await js.add_consumer(settings.names.tasks_stream, consumer_config(settings, agent_type))


async def provision(
    js: JetStreamContext, settings: Settings, types: list[str] | None = None
) -> None:
    """Streams plus one consumer per agent type (default: the fleet's types)."""
    await ensure_streams(js, settings)
    for agent_type in types if types is not None else settings.agent_types:
        await ensure_consumer(js, settings, agent_type)
