"""Three hosts on network namespaces, each with its own nats-server node, healer and fleet,
under steady load: side by side and calm, one host's link cut and restored, one host lost.

Host ``host-1`` (namespace host 0) runs the Redis master and the leading healer; ``host-2``
runs the Redis replica; every host runs a nats-server node (routes with mutual TLS, R3
streams), a Sentinel and a healer with two ``echo`` workers of the ``record`` handler
(one mark file per run, so duplicates are counted). The test watches, publishes and
serves a gateway from host 0, connected to host 0's node alone. The three scenarios
share one cluster, in this order: the first 60 s under load (calm), then host-3's link
down for 10 s, then every process of host-2 killed (after that only two NATS nodes are
left, so no link cut could keep a quorum).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, web
from nats.js.errors import ServiceUnavailableError

from foundry.apitokens import create_token
from foundry.natsauth import ADMIN, GATEWAY, user_name
from foundry.pidfiles import kill_recorded, recorded_process
from foundry.roles import role_settings, with_userinfo
from foundry.settings import Settings
from gateway.app import create_app
from tests import netns
from tests.conftest import eventually
from tests.hacluster import NATS_PORT, HaCluster, provisioned, start, wait_jetstream
from tests.hostsload import UNSETTLED, Loader, Observer, settled, workers_of
from tests.netns import Host, Hosts

FLEET = {"echo": 2}
HOST_IDS = ("host-1", "host-2", "host-3")
LOST, CUT = 1, 2  # host-2 is lost whole, host-3's link is cut
SILENCE, LEASE_TTL = 1.5, 3
RATE, TASK_SLEEP = 8.0, 1.0  # tasks per second, seconds each task runs
CALM, CUT_FOR = 60.0, 10.0
ACK_WAIT = 20.0  # far above a consumer leader election: a nak that got lost shows


@dataclass
class Rig:
    hosts: Hosts
    cluster: HaCluster
    settings: list[Settings]
    healers: list[subprocess.Popen[bytes]]
    observer: Observer
    loader: Loader
    began: float
    gateway: web.AppRunner | None = None
    gateway_url: str = ""
    http: ClientSession | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def home(self) -> Host:
        return self.hosts[0]

    def run(self, coro: Any) -> Any:
        """Run ``coro`` on host 0 from synchronous code (fixture set-up and teardown)."""
        return asyncio.run(asyncio.wait_for(self.home.run(coro), 120))


def node_urls(cluster: HaCluster, index: int, others: bool) -> str:
    """Host ``index``'s own node first, then (with ``others``) the other nodes, as the
    admin: each process tries them in that order."""
    hosts = list(cluster.hosts)
    order = hosts[index:] + hosts[:index] if others else [hosts[index]]
    urls = ",".join(f"tls://{h.address}:{NATS_PORT}" for h in order)
    return with_userinfo(urls, user_name(cluster.names, ADMIN), cluster.passwords[ADMIN])


def local_settings(cluster: HaCluster, index: int, **over: Any) -> Settings:
    """The admin's settings, connected to host ``index``'s own node only."""
    return cluster.settings(nats_url=node_urls(cluster, index, others=False), **over)


def host_settings(cluster: HaCluster, index: int, tokens: Path) -> Settings:
    """A host's healer: its own node listed first (its workers inherit the order)."""
    return cluster.settings(
        nats_url=node_urls(cluster, index, others=True),
        host_id=HOST_IDS[index],
        data_dir=cluster.root / f"data-{index}",
        handlers={"echo": "tests.handlers:record"},
        silence_timeout=SILENCE,
        heartbeat_interval=0.25,
        lease_ttl=LEASE_TTL,
        concurrency=4,
        ack_wait=ACK_WAIT,
        api_tokens=str(tokens),
    )


async def _all_running(observer: Observer, hosts: tuple[str, ...]) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        replies = await observer.status()
        if not set(hosts) <= set(replies):
            return None
        workers = [workers_of(replies[h]) for h in hosts]
        if all(len(w) == 2 and all(s["state"] == "running" for s in w.values()) for w in workers):
            return replies
        return None

    found: dict[str, Any] = await eventually(check, 60, 0.2)
    return found


async def _leader(observer: Observer) -> list[str]:
    return sorted(h for h, r in (await observer.status()).items() if r["leader"])


async def _serve_gateway(rig: Rig, settings: Settings, token: str) -> None:
    rig.gateway = web.AppRunner(create_app(role_settings(settings, GATEWAY)))
    await rig.gateway.setup()
    site = web.TCPSite(rig.gateway, "127.0.0.1", 0)
    await site.start()
    port = rig.gateway.addresses[0][1]
    rig.gateway_url = f"http://127.0.0.1:{port}"
    rig.http = ClientSession(headers={"Authorization": f"Bearer {token}"})


