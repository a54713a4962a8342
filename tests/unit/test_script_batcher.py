"""ScriptBatcher against a stand-in client that implements only the pipeline calls it makes.

The stand-in records each pipeline (one per batch) and answers from ``respond``,
so no Redis runs: what is checked is the batching, the order of results and the
spreading of errors, not Lua.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from types import TracebackType
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from foundry.errors import CacheUnavailable
from foundry.scripts import ScriptBatcher

SOURCES = {"claim": "return 'claim'", "finish": "return 'finish'"}
Queued = tuple[str, int, tuple[Any, ...]]


def sha(src: str) -> str:
    return hashlib.sha1(src.encode()).hexdigest()


def echo(queued: list[Queued]) -> list[Any]:
    """One answer per queued call, naming its script and its keys and args."""
    return [(s, rest) for s, _, rest in queued]


class Pipeline:
    def __init__(self, client: StandIn) -> None:
        self.client = client
        self.queued: list[Queued] = []

    async def __aenter__(self) -> Pipeline:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.queued.append((sha, numkeys, keys_and_args))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        assert raise_on_error is False  # errors come back per call, never raised for all
        self.client.batches.append(self.queued)
        return self.client.respond(self.queued)


class StandIn:
    def __init__(self, respond: Callable[[list[Queued]], list[Any]] = echo) -> None:
        self.respond = respond
        self.batches: list[list[Queued]] = []
        self.loaded: list[str] = []

    def pipeline(self, transaction: bool = True) -> Pipeline:
        assert transaction is False
        return Pipeline(self)

    async def script_load(self, src: str) -> str:
        self.loaded.append(src)
        return "loaded-" + sha(src)[:8]


def batcher(client: StandIn) -> ScriptBatcher:
    return ScriptBatcher(cast(aioredis.Redis, client), SOURCES)


async def test_calls_of_one_tick_go_as_one_batch_and_results_map_back_in_order() -> None:
    client = StandIn()
    b = batcher(client)
    results = list(
        await asyncio.gather(
            b.call("claim", ["k:1"], ["a", 1]),
            b.call("finish", ["k:2", "k:3"], []),
            b.call("claim", [], ["b"]),
        )
    )
    assert len(client.batches) == 1
    assert client.batches[0] == [
        (sha(SOURCES["claim"]), 1, ("k:1", "a", 1)),
        (sha(SOURCES["finish"]), 2, ("k:2", "k:3")),
        (sha(SOURCES["claim"]), 0, ("b",)),
    ]
    assert results == [
        (sha(SOURCES["claim"]), ("k:1", "a", 1)),
        (sha(SOURCES["finish"]), ("k:2", "k:3")),
        (sha(SOURCES["claim"]), ("b",)),
    ]


async def test_calls_of_later_ticks_go_in_later_batches() -> None:
    client = StandIn()
    b = batcher(client)
    await b.call("claim", ["k:1"], [])
    await asyncio.gather(b.call("claim", ["k:2"], []), b.call("claim", ["k:3"], []))
    assert [len(batch) for batch in client.batches] == [1, 2]


async def test_an_error_of_the_connection_reaches_every_caller_of_the_batch() -> None:
    def down(queued: list[Queued]) -> list[Any]:
        raise ConnectionError("Connection refused")

    b = batcher(StandIn(down))
    outcomes = await asyncio.gather(
        b.call("claim", ["k:1"], []), b.call("finish", ["k:2"], []), return_exceptions=True
    )
    assert all(isinstance(o, CacheUnavailable) for o in outcomes)
    assert all("Connection refused" in str(o) for o in outcomes)


async def test_an_os_error_is_a_cache_error_too() -> None:
    def reset(queued: list[Queued]) -> list[Any]:
        raise ConnectionResetError("reset by peer")

    with pytest.raises(CacheUnavailable, match="reset by peer"):
        await batcher(StandIn(reset)).call("claim", [], [])


async def test_an_error_of_one_call_reaches_only_its_caller() -> None:
    def second_fails(queued: list[Queued]) -> list[Any]:
        answers = echo(queued)
        answers[1] = ResponseError("ERR wrong number of arguments")
        return answers

    b = batcher(StandIn(second_fails))
    outcomes: list[Any] = list(
        await asyncio.gather(
            b.call("claim", ["k:1"], []),
            b.call("claim", ["k:2"], []),
            b.call("claim", ["k:3"], []),
            return_exceptions=True,
        )
    )
    first, second, third = outcomes
    assert first == (sha(SOURCES["claim"]), ("k:1",))
    assert isinstance(second, CacheUnavailable) and "wrong number" in str(second)
    assert third == (sha(SOURCES["claim"]), ("k:3",))


async def test_a_fresh_redis_gets_the_scripts_loaded_and_the_batch_resent() -> None:
    def fresh_then_loaded(queued: list[Queued]) -> list[Any]:
        if all(s.startswith("loaded-") for s, _, _ in queued):
            return echo(queued)
        return [NoScriptError("NOSCRIPT No matching script") for _ in queued]

    client = StandIn(fresh_then_loaded)
    b = batcher(client)
    results = await asyncio.gather(b.call("claim", ["k:1"], []), b.call("finish", ["k:2"], []))
    assert client.loaded == list(SOURCES.values())
    assert len(client.batches) == 2  # the refused batch and its resend
    assert [r[0] for r in results] == [
        "loaded-" + sha(SOURCES["claim"])[:8],
        "loaded-" + sha(SOURCES["finish"])[:8],
    ]
    # later batches use the loaded hashes at once
    await b.call("claim", [], [])
    assert len(client.batches) == 3


async def test_a_cancelled_caller_does_not_disturb_the_others() -> None:
    client = StandIn()
    b = batcher(client)
    gone = asyncio.ensure_future(b.call("claim", ["k:1"], []))
    kept = asyncio.ensure_future(b.call("claim", ["k:2"], []))
    await asyncio.sleep(0)  # both calls queued in this tick
    gone.cancel()
    assert await kept == (sha(SOURCES["claim"]), ("k:2",))
    assert gone.cancelled() and len(client.batches[0]) == 2


async def test_an_unknown_script_name_leaves_no_caller_waiting() -> None:
    b = batcher(StandIn())
    valid = asyncio.ensure_future(b.call("claim", ["k:1"], []))
    unknown = asyncio.ensure_future(b.call("no-such-script", [], []))
    done, _ = await asyncio.wait({valid, unknown}, timeout=0.01)
    if len(done) < 2:
        for fut in (valid, unknown):
            fut.cancel()
        raise TimeoutError("callers still waiting")
    # the unknown name is an error for its caller; the valid call gets its answer, or at
    # worst the batch's error, but an answer
    assert unknown.exception() is not None
    if valid.exception() is None:
        assert valid.result() == (sha(SOURCES["claim"]), ("k:1",))
    else:
        assert isinstance(valid.exception(), CacheUnavailable)
