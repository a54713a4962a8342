"""JetStream state as metrics: queue depth per type and lane, stream sizes, dead letters per type.

A type's queue is its three lanes' consumers (``foundry.names``): the per-type
figures are their sums; ``foundry_queue_lane_pending`` has them one by one.

Read from ``consumer_info`` / ``stream_info`` (one small request each) every
``FOUNDRY_HOST_INTERVAL`` and cached; a scrape never waits on NATS. When the
broker does not answer, the last good figures stay until the next refresh
succeeds and ``foundry_jetstream_up`` says 0.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from nats.js import JetStreamContext
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from foundry.names import LANES, Names
from monitor.labels import AgentTypes

log = logging.getLogger(__name__)
REQUEST_TIMEOUT = 2.0


@dataclass(frozen=True)
class QueueState:
    pending: int
    ack_pending: int
    redelivered: int
    waiting: int


@dataclass(frozen=True)
class StreamState:
    messages: int
    bytes: int
    consumers: int
    last_seq: int


class JetStreamStats(Collector):
    """The latest consumer and stream state, refreshed by :meth:`refresh`."""

    def __init__(self, names: Names, types: AgentTypes) -> None:
        self.names = names
        self.types = types
        self.queues: dict[str, QueueState] = {}
        self.lanes: dict[tuple[str, str], int] = {}  # (agent type, lane) → pending
        self.streams: dict[str, StreamState] = {}
        self.dead_letters: dict[str, int] = {}
        self.up = False

    async def refresh(self, js: JetStreamContext) -> None:
        """Read consumer and stream info; marks ``up`` False when NATS does not answer."""
        try:
            await asyncio.wait_for(self._read(js), REQUEST_TIMEOUT * 4)
            self.up = True
        except Exception as exc:
            log.debug("jetstream stats not read: %r", exc)
            self.up = False

    async def _read(self, js: JetStreamContext) -> None:
        names = self.names
        streams = (names.tasks_stream, names.events_stream, names.dead_stream)
        for stream in (*streams, names.schedules_stream):
            try:
                info = await js.stream_info(stream)
            except Exception as exc:
                if "not found" not in str(exc).lower():
                    raise
                continue
            s = info.state
            self.streams[stream] = StreamState(s.messages, s.bytes, s.consumer_count, s.last_seq)
        for agent_type in list(self.types.known):
            total = [0, 0, 0, 0]
            found = False
            for lane in LANES:
                try:
                    c = await js.consumer_info(
                        names.tasks_stream, names.consumer(agent_type, lane),
                        timeout=REQUEST_TIMEOUT,
                    )  # fmt: skip
                except Exception as exc:
                    if "not found" not in str(exc).lower():
                        raise
                    continue
                found = True
                self.lanes[(agent_type, lane)] = c.num_pending or 0
                figures = (c.num_pending, c.num_ack_pending, c.num_redelivered, c.num_waiting)
                total = [t + (n or 0) for t, n in zip(total, figures, strict=True)]
            if found:
                self.queues[agent_type] = QueueState(*total)
        if names.dead_stream in self.streams:
            dead = await js.stream_info(names.dead_stream, subjects_filter=names.dead("*"))
            counts = dict.fromkeys(self.types.known, 0)
            prefix = names.dead("")
            for subject, n in (dead.state.subjects or {}).items():
                admitted = self.types.admit(subject[len(prefix) :])
                if admitted is not None:
                    counts[admitted] = n
            self.dead_letters = counts

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily(
            "foundry_jetstream_up", "1 when the last JetStream stats request succeeded."
        )
        up.add_metric([], 1 if self.up else 0)
        yield up
        yield from self._queue_metrics()
        yield from self._stream_metrics()

    def _queue_metrics(self) -> Iterable[Metric]:
        labels = ["agent_type"]
        families = {
            "pending": GaugeMetricFamily(
                "foundry_queue_pending", "Tasks waiting for a first delivery.", labels=labels
            ),
            "ack_pending": GaugeMetricFamily(
                "foundry_queue_ack_pending", "Tasks delivered, not yet acknowledged.", labels=labels
            ),
            "redelivered": GaugeMetricFamily(
                "foundry_queue_redelivered",
                "Unacknowledged tasks delivered more than once.",
                labels=labels,
            ),
            "waiting": GaugeMetricFamily(
                "foundry_queue_waiting_pulls",
                "Pull requests waiting (idle fetchers).",
                labels=labels,
            ),
        }
        for agent_type, q in sorted(self.queues.items()):
            for attr, family in families.items():
                family.add_metric([agent_type], getattr(q, attr))
        lanes = GaugeMetricFamily(
            "foundry_queue_lane_pending",
            "Tasks waiting for a first delivery, per priority lane.",
            labels=["agent_type", "priority"],
        )
        for (agent_type, lane), n in sorted(self.lanes.items()):
            lanes.add_metric([agent_type, lane], n)
        yield lanes
        dead = GaugeMetricFamily(
            "foundry_dead_letters", "Tasks in the dead letter stream, per agent type.",
            labels=["agent_type"],
        )  # fmt: skip
        for agent_type, n in sorted(self.dead_letters.items()):
            dead.add_metric([agent_type], n)
        yield from (*families.values(), dead)

    def _stream_metrics(self) -> Iterable[Metric]:
        labels = ["stream"]
        messages = GaugeMetricFamily(
            "foundry_stream_messages", "Messages in the stream.", labels=labels
        )
        size = GaugeMetricFamily("foundry_stream_bytes", "Bytes in the stream.", labels=labels)
        consumers = GaugeMetricFamily(
            "foundry_stream_consumers", "Consumers on the stream.", labels=labels
        )
        received = CounterMetricFamily(
            "foundry_stream_received_messages",
            "Messages ever stored in the stream (its last sequence number).", labels=labels,
        )  # fmt: skip
        for name, s in sorted(self.streams.items()):
            messages.add_metric([name], s.messages)
            size.add_metric([name], s.bytes)
            consumers.add_metric([name], s.consumers)
            received.add_metric([name], s.last_seq)
        yield from (messages, size, consumers, received)
