"""The leader lease (foundry.lease) on a real JetStream KV bucket: one holder at a time, a
silent holder replaced within its TTL, a released lease taken at once, a late renew refused."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client as NATS

from foundry.lease import Lease
from foundry.provision import ensure_buckets
from foundry.settings import Settings
from tests.conftest import eventually


async def takeover(nc: NATS, settings: Settings, ttl: int) -> float:
    """Seconds from a holder's last renewal to another process holding the lease."""
    js = nc.jetstream()
    await ensure_buckets(js, settings)  # as an orchestrator does at start
    bucket = settings.names.lease_bucket
    first = Lease(js, bucket, f"ttl{ttl}", ttl, holder="first")
    second = Lease(js, bucket, f"ttl{ttl}", ttl, holder="second")
    assert await first.acquire() and first.held
    assert await first.renew()
    last_renewal = time.monotonic()
    assert not await second.acquire()  # held: refused
    # When the first holder goes silent (killed), the second gets it once the server expires it
    await eventually(second.acquire, ttl + 5, interval=0.02)
    took = time.monotonic() - last_renewal
    # and the second knows whom it replaced, and how long after it first saw the last renewal
    assert second.takeover is not None and second.takeover.previous == "first"
    since = second.takeover.since_previous_write
    assert since is not None and since <= took + 0.1, (since, took)
    # and the first holder's late renewal is refused by the revision check
    assert not first.held  # its own deadline passed before the takeover
    assert not await first.renew()
    # A released lease is taken at once
    await second.release()
    began = time.monotonic()
    assert await first.acquire()
    assert time.monotonic() - began < 0.5
    await first.release()
    return took


async def test_one_holder_takeover_within_the_ttl_release_and_late_renewal(
    settings: Settings, nc: NATS
) -> None:
    took = {ttl: await takeover(nc, settings, ttl) for ttl in (1, 3)}
    for ttl, seconds in took.items():
        assert ttl - 0.2 < seconds < ttl + 1.5, took
    print("\nlease takeover after the holder's last renewal: " + ", ".join(
        f"TTL {ttl}s → {s:.2f}s" for ttl, s in took.items()))  # fmt: skip


async def test_run_loops_elect_one_leader_and_hand_over_on_stop(
    settings: Settings, nc: NATS
) -> None:
    # Given two processes' lease loops on one key
    js = nc.jetstream()
    await ensure_buckets(js, settings)
    leaders: list[str] = []
    stops = {name: asyncio.Event() for name in ("a", "b")}

    def loop(name: str) -> asyncio.Task[None]:
        lease = Lease(js, settings.names.lease_bucket, "loop", 1, holder=name)

        async def elected() -> None:
            leaders.append(name)

        async def lost() -> None:
            leaders.append(f"-{name}")

        return asyncio.create_task(lease.run(stops[name], elected, lost))

    tasks = {name: loop(name) for name in stops}
    try:
        # Then exactly one leads
        await eventually(lambda: leaders, 5)
        await asyncio.sleep(1.5)
        assert len(leaders) == 1, leaders
        first = leaders[0]
        other = "b" if first == "a" else "a"
        # When the leader stops, it gives up the lease and the other takes it quickly
        began = time.monotonic()
        stops[first].set()
        await tasks[first]
        await eventually(lambda: other in leaders, 5, interval=0.02)
        assert time.monotonic() - began < 1.5
        assert leaders == [first, f"-{first}", other]
    finally:
        for name, stop in stops.items():
            stop.set()
            await asyncio.wait_for(tasks[name], 5)


def test_a_lease_lives_at_least_a_second() -> None:
    with pytest.raises(ValueError, match="at least one second"):
        Lease(None, "b", "k", 0)  # type: ignore[arg-type]
