"""The limit parsers, and the limiter's Lua on a real Redis (fixture ``redis``)."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from foundry.errors import ConfigError
from foundry.ratelimit import Limiter, new_ticket, valid_name
from foundry.rates import parse_rate_limits, parse_token_budgets, rate
from foundry.settings import Rate, Settings


def test_rate_spellings() -> None:
    assert rate("30/min") == Rate(30, 60.0)
    assert rate("5/s") == Rate(5, 1.0)
    assert rate("1000/h") == Rate(1000, 3600.0)
    assert rate("20/2s") == Rate(20, 2.0)
    assert rate(str(Rate(7, 2.5))) == Rate(7, 2.5)


@pytest.mark.parametrize("text", ["30", "30/fortnight", "0/s", "-1/s", "x/min", "5/0s", "5/2d"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError):
        rate(text)


def test_rate_limits_items() -> None:
    got = parse_rate_limits("coder=30/min, executor=5/s,llm:gpt-4o-mini=500/min")
    assert got == {
        "coder": Rate(30, 60.0),
        "executor": Rate(5, 1.0),
        "llm:gpt-4o-mini": Rate(500, 60.0),
    }
    assert parse_token_budgets("gpt-4o=90000/min") == {"gpt-4o": Rate(90000, 60.0)}


@pytest.mark.parametrize(
    ("var", "text", "words"),
    [
        ("FOUNDRY_RATE_LIMITS", "coder", "name=rate"),
        ("FOUNDRY_RATE_LIMITS", "Coder!=5/s", "Coder!"),
        ("FOUNDRY_RATE_LIMITS", "coder=5/s,coder=6/s", "twice"),
        ("FOUNDRY_RATE_LIMITS", "llm:=5/s", "model name"),
        ("FOUNDRY_RATE_LIMITS", "coder=5/week", "5/week"),
        ("FOUNDRY_TOKEN_BUDGETS", "gpt 4=100/min", "model name"),
        ("FOUNDRY_TOKEN_BUDGETS", "gpt-4=lots", "lots"),
    ],
)
def test_bad_limits_name_the_variable(var: str, text: str, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_env({var: text})
    assert var in str(err.value) and words in str(err.value)


def test_limits_survive_to_env() -> None:
    env = {"FOUNDRY_RATE_LIMITS": "coder=3/s,llm:m1=2/min", "FOUNDRY_TOKEN_BUDGETS": "m1=10/2s"}
    s = Settings.from_env(env)
    again = Settings.from_env(s.to_env())
    assert again.rate_limits == s.rate_limits and again.token_budgets == s.token_budgets
    assert Settings().rate_limits == {} and Settings().token_budgets == {}


def test_heartbeat_names() -> None:
    assert valid_name("type:coder") and valid_name("llm:gpt-4o") and valid_name("gpt-4o")
    assert not valid_name("a b") and not valid_name("") and not valid_name(3)


def _limiter(redis: aioredis.Redis, settings: Settings, **rates: Rate) -> Limiter:
    return Limiter(redis, settings.names.key_prefix, rates)


async def test_window_holds_at_most_its_count(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings, a=Rate(3, 1.0))
    waits = [await lim.acquire({"a": 1}, new_ticket()) for _ in range(5)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert 0.5 < waits[3] <= 1.0 and 0.5 < waits[4] <= 1.0
    await asyncio.sleep(waits[3] + 0.05)
    assert await lim.acquire({"a": 1}, new_ticket()) == 0.0
    keys = [k async for k in redis.scan_iter(f"{settings.names.key_prefix}:limit:*")]
    assert keys and all([await redis.pttl(k) > 0 for k in keys])  # every key expires


async def test_all_or_nothing(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings, req=Rate(10, 5.0), tok=Rate(100, 5.0))
    assert await lim.acquire({"req": 1, "tok": 90}, new_ticket()) == 0.0
    assert await lim.acquire({"req": 1, "tok": 20}, new_ticket()) > 0  # tokens do not fit
    assert await redis.get(lim.key("req") + ":sum") == b"1"  # the request was not taken
    assert await lim.acquire({"req": 1, "tok": 10}, new_ticket()) == 0.0


async def test_settle_refunds_and_charges(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings, tok=Rate(100, 5.0))
    t1 = new_ticket()
    assert await lim.acquire({"tok": 80}, t1) == 0.0
    assert await lim.acquire({"tok": 30}, new_ticket()) > 0
    await lim.settle("tok", t1, 80, 15)  # the server used less than reserved
    assert await redis.get(lim.key("tok") + ":sum") == b"15"
    t2 = new_ticket()
    assert await lim.acquire({"tok": 30}, t2) == 0.0
    await lim.settle("tok", t2, 30, 85)  # and more: charged (capped at the count)
    assert await redis.get(lim.key("tok") + ":sum") == b"100"
    assert await lim.acquire({"tok": 1}, new_ticket()) > 0


async def test_cost_above_count_is_capped(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings, tok=Rate(50, 5.0))
    assert await lim.acquire({"tok": 500}, new_ticket()) == 0.0
    assert await redis.get(lim.key("tok") + ":sum") == b"50"


async def test_pause_blocks_one_name(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings)  # no rates: names only pause
    assert await lim.pause("llm:m1", 0.6) is True
    assert await lim.pause("llm:m1", 0.2) is False  # a shorter pause never shortens it
    assert 0.3 < await lim.acquire({"llm:m1": 1}, new_ticket()) <= 0.6
    assert await lim.acquire({"llm:m2": 1}, new_ticket()) == 0.0  # other models go on
    started = time.monotonic()
    granted, waited = await lim.wait_for({"llm:m1": 1}, new_ticket(), max_wait=5.0)
    assert granted and 0.3 < waited < 1.5 and time.monotonic() - started < 1.5


async def test_wait_for_gives_up_after_max_wait(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings, a=Rate(1, 30.0))
    assert await lim.acquire({"a": 1}, new_ticket()) == 0.0
    granted, waited = await lim.wait_for({"a": 1}, new_ticket(), max_wait=0.3)
    assert not granted and 0.25 < waited < 1.0


async def test_concurrent_grants_never_exceed(redis: aioredis.Redis, settings: Settings) -> None:
    lim = _limiter(redis, settings, a=Rate(7, 10.0))
    waits = await asyncio.gather(*(lim.acquire({"a": 1}, new_ticket()) for _ in range(40)))
    assert sum(1 for w in waits if w == 0.0) == 7
