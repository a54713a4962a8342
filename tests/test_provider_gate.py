"""The provider gate of ``llm:<model>`` limits on a real Redis (fixture ``redis``): requests
count until answered, one probe after a pause or when nothing is known, a credit from the
provider's rate-limit headers."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from foundry.ratelimit import PROBE_POLL, Limiter, ProviderAnswer, new_ticket
from foundry.settings import Rate, Settings

OK = ProviderAnswer(200)


def _limiter(redis: aioredis.Redis, settings: Settings, **rates: Rate) -> Limiter:
    return Limiter(redis, settings.names.key_prefix, {f"llm:{k}": r for k, r in rates.items()})


async def _granted(lim: Limiter, model: str = "llm:m") -> str:
    ticket = new_ticket()
    assert await lim.acquire({model: 1}, ticket) == 0.0
    return ticket


async def test_first_request_is_a_probe_the_rest_wait_for_its_answer(
    redis: aioredis.Redis, settings: Settings
) -> None:
    lim = _limiter(redis, settings)
    probe = await _granted(lim)
    # while the probe is out every other request of the model waits a poll step ...
    assert await lim.acquire({"llm:m": 1}, new_ticket()) == PROBE_POLL
    assert await lim.acquire({"llm:other": 1}, new_ticket()) == 0.0  # ... other models do not
    await lim.answered("llm:m", probe, OK)  # answered without rate-limit headers: open
    assert [await lim.acquire({"llm:m": 1}, new_ticket()) for _ in range(5)] == [0.0] * 5


async def test_a_lost_probe_opens_nothing(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings)
    await lim.answered("llm:m", await _granted(lim), ProviderAnswer(0))  # connection lost
    await _granted(lim)  # the next request is a probe again
    assert await lim.acquire({"llm:m": 1}, new_ticket()) == PROBE_POLL


async def test_429_pauses_then_lets_one_probe_through(
    redis: aioredis.Redis, settings: Settings
) -> None:
    lim = _limiter(redis, settings)
    await lim.answered("llm:m", await _granted(lim), OK)
    inflight = [await _granted(lim) for _ in range(3)]
    await lim.answered("llm:m", inflight[0], ProviderAnswer(429, retry_after=0.4))
    assert 0.2 < await lim.acquire({"llm:m": 1}, new_ticket()) <= 0.4
    await lim.answered("llm:m", inflight[1], OK)  # answers of earlier requests open nothing
    await asyncio.sleep(0.45)
    probe = await _granted(lim)
    assert await lim.acquire({"llm:m": 1}, new_ticket()) == PROBE_POLL
    await lim.answered("llm:m", probe, ProviderAnswer(429, retry_after=0.3))  # still limited
    assert 0.1 < await lim.acquire({"llm:m": 1}, new_ticket()) <= 0.3
    await asyncio.sleep(0.35)
    probe = await _granted(lim)
    await lim.answered("llm:m", probe, OK)
    assert await lim.acquire({"llm:m": 1}, new_ticket()) == 0.0


async def test_credit_from_headers_less_what_is_on_its_way(
    redis: aioredis.Redis, settings: Settings
) -> None:
    lim = _limiter(redis, settings)
    probe = await _granted(lim)
    await lim.answered("llm:m", probe, ProviderAnswer(200, remaining=3, reset=0.6))
    sent = [await _granted(lim) for _ in range(3)]
    wait = await lim.acquire({"llm:m": 1}, new_ticket())
    assert 0.3 < wait <= 0.6  # the credit is spent until the provider's reset
    # a later answer saying more remain does not raise it: two requests are still on their way
    await lim.answered("llm:m", sent[0], ProviderAnswer(200, remaining=2, reset=0.6))
    assert await lim.acquire({"llm:m": 1}, new_ticket()) > 0
    await asyncio.sleep(0.65)
    await _granted(lim)  # after the reset nothing is known: a probe
    assert await lim.acquire({"llm:m": 1}, new_ticket()) == PROBE_POLL


async def test_a_request_counts_in_the_window_until_its_answer(
    redis: aioredis.Redis, settings: Settings
) -> None:
    lim = _limiter(redis, settings, m=Rate(2, 0.5))
    first = await _granted(lim)
    await lim.answered("llm:m", first, OK)
    slow = await _granted(lim)  # granted, but its answer is late
    assert await lim.acquire({"llm:m": 1}, new_ticket()) > 0
    await asyncio.sleep(0.55)
    third = await _granted(lim)  # the answered one left the window ...
    await asyncio.sleep(0.55)
    # ... the unanswered one has not, though it was granted more than a window ago
    assert await lim.acquire({"llm:m": 1}, new_ticket()) > 0
    await lim.answered("llm:m", slow, OK)
    await lim.answered("llm:m", third, OK)
    wait = await lim.acquire({"llm:m": 1}, new_ticket())
    assert 0.3 < wait <= 0.5  # now it leaves a window after its answer
    await asyncio.sleep(wait + 0.05)
    await _granted(lim)
