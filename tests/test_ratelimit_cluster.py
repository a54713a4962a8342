"""Cluster-wide limits through worker processes: a provider that throttles, a type limit,
and the counters that reach the monitor."""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

from foundry.contracts import Heartbeat, MessageRejected, WorkerState
from foundry.settings import LlmSettings, Rate, Settings
from monitor.exporter import ClusterExporter, limit_labels
from tests.fakes import FakeLLM, llm_app, serve
from tests.procs import ProcessGroup
from tests.test_flow import submit, wait_task

WINDOW, PER_WINDOW = 2.0, 20  # the provider's limit: 20 requests in any 2 s


@dataclass
class ThrottlingLLM(FakeLLM):
    """Answers 429 with Retry-After to any request over PER_WINDOW in the last WINDOW s.

    With ``headers`` it also says, as OpenAI does, how many requests it still takes
    (``x-ratelimit-remaining-requests``) and when its limit is whole again
    (``x-ratelimit-reset-requests``: a window after the latest request).
    """

    headers: bool = False
    arrivals: list[float] = field(default_factory=list)
    throttled: list[tuple[float, float]] = field(default_factory=list)  # (time, retry-after)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        now = time.monotonic()
        recent = [t for t in self.arrivals if t > now - WINDOW]
        if len(recent) >= PER_WINDOW:
            retry = max(1, math.ceil(recent[-PER_WINDOW] + WINDOW - now))
            self.throttled.append((now, retry))
            body = {"error": {"message": "rate limited", "type": "rate_limit"}}
            extra = {"Retry-After": str(retry), **self._limit_headers(0, retry)}
            return web.json_response(body, status=429, headers=extra)
        self.arrivals.append(now)
        request[LIMIT_HEADERS] = self._limit_headers(PER_WINDOW - len(recent) - 1, WINDOW)
        return await super().chat(request)

    def _limit_headers(self, remaining: int, reset: float) -> dict[str, str]:
        if not self.headers:
            return {}
        return {
            "x-ratelimit-limit-requests": str(PER_WINDOW),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{reset:g}s",
        }


LIMIT_HEADERS = "limit headers"


def throttling_app(llm: ThrottlingLLM) -> web.Application:
    """The throttling LLM's app; its rate-limit headers go on streamed answers too."""
    app = llm_app(llm)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(request.get(LIMIT_HEADERS, {}))

    app.on_response_prepare.append(add_headers)
    return app


def pauses(throttled: list[tuple[float, float]]) -> tuple[int, list[float]]:
    """Pauses, each [time of a 429, + its Retry-After], and the 429s that came inside one."""
    count, end, inside = 0, -math.inf, []
    for t, retry in sorted(throttled):
        if t < end:
            inside.append(t)
        else:
            count, end = count + 1, t + retry
    return count, inside


@pytest.mark.parametrize(
    ("headers", "rates"),
    [
        (False, {"llm:test-model": Rate(PER_WINDOW, WINDOW)}),  # our limit: the provider's
        (True, {}),  # no limit of ours: the provider's headers say it
    ],
    ids=["no-headers-limit-20per2s", "headers-no-limit"],
)
async def test_burst_of_llm_tasks_waits_with_at_most_one_429_per_pause(
    make_settings: Any,
    make_gateway: Any,
    procs: ProcessGroup,
    headers: bool,
    rates: dict[str, Rate],
) -> None:
    # Given a provider that allows 20 requests in any 2 s, three coder workers (16 tasks
    # at once each), and either a cluster limit equal to the provider's or rate-limit headers
    llm = ThrottlingLLM(delay=0.02, headers=headers)
    async with serve(throttling_app(llm)) as url:
        settings = make_settings(
            fleet={"coder": 3},
            handlers={},
            llm=LlmSettings(url=f"{url}/v1", model="test-model", retries=6, backoff=0.2),
            rate_limits=rates,
            token_budgets={"test-model": Rate(2_000_000, 60.0)},
        )
        gw = await make_gateway(settings)
        for _ in range(3):
            procs.worker(settings, "coder")
        # When 200 llm tasks arrive at once
        started = time.monotonic()
        ids = [
            (await submit(gw, agent_type="coder", description=f"job {i}"))["task_id"]
            for i in range(200)
        ]
        records = [await wait_task(gw, tid, wait=90) for tid in ids]
        took = time.monotonic() - started
    # Then every one completed, none failed
    statuses = Counter(r["status"] for r in records)
    assert statuses == {"completed": 200}, (statuses, procs.logs()[-3000:])
    assert took < 120
    arrivals = sorted(llm.arrivals)
    busiest = max(
        sum(1 for t in arrivals[i:] if t < start + WINDOW) for i, start in enumerate(arrivals)
    )
    count, inside = pauses(llm.throttled)
    print(
        f"\n200 llm tasks ({'headers' if headers else 'no headers'}, limits {rates}) in "
        f"{took:.1f}s; provider 429s: {len(llm.throttled)}; pauses: {count}; 429s inside a "
        f"pause: {len(inside)}; busiest {WINDOW:g}s window: {busiest}"
    )
    # and every 429 the provider sent, from any worker, was the only one in its pause
    assert inside == [], llm.throttled


