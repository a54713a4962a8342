"""Keeping label values few: agent types are admitted up to a limit, enums fold into 'other'.

Metric labels come from messages anyone on the bus can publish, so every value
is checked before it becomes a label: a flood of made-up agent types must not
turn into a flood of time series.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from foundry.names import AGENT_TYPE_RE

log = logging.getLogger(__name__)

OTHER = "other"


class AgentTypes:
    """The fleet's agent types, plus up to ``extra`` others seen on the bus."""

    def __init__(self, fleet: Iterable[str], extra: int = 32) -> None:
        self.known: list[str] = list(fleet)
        self._limit = len(self.known) + extra
        self._warned = False

    def admit(self, value: object) -> str | None:
        """``value`` if it may be a label value, else None (and one warning)."""
        if not isinstance(value, str) or not AGENT_TYPE_RE.fullmatch(value):
            return None
        if value in self.known:
            return value
        if len(self.known) >= self._limit:
            if not self._warned:
                log.warning("more than %d agent types seen; ignoring %r and later ones",
                            self._limit, value)  # fmt: skip
                self._warned = True
            return None
        self.known.append(value)
        return value


def one_of(value: object, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed``, else ``'other'``."""
    return value if isinstance(value, str) and value in allowed else OTHER


class BoundedLabels:
    """Label values (limit names, models) admitted first come, up to ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.known: set[str] = set()
        self._limit = limit
        self._warned = False

    def admit(self, value: str) -> str | None:
        if value in self.known:
            return value
        if len(self.known) >= self._limit:
            if not self._warned:
                log.warning("more than %d label values seen; ignoring %r and later ones",
                            self._limit, value)  # fmt: skip
                self._warned = True
            return None
        self.known.add(value)
        return value
