"""Slot state transitions: the table allows exactly what the module's docstring says."""

from __future__ import annotations

import re

import pytest

import healer.transitions
from foundry.contracts import SlotKind, SlotState
from healer.slots import Slot
from healer.transitions import TRANSITIONS, IllegalTransition, allowed, move

ALLOWED = [(a, b) for a, targets in TRANSITIONS.items() for b in sorted(targets)]
DISALLOWED = [(a, b) for a in SlotState for b in SlotState if a != b and b not in TRANSITIONS[a]]


def slot(state: SlotState) -> Slot:
    return Slot(name="coder-0", kind=SlotKind.WORKER, command=["true"], state=state)


def documented() -> dict[SlotState, frozenset[SlotState]]:
    """The docstring's table: each row's state names, parenthesised remarks left out."""
    doc = healer.transitions.__doc__ or ""
    rows: dict[str, str] = {}
    current = ""
    body = doc.split("=\n", 2)[2].rsplit("\n=", 1)[0]  # between the 2nd and 3rd rules
    for line in body.splitlines():
        if line[:1].strip():
            current, _, rest = line.partition(" ")
            rows[current] = rest
        else:
            rows[current] += " " + line
    table = {}
    for name, text in rows.items():
        words = re.findall(r"[a-z]+", re.sub(r"\([^)]*\)", "", text))
        table[SlotState(name)] = frozenset(SlotState(w) for w in words)
    return table


def test_every_state_has_a_row() -> None:
    assert set(TRANSITIONS) == set(SlotState)


def test_the_docstring_table_is_the_transition_table() -> None:
    assert documented() == TRANSITIONS


@pytest.mark.parametrize(("current", "target"), ALLOWED)
def test_every_allowed_transition_moves(current: SlotState, target: SlotState) -> None:
    s = slot(current)
    move(s, target)
    assert s.state is target and allowed(current, target)


@pytest.mark.parametrize("state", list(SlotState))
def test_staying_put_is_allowed_and_changes_nothing(state: SlotState) -> None:
    s = slot(state)
    move(s, state)
    assert s.state is state


@pytest.mark.parametrize(
    ("current", "target"),
    [
        (SlotState.STOPPED, SlotState.QUARANTINED),
        (SlotState.STOPPED, SlotState.STOPPING),
        (SlotState.QUARANTINED, SlotState.RUNNING),
        (SlotState.QUARANTINED, SlotState.STARTING),
        (SlotState.QUARANTINED, SlotState.BACKOFF),
        (SlotState.RUNNING, SlotState.STARTING),
        (SlotState.RUNNING, SlotState.QUARANTINED),
        (SlotState.STOPPING, SlotState.RUNNING),
        (SlotState.BACKOFF, SlotState.STOPPING),
    ],
)
def test_disallowed_transitions_raise(current: SlotState, target: SlotState) -> None:
    assert (current, target) in DISALLOWED
    s = slot(current)
    with pytest.raises(IllegalTransition, match="coder-0"):
        move(s, target)
    assert s.state is current and not allowed(current, target)


def test_every_disallowed_pair_raises() -> None:
    assert len(DISALLOWED) + len(ALLOWED) == len(SlotState) * (len(SlotState) - 1)
    for current, target in DISALLOWED:
        with pytest.raises(IllegalTransition):
            move(slot(current), target)
