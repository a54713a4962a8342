"""Publishing a task that must not start before a given time, as a JetStream message schedule.

The task waits on AGENT_SCHEDULES under ``agents.schedule.at.<type>.<task id>`` with
``Nats-Schedule: @at <RFC 3339>``; at that time the server stores a copy on
``agents.schedule.due.<type>[.<lane>]``, which AGENT_TASKS sources into the lane
(see :mod:`foundry.provision`). The copy keeps every header but ``Nats-Msg-Id``, so
the task's id travels in ``Foundry-Task-Id``.

AGENT_SCHEDULES must discard its oldest messages when full (JetStream allows
schedules on no other kind of stream), which would drop a waiting task: a new
schedule is refused instead while the stream is nearly full.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from nats.js import JetStreamContext

from foundry.contracts import MSG_ID_HEADER, NOT_BEFORE_HEADER, TASK_ID_HEADER, Task
from foundry.errors import FoundryError
from foundry.provision import FIRED_TTL
from foundry.settings import Settings

SCHEDULE_HEADER = "Nats-Schedule"
TARGET_HEADER = "Nats-Schedule-Target"
TTL_HEADER = "Nats-Schedule-TTL"
FULL_FRACTION = 0.9  # refuse new schedules above this share of the stream's byte limit


class SchedulesFull(FoundryError):
    """AGENT_SCHEDULES is nearly full: a new schedule could push out a waiting one."""


def rfc3339_ms(at: float) -> str:
    """``at`` as RFC 3339 UTC, rounded up to the millisecond (a task never starts early)."""
    stamp = datetime.fromtimestamp(math.ceil(at * 1000) / 1000, UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def schedule_message(
    settings: Settings, task: Task, headers: dict[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """(subject, headers) that delay ``task`` (its ``not_before`` set) into its lane.

    ``headers`` are the original message's (kept, so a moved message stays what it was);
    ``Nats-Msg-Id`` is ``<task id>@at`` so a retried move is stored once.
    """
    assert task.not_before is not None
    names = settings.names
    out = {k: v for k, v in (headers or {}).items() if not k.startswith("Nats-")}
    out.update(
        {
            MSG_ID_HEADER: f"{task.task_id}@at",
            TASK_ID_HEADER: task.task_id,
            NOT_BEFORE_HEADER: f"{task.not_before:.3f}",
            SCHEDULE_HEADER: f"@at {rfc3339_ms(task.not_before)}",
            TARGET_HEADER: names.schedule_due(task.agent_type, task.priority),
            TTL_HEADER: FIRED_TTL,
        }
    )
    return names.schedule(task.agent_type, task.task_id), out


async def check_room(js: JetStreamContext, settings: Settings) -> None:
    """Raise SchedulesFull when AGENT_SCHEDULES holds over 90% of its byte limit."""
    info = await js.stream_info(settings.names.schedules_stream)
    limit = info.config.max_bytes or settings.schedules_max_bytes
    if info.state.bytes > FULL_FRACTION * limit:
        raise SchedulesFull(
            f"{settings.names.schedules_stream} holds {info.state.bytes} of {limit} bytes "
            "(FOUNDRY_SCHEDULES_MAX_BYTES): no room for more delayed tasks now"
        )