async def _close(rig: Rig) -> None:
    with contextlib.suppress(Exception):
        await rig.loader.stop()
    if rig.http is not None:
        await rig.http.close()
    if rig.gateway is not None:
        await rig.gateway.cleanup()
    await rig.observer.close()


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    netns.require()
    root = tmp_path_factory.mktemp("netns-hosts")
    tokens = root / "api-tokens.jsonl"
    token = create_token(tokens, "test-admin", ["admin"])
    with Hosts(3) as hosts:
        cluster = start(hosts, root / "cluster", FLEET, master=0, replica=LOST)
        settings = [host_settings(cluster, i, tokens) for i in range(3)]
        home = local_settings(
            cluster, 0, api_tokens=str(tokens), silence_timeout=SILENCE, heartbeat_interval=0.25
        )
        rig = Rig(hosts, cluster, settings, [], Observer(home), Loader(
            home, root / "marks", RATE, TASK_SLEEP), 0.0)  # fmt: skip
        try:
            rig.run(wait_jetstream(cluster))
            rig.run(rig.observer.open())
            # host-1 leads: it outlives every fault below
            rig.healers.append(cluster.start_healer(hosts[0], settings[0], "healer-1.log"))
            rig.run(provisioned(cluster))
            rig.run(eventually(lambda: _is_leader(rig.observer, "host-1"), 30, 0.2))
            for i in (1, 2):
                rig.healers.append(
                    cluster.start_healer(hosts[i], settings[i], f"healer-{i + 1}.log")
                )
            rig.run(_all_running(rig.observer, HOST_IDS))
            rig.run(_serve_gateway(rig, home, token))
            rig.run(rig.loader.start())
            rig.began = time.time()
            yield rig
        finally:
            rig.run(_close(rig))
            for proc in rig.healers:  # each drains its own fleet
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in rig.healers:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(15)
            for s in settings:
                kill_recorded(s.data_dir / "run")
            print("figures:", json.dumps(rig.figures))
            if os.environ.get("FOUNDRY_TEST_CLUSTER_LOGS"):
                print(cluster.logs()[-30000:])


async def _is_leader(observer: Observer, host: str) -> bool:
    return await _leader(observer) == [host]


async def _get(rig: Rig, path: str) -> Any:
    assert rig.http is not None
    async with rig.http.get(rig.gateway_url + path) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _duplicates(rig: Rig, ids: list[str]) -> list[str]:
    runs = rig.loader.runs()
    return sorted(t for t in ids if runs[t] > 1)


@pytest.mark.timeout(300)
async def test_three_hosts_side_by_side_stay_calm(rig: Rig) -> None:
    # Given three hosts, each with its own node, healer and two workers, under steady load
    before = await rig.home.run(_all_running(rig.observer, HOST_IDS))
    # When they run side by side for 60 s
    await asyncio.sleep(max(0.0, rig.began + CALM - time.time()))
    ended = time.time()
    after = await rig.home.run(_all_running(rig.observer, HOST_IDS))
    ids = await rig.home.run(rig.loader.published(0.0, ended))
    done = await rig.home.run(settled(rig.observer.settings, ids, 60))
    # Then no healer relaunched or killed anything, nor took a worker of another host as silent
    unsettled = rig.observer.events(*UNSETTLED, "silent_foreign")
    assert unsettled == [], unsettled
    for host in HOST_IDS:
        pids = {n: s["pid"] for n, s in workers_of(before[host]).items()}
        assert {n: s["pid"] for n, s in workers_of(after[host]).items()} == pids
        assert all(s["launches"] == 1 for s in workers_of(after[host]).values())
    # ... every task completed once, and every host ran some
    lost = sorted(set(ids) - set(done))
    assert lost == [], lost
    assert _duplicates(rig, ids) == []
    ran_on = {(r.worker_id or "").rpartition("@")[2] for r in done.values()}
    assert ran_on == set(HOST_IDS), ran_on
    rig.figures["calm"] = {"seconds": round(ended - rig.began, 1), "tasks": len(ids),
                           "relaunches": len(unsettled), "lost": len(lost)}  # fmt: skip
    print("calm:", json.dumps(rig.figures["calm"]))


