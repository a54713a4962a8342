"""Slot state transitions: the one place a slot's ``state`` changes.

The supervisor calls :func:`move` for every change; other modules report
facts (an exit, a first heartbeat, an operator's request) to the supervisor
and never assign a slot's state. The table reads as: from this state, these.

=============  ===============================================================
from           to
=============  ===============================================================
stopped        starting (a worker launched), running (a service or server
               launched), backoff (the launch itself failed)
starting       running (its first heartbeat), stopping, backoff (it died),
               stopped (it exited during shutdown)
running        stopping, backoff (it died), stopped (exited during shutdown)
stopping       stopped (asked to stop), backoff (stopped to be replaced)
backoff        starting / running (the relaunch), quarantined, stopped
               (shutdown, or an operator relaunching it now)
quarantined    stopped (released by an operator)
=============  ===============================================================
"""

from __future__ import annotations

import logging

from foundry.contracts import SlotState
from healer.slots import Slot

log = logging.getLogger(__name__)
S = SlotState

TRANSITIONS: dict[SlotState, frozenset[SlotState]] = {
    S.STOPPED: frozenset({S.STARTING, S.RUNNING, S.BACKOFF}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPING, S.BACKOFF, S.STOPPED}),
    S.RUNNING: frozenset({S.STOPPING, S.BACKOFF, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED, S.BACKOFF}),
    S.BACKOFF: frozenset({S.STARTING, S.RUNNING, S.QUARANTINED, S.STOPPED}),
    S.QUARANTINED: frozenset({S.STOPPED}),
}


class IllegalTransition(RuntimeError):
    """A state change the table does not allow: a bug in the supervisor."""


def allowed(current: SlotState, target: SlotState) -> bool:
    return target == current or target in TRANSITIONS[current]


def move(slot: Slot, target: SlotState) -> None:
    """Change ``slot.state`` to ``target``, or raise IllegalTransition."""
    if not allowed(slot.state, target):
        raise IllegalTransition(f"{slot.name}: {slot.state} → {target} is not a transition")
    if slot.state != target:
        log.debug("%s: %s → %s", slot.name, slot.state, target)
        slot.state = target
