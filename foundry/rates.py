"""Parsers for the rate limit settings: ``N/unit`` rates, and the items of
``FOUNDRY_RATE_LIMITS`` and ``FOUNDRY_TOKEN_BUDGETS``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from foundry.errors import ConfigError, InvalidAgentType
from foundry.names import validate_agent_type
from foundry.settingsparse import words

_PERIOD_UNITS = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}
_RATE_RE = re.compile(r"(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([a-z]+)")
# A model name as it may appear in a limit key (no '=' or ',', which separate items).
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")
MAX_LIMITS = 64


@dataclass(frozen=True)
class Rate:
    """At most ``count`` units (tasks, requests or tokens) in any ``period`` seconds."""

    count: int
    period: float

    def __str__(self) -> str:  # the spelling rate() reads back
        return f"{self.count}/{self.period:g}s"


def rate(text: str) -> Rate:
    """``N/s``, ``N/min``, ``N/h`` or ``N/<seconds>s`` (e.g. ``20/2s``)."""
    match = _RATE_RE.fullmatch(text.strip().lower())
    if not match or match.group(3) not in _PERIOD_UNITS:
        raise ValueError(f"{text!r} is not a rate like 30/min, 5/s, 1000/h or 20/2s")
    count = int(match.group(1))
    period = float(match.group(2) or 1) * _PERIOD_UNITS[match.group(3)]
    if count < 1 or not 0 < period <= 86400:
        raise ValueError(f"{text!r}: the count must be at least 1 and the period 1 day at most")
    return Rate(count, period)


def _rate_items(text: str, var: str, key: Callable[[str], str]) -> dict[str, Rate]:
    out: dict[str, Rate] = {}
    for item in words(text):
        name, sep, value = (part.strip() for part in item.rpartition("="))
        if not sep or not name:
            raise ConfigError(f"{var}: {item!r} is not 'name=rate' (example: coder=30/min)")
        name = key(name)
        if name in out:
            raise ConfigError(f"{var}: {name!r} is listed twice")
        try:
            out[name] = rate(value)
        except ValueError as exc:
            raise ConfigError(f"{var}: {exc}") from None
    if len(out) > MAX_LIMITS:
        raise ConfigError(f"{var}: at most {MAX_LIMITS} limits")
    return out


def _model_name(var: str, name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name):
        raise ConfigError(f"{var}: {name!r} is not a model name (letters, digits, ._:/@+-)")
    return name


def parse_rate_limits(text: str, var: str = "FOUNDRY_RATE_LIMITS") -> dict[str, Rate]:
    """``type=N/unit`` (tasks started) and ``llm:<model>=N/unit`` (requests) items."""

    def key(name: str) -> str:
        if name.startswith("llm:"):
            return "llm:" + _model_name(var, name[4:])
        try:
            return validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ConfigError(f"{var}: {exc} (or llm:<model> for a model's requests)") from None

    return _rate_items(text, var, key)


def parse_token_budgets(text: str, var: str = "FOUNDRY_TOKEN_BUDGETS") -> dict[str, Rate]:
    """``<model>=N/unit`` items: tokens (prompt and completion) a model may use per period."""
    return _rate_items(text, var, lambda name: _model_name(var, name))