@pytest.mark.timeout(240)
async def test_a_host_cut_off_for_10_s_rejoins_and_loses_nothing(rig: Rig) -> None:
    host, name = rig.hosts[CUT], HOST_IDS[CUT]
    before = workers_of((await rig.home.run(rig.observer.status()))[name])
    kept, crashed = f"echo-0@{name}", f"echo-1@{name}"
    # Given host-3's workers holding tasks
    await rig.home.run(eventually(lambda: rig.observer.in_flight(name), 20))
    since = time.time()
    # When its link to the others goes down for 10 s, and one of its workers crashes
    # meanwhile (its healer relaunches it while its node has no JetStream quorum)
    host.link(False)
    cut_at = time.time()
    held = rig.observer.in_flight(name)
    await asyncio.sleep(2.0)
    os.kill(before[crashed]["pid"], signal.SIGKILL)
    await asyncio.sleep(CUT_FOR - 2.0)
    host.link(True)
    up_at = time.time()
    # Then its healer answers again with both workers running: the one that kept running
    # is the same process, never killed as silent; the crashed one came back once
    replies = await rig.home.run(eventually(lambda: _answers(rig.observer, name), 60))
    after = workers_of(replies[name])
    assert after[kept]["pid"] == before[kept]["pid"] and after[kept]["launches"] == 1, after
    assert after[crashed]["pid"] != before[crashed]["pid"], after
    assert after[crashed]["launches"] == 2, after
    assert rig.healers[CUT].poll() is None
    # ... both are heard again, and the gateway shows them healthy
    pids = {s["pid"] for s in after.values()}
    await rig.home.run(eventually(lambda: rig.observer.beating_since(name, up_at, pids), 60))
    live = await rig.home.run(eventually(lambda: _healthy(rig, name), 30))
    rejoined_in = time.time() - up_at
    # ... one leader, never host-3's healer: a minority cannot take the lease (it may move
    # between the others while the lease bucket's stream elects a leader of its own)
    leaders = await rig.home.run(_leader(rig.observer))
    assert len(leaders) == 1 and leaders != [name], leaders
    log = (rig.cluster.root / f"healer-{CUT + 1}.log").read_text(errors="replace")
    assert "leads the cluster-wide duties" not in log
    # ... nothing was lost, and only tasks host-3 held at the cut ran twice
    published = await rig.home.run(rig.loader.published(since, time.time()))
    ids = sorted({*published, *held})
    done = await rig.home.run(settled(rig.observer.settings, ids, 90))
    lost = sorted(set(ids) - set(done))
    duplicates = _duplicates(rig, ids)
    foreign = rig.observer.events("silent_foreign", since=cut_at)
    killed = rig.observer.events("kill_silent", since=since)
    relaunched = rig.observer.events("relaunch", since=since)
    rig.figures["link_cut"] = {
        "tasks": len(ids), "lost": len(lost), "held_at_cut": len(held),
        "duplicates": len(duplicates), "rejoined_s": round(rejoined_in, 2),
        "silent_foreign": len(foreign), "kill_silent": len(killed),
        "slowest_publish_s": rig.loader.slowest(ids), "leader_after": leaders[0],
    }  # fmt: skip
    print("link cut:", json.dumps(rig.figures["link_cut"]), live)
    assert rig.loader.not_acked == [], rig.loader.not_acked
    assert lost == [], lost
    assert set(duplicates) <= set(held), (duplicates, held)
    assert killed == [], killed
    assert all(e["slot"] == crashed and e["reason"] == "exit" for e in relaunched), relaunched


async def _answers(observer: Observer, host: str) -> dict[str, Any] | None:
    replies = await observer.status()
    if host in replies and all(s["state"] == "running" for s in workers_of(replies[host]).values()):
        return replies
    return None


async def _healthy(rig: Rig, host: str) -> str | None:
    rows = [a for a in (await _get(rig, "/api/cluster/agents/live"))["agents"] if a["host"] == host]
    if len(rows) == 2 and all(a["status"] == "healthy" for a in rows):
        return ", ".join(f"{a['worker_id']} {a['status']}" for a in rows)
    return None


async def _lead_on(rig: Rig, node: str) -> bool:
    """Whether ``node`` leads the task stream and the echo consumer; if not, ask the
    current leaders to step down in its favour."""
    assert rig.observer.nc is not None
    nc, names = rig.observer.nc, rig.observer.settings.names
    js, stream, consumer = nc.jetstream(), names.tasks_stream, names.consumer("echo")
    body = json.dumps({"placement": {"preferred": node}}).encode()
    try:
        stream_leader = (await js.stream_info(stream)).cluster
        consumer_leader = (await js.consumer_info(stream, consumer)).cluster
    except ServiceUnavailableError:  # an election under way (after the link cut)
        return False
    if stream_leader is None or consumer_leader is None:
        return False
    if stream_leader.leader != node:
        with contextlib.suppress(Exception):
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{stream}", body, timeout=5)
    elif consumer_leader.leader != node:
        with contextlib.suppress(Exception):
            await nc.request(
                f"$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{consumer}", body, timeout=5
            )
    return stream_leader.leader == node and consumer_leader.leader == node