async def test_provider_429_pauses_the_model_across_workers(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given a provider whose first answer is a 429 with Retry-After: 2, and no limit of ours
    llm, times = FakeLLM(), list[float]()
    async with serve(_retry_after_first(llm, 2, times)) as url:
        settings = make_settings(
            fleet={"coder": 2},
            handlers={},
            llm=LlmSettings(url=f"{url}/v1", model="test-model", backoff=0.05),
        )
        gw = await make_gateway(settings)
        for _ in range(2):
            procs.worker(settings, "coder")
        await asyncio.sleep(1.0)  # both workers up
        # When tasks arrive just after the 429
        first = (await submit(gw, agent_type="coder", description="first"))["task_id"]
        await asyncio.sleep(0.3)
        ids = [
            (await submit(gw, agent_type="coder", description=f"n{i}"))["task_id"] for i in range(6)
        ]
        records = [await wait_task(gw, tid, wait=30) for tid in [first, *ids]]
    # Then all complete, and nothing reached the provider until the pause was over
    assert all(r["status"] == "completed" for r in records), procs.logs()[-3000:]
    assert len(times) == 8 and times[1] - times[0] >= 1.9, times


def _retry_after_first(llm: FakeLLM, seconds: int, times: list[float]) -> web.Application:
    """The fake LLM, but its first answer is a 429 with Retry-After; ``times`` gets arrivals."""
    app = llm_app(llm)

    @web.middleware
    async def first_is_429(request: web.Request, handler: Any) -> web.StreamResponse:
        times.append(time.monotonic())
        if len(times) == 1:
            return web.json_response({"error": "slow down"}, status=429,
                                     headers={"Retry-After": str(seconds)})  # fmt: skip
        resp: web.StreamResponse = await handler(request)
        return resp

    app.middlewares.append(first_is_429)
    return app


async def test_still_limited_provider_costs_one_429_per_pause(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given a provider out of quota for 3 s after the first request (429, Retry-After: 1,
    # no rate-limit headers), and three coder workers (16 tasks at once each)
    throttled, served = list[tuple[float, float]](), list[float]()
    async with serve(_out_of_quota(FakeLLM(), 3.0, throttled, served)) as url:
        settings = make_settings(
            fleet={"coder": 3},
            handlers={},
            llm=LlmSettings(url=f"{url}/v1", model="test-model", retries=8, backoff=0.05),
        )
        gw = await make_gateway(settings)
        for _ in range(3):
            procs.worker(settings, "coder")
        # When 60 tasks arrive at once
        ids = [
            (await submit(gw, agent_type="coder", description=f"q{i}"))["task_id"]
            for i in range(60)
        ]
        records = [await wait_task(gw, tid, wait=60) for tid in ids]
    # Then all complete, and each pause cost one 429: after it one probe went, not every
    # waiting request
    assert all(r["status"] == "completed" for r in records), procs.logs()[-3000:]
    count, inside = pauses(throttled)
    print(f"\nout of quota 3 s: 429s {len(throttled)}, pauses {count}, served {len(served)}")
    assert len(throttled) >= 2 and inside == [], throttled
    assert len(served) == 60


def _out_of_quota(
    llm: FakeLLM, seconds: float, throttled: list[tuple[float, float]], served: list[float]
) -> web.Application:
    """The fake LLM, answering 429 (Retry-After: 1) for ``seconds`` after its first request."""
    app = llm_app(llm)
    start: list[float] = []

    @web.middleware
    async def quota(request: web.Request, handler: Any) -> web.StreamResponse:
        now = time.monotonic()
        if not start:
            start.append(now)
        if now < start[0] + seconds:
            throttled.append((now, 1.0))
            return web.json_response({"error": "quota"}, status=429, headers={"Retry-After": "1"})
        served.append(now)
        resp: web.StreamResponse = await handler(request)
        return resp

    app.middlewares.append(quota)
    return app


async def test_type_limit_spreads_task_starts(
    make_settings: Any, make_gateway: Any, procs: ProcessGroup
) -> None:
    # Given two echo workers of a type limited to 5 task starts a second
    settings = make_settings(fleet={"critic": 2}, rate_limits={"critic": Rate(5, 1.0)})
    gw = await make_gateway(settings)
    for _ in range(2):
        procs.worker(settings, "critic")
    # When 15 tasks arrive at once
    ids = [
        (await submit(gw, agent_type="critic", description=f"r{i}"))["task_id"] for i in range(15)
    ]
    records = [await wait_task(gw, tid, wait=30) for tid in ids]
    # Then all complete (none failed for the limit), never more than 5 started in a second
    assert all(r["status"] == "completed" for r in records), procs.logs()[-3000:]
    starts = sorted(r["finished_at"] for r in records)  # echo finishes as it starts
    assert starts[-1] - starts[0] >= 1.9
    for i, start in enumerate(starts):
        assert sum(1 for s in starts[i:] if s < start + 0.99) <= 5, starts


def _beat(**fields: Any) -> Heartbeat:
    return Heartbeat("coder-1", "coder", "host", 1, None, WorkerState.IDLE, **fields)


def test_heartbeat_limit_counters_round_trip_and_are_checked() -> None:
    beat = _beat(
        limit_waits={"type:coder": 3, "llm:m1": 2},
        limit_wait_seconds={"type:coder": 1.5},
        llm_prompt_tokens={"m1": 100},
        llm_completion_tokens={"m1": 40},
        llm_throttled={"m1": 1},
    )
    again = Heartbeat.from_payload(beat.to_payload())
    assert again.limit_waits == beat.limit_waits and again.llm_throttled == {"m1": 1}
    for bad in ({"a b": 1}, {"m": -1}, {"m": "x"}, {f"m{i}": 1 for i in range(65)}):
        with pytest.raises(MessageRejected):
            Heartbeat.from_payload(_beat(llm_prompt_tokens=bad).to_payload())


def test_exporter_sums_limit_counters_with_bounded_models() -> None:
    exporter = ClusterExporter({"coder": 2}, silence_timeout=60)
    exporter.observe(_beat(limit_waits={"llm:m1": 2}, limit_wait_seconds={"llm:m1": 0.5},
                           llm_prompt_tokens={"m1": 100}, llm_throttled={"m1": 1}))  # fmt: skip
    other = _beat(
        llm_prompt_tokens={f"m{i}": 1 for i in range(40)}, llm_completion_tokens={"m1": 7}
    )
    other.worker_id = "coder-2"
    exporter.observe(other)
    metrics = {m.name: m for m in exporter.collect()}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in metrics.values() for s in m.samples}  # fmt: skip
    assert samples[("foundry_limit_waits_total", (("limit", "llm:m1"),))] == 2
    assert samples[("foundry_limit_wait_seconds_total", (("limit", "llm:m1"),))] == 0.5
    assert samples[("foundry_llm_tokens_total", (("kind", "prompt"), ("model", "m1")))] == 101
    assert samples[("foundry_llm_tokens_total", (("kind", "completion"), ("model", "m1")))] == 7
    assert samples[("foundry_llm_provider_throttled_total", (("model", "m1"),))] == 1
    models = {dict(k[1]).get("model") for k in samples if k[0] == "foundry_llm_tokens_total"}
    assert len(models) == 32  # MAX_MODEL_LABELS: the rest are not label values


def test_configured_limits_and_models_show_at_zero() -> None:
    settings = Settings(
        rate_limits={"coder": Rate(5, 1.0), "llm:m2": Rate(9, 60.0)}, llm=LlmSettings(model="m1")
    )
    limits, models = limit_labels(settings)
    assert limits == ["type:coder", "llm:m2"] and models == ["m1", "m2"]
    exporter = ClusterExporter({"coder": 1}, silence_timeout=60, limits=limits, models=models)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for m in exporter.collect() for s in m.samples}  # fmt: skip
    assert samples[("foundry_limit_waits_total", (("limit", "type:coder"),))] == 0
    assert samples[("foundry_llm_tokens_total", (("kind", "prompt"), ("model", "m2")))] == 0
    assert samples[("foundry_llm_provider_throttled_total", (("model", "m1"),))] == 0
