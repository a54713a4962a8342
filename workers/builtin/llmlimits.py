"""The ``llm`` handler's side of the cluster-wide limits (:mod:`foundry.ratelimit`).

Before each request: one request of ``llm:<model>`` (FOUNDRY_RATE_LIMITS) and an
estimate of its tokens from ``tokens:<model>`` (FOUNDRY_TOKEN_BUDGETS: prompt
characters / 4 + max_tokens), taken together; a model paused by a provider's 429
waits too, and so does every request while a probe is out (see
:mod:`foundry.ratelimit`). When the answer's status line arrives it is reported
(:meth:`LlmLimits.answer`: a 429's ``Retry-After``, the
``x-ratelimit-remaining-requests`` and ``x-ratelimit-reset-requests`` headers);
when the body is in, the reservation is settled with the usage the server
reported, and the tokens are counted for the heartbeat. A wait longer than
FOUNDRY_RATE_WAIT_MAX hands the task back for a later delivery (never fails it).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from foundry.connect import redis_client
from foundry.ratelimit import (
    LIMIT_STATS,
    Limiter,
    ProviderAnswer,
    model_limit,
    new_ticket,
    token_limit,
)
from foundry.settings import Rate, Settings
from workers.handlers import RetryableError, TaskContext

log = logging.getLogger(__name__)
PAUSE_MAX = 300.0
REMAINING_MAX = 1_000_000_000
# a duration as OpenAI-compatible servers write it: "20ms", "1.5s", "6m0s", "1h2m3s", or seconds
_DURATION = re.compile(
    r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+(?:\.\d+)?)ms)?"
)


@dataclass
class Reservation:
    model: str
    ticket: str
    tokens: int  # reserved from the model's budget (0: no budget)
    answered: bool = False  # the provider's answer (or its absence) was reported


def duration(text: str | None) -> float | None:
    """Seconds in a rate-limit header (``1.5``, ``20ms``, ``6m0s``); None when unreadable."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    match = _DURATION.fullmatch(text)
    if match is None:
        return None
    parts = {k: float(v) for k, v in match.groupdict().items() if v is not None}
    seconds = parts.get("h", 0) * 3600 + parts.get("m", 0) * 60 + parts.get("s", 0)
    return seconds + parts.get("ms", 0) / 1000


def retry_after(headers: Mapping[str, str], cap: float) -> float | None:
    """A ``Retry-After`` given in seconds, at most ``cap``; None when absent or unreadable."""
    try:
        seconds = float(headers.get("Retry-After", ""))
    except ValueError:
        return None
    return min(max(0.0, seconds), cap) if not math.isnan(seconds) else None


def provider_answer(status: int, headers: Mapping[str, str]) -> ProviderAnswer:
    """What an answer's status and headers say about the provider's request limit.

    The remaining count is used only together with a readable reset (a count without
    a time it holds for says nothing); unreadable headers count as absent.
    """
    remaining: int | None = None
    text = headers.get("x-ratelimit-remaining-requests", "").strip()
    reset = duration(headers.get("x-ratelimit-reset-requests"))
    if text.isdigit() and reset is not None:
        remaining = min(int(text), REMAINING_MAX)
    reset = min(reset, PAUSE_MAX) if reset is not None else None
    return ProviderAnswer(status, remaining, reset, retry_after(headers, PAUSE_MAX))


def estimate_tokens(body: dict[str, Any]) -> int:
    """Prompt characters / 4 plus the completion cap: what a request may use at most, roughly."""
    chars = sum(
        len(str(m.get("content", ""))) for m in body.get("messages", []) if isinstance(m, dict)
    )
    return chars // 4 + int(body.get("max_tokens") or 0)


def _usage(usage: Any, key: str) -> int:
    value = usage.get(key) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class LlmLimits:
    """Model request limits, token budgets and 429 pauses for one worker's ``llm`` handler."""

    def __init__(self, settings: Settings, redis: aioredis.Redis | None) -> None:
        self.settings = settings
        self.redis = redis
        rates: dict[str, Rate] = {
            name: r for name, r in settings.rate_limits.items() if name.startswith("llm:")
        }
        rates.update({token_limit(m): r for m, r in settings.token_budgets.items()})
        self.limiter = (
            Limiter(redis, settings.names.key_prefix, rates) if redis is not None else None
        )

    @classmethod
    def open(cls, settings: Settings) -> LlmLimits:
        return cls(settings, redis_client(settings))

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None

    async def before(self, ctx: TaskContext, body: dict[str, Any]) -> Reservation:
        model = str(body["model"])
        ticket = new_ticket()
        budget = self.settings.token_budgets.get(model)
        tokens = min(estimate_tokens(body), budget.count) if budget is not None else 0
        if self.limiter is None:
            return Reservation(model, ticket, 0)
        costs = {model_limit(model): 1}
        if budget is not None:
            costs[token_limit(model)] = tokens

        async def note() -> None:
            await ctx.progress(f"waiting for the limits of model {model}")

        granted, waited = await self.limiter.wait_for(
            costs, ticket, self.settings.rate_wait_max, note
        )
        if not granted:
            raise RetryableError(
                f"llm: over the limits of model {model} for {waited:.0f}s "
                "(FOUNDRY_RATE_LIMITS, FOUNDRY_TOKEN_BUDGETS, FOUNDRY_RATE_WAIT_MAX)",
                delay=self.settings.retry_delay,
            )
        return Reservation(model, ticket, tokens)

    async def after(self, res: Reservation, usage: Any) -> None:
        prompt = _usage(usage, "prompt_tokens")
        completion = _usage(usage, "completion_tokens")
        LIMIT_STATS.tokens(res.model, prompt, completion)
        if self.limiter is not None and res.tokens and usage is not None:
            await self._quiet(
                self.limiter.settle(
                    token_limit(res.model), res.ticket, res.tokens, prompt + completion
                )
            )

    async def answer(self, res: Reservation, status: int, headers: Mapping[str, str]) -> None:
        """The provider answered (status line and headers): tell the cluster-wide gate."""
        res.answered = True
        if status == 429:
            LIMIT_STATS.throttle(res.model)
        await self._report(res, provider_answer(status, headers))

    async def release(self, res: Reservation) -> None:
        """The request ended without an answer (lost, cancelled): free its place."""
        if not res.answered:
            res.answered = True
            await self._report(res, ProviderAnswer(0))

    async def _report(self, res: Reservation, answer: ProviderAnswer) -> None:
        if self.limiter is not None:
            await self._quiet(self.limiter.answered(model_limit(res.model), res.ticket, answer))

    async def refund(self, res: Reservation) -> None:
        """The request got no answer (429, 5xx, lost): its reserved tokens were not used."""
        if self.limiter is not None and res.tokens:
            await self._quiet(
                self.limiter.settle(token_limit(res.model), res.ticket, res.tokens, 0)
            )

    async def _quiet(self, op: Any) -> None:
        try:
            await op
        except Exception as exc:  # Redis unreachable: the limits are best effort then
            log.warning("llm limits: %s", exc)