async def _down(rig: Rig, host: str) -> str | None:
    rows = [a for a in (await _get(rig, "/api/cluster/agents/live"))["agents"] if a["host"] == host]
    if rows and all(a["status"] != "healthy" for a in rows):
        return ", ".join(f"{a['worker_id']} {a['status']}" for a in rows)
    return None


@pytest.mark.timeout(240)
async def test_a_host_lost_whole_loses_nothing(rig: Rig) -> None:
    host, name = rig.hosts[LOST], HOST_IDS[LOST]
    settings = rig.observer.settings
    # Given host-2's node leading the task stream and the echo consumer (the hard case:
    # the naks for its workers' tasks wait for a new consumer leader), and host-2's workers
    # holding tasks under load
    await rig.home.run(eventually(lambda: _lead_on(rig, f"n{LOST}"), 30, 0.5))
    await rig.home.run(eventually(lambda: len(rig.observer.in_flight(name)) >= 2, 20))
    since = time.time()
    workers = [p.pid for p in map(recorded_process, (rig.settings[LOST].data_dir / "run")
               .glob("*.json")) if p is not None]  # fmt: skip
    victims = [proc.pid for proc in host.procs if proc.poll() is None] + workers
    # When every process of host-2 is killed (healer, workers, nats node, Redis replica,
    # Sentinel)
    # (when host-2's healer leads, the naks wait for the next leader too: the lease's TTL
    # and a poll, as the README says; the lease can move to host-2 while the link cut above
    # makes the lease bucket elect a stream leader)
    lost_led = await rig.home.run(_leader(rig.observer)) == [name]
    held = rig.observer.in_flight(name)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    finished = await rig.home.run(settled(settings, held, 0))
    held = sorted(set(held) - set(finished))  # the ones host-2 had not finished
    bound = SILENCE + 1.0
    nak_bound = LEASE_TTL + 1.0 + bound if lost_led else bound
    # Then the gateway shows its workers down within the silence timeout + 1 s ...
    shown = await rig.home.run(eventually(lambda: _down(rig, name), bound + 10, 0.05))
    down_in = time.time() - killed_at
    # ... the leader naks the tasks they held, and each runs on another host
    foreign = await rig.home.run(
        eventually(lambda: rig.observer.events("silent_foreign", since=killed_at), nak_bound + 10)
    )
    nak_in = max(e["at"] for e in foreign) - killed_at
    leaders = await rig.home.run(_leader(rig.observer))
    assert len(leaders) == 1 and {e["host"] for e in foreign} == set(leaders), (foreign, leaders)
    redone = await rig.home.run(settled(settings, held, 60))
    assert sorted(redone) == held, (held, sorted(redone))
    assert all(not (r.worker_id or "").endswith("@" + name) for r in redone.values()), redone
    ran_in = max((float(r.finished_at or killed_at) for r in redone.values()), default=killed_at)
    # ... and nothing is lost
    ids = sorted({*await rig.home.run(rig.loader.published(since, time.time())), *held})
    done = await rig.home.run(settled(settings, ids, 90))
    lost = sorted(set(ids) - set(done))
    rig.figures["host_lost"] = {
        "tasks": len(ids), "lost": len(lost), "held": len(held),
        "shown_down_s": round(down_in, 2), "nak_s": round(nak_in, 2),
        "ran_elsewhere_s": round(ran_in - killed_at, 2), "task_seconds": TASK_SLEEP,
        "slowest_publish_s": rig.loader.slowest(ids), "lost_host_led": lost_led,
    }  # fmt: skip
    print("host lost:", json.dumps(rig.figures["host_lost"]), shown)
    assert rig.loader.not_acked == [], rig.loader.not_acked
    assert lost == [], lost
    assert down_in <= bound + 1.0, down_in  # the view is polled: generous
    assert nak_in <= nak_bound + 1.0, (nak_in, lost_led)
    # (a new consumer leader is elected first, seconds; yet the tasks ran well before
    # ack_wait would have brought them back: the naks were not lost)
    assert ran_in - killed_at < ACK_WAIT - 2.0, ran_in - killed_at
