"""Autoscaler: backlog adds workers, an empty queue drains the idle surplus, headroom caps both.

Also FOUNDRY_FLEET's ``min..max`` ranges, which the policy's bounds come from.
"""

from __future__ import annotations

import pytest

from foundry.errors import ConfigError
from foundry.settings import FleetRange, Settings, parse_fleet, parse_fleet_ranges
from healer.autoscale import Autoscaler, HostView, ScaleConfig, Step, TypeView

CFG = ScaleConfig(backlog=100, samples=3, cooldown=30.0, cpu_threshold=90, memory_threshold=85)
COOL_HOST = HostView(cpu_percent=20.0, memory_percent=40.0, cpus=2, memory_total_bytes=1000)
GIB = 1024**3


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scaler(clock: Clock, **ranges: FleetRange) -> Autoscaler:
    return Autoscaler(ranges or {"echo": FleetRange(1, 4)}, CFG, clock)


def view(pending: int, target: int = 1, **kw: object) -> TypeView:
    fields: dict[str, object] = {"live": target, **kw}
    return TypeView("echo", pending, target, **fields)  # type: ignore[arg-type]


def checks(auto: Autoscaler, v: TypeView, n: int, host: HostView = COOL_HOST) -> list[list[str]]:
    return [[d.step.value for d in auto.decide([v], host)] for _ in range(n)]


# ---- up ------------------------------------------------------------------------------
def test_a_backlog_held_for_the_sample_count_adds_workers_doubling_up_to_the_maximum() -> None:
    auto = scaler(Clock())
    # Given 3,000 pending for one worker: two checks say nothing, the third adds one (1 → 2)
    assert checks(auto, view(3000), 2) == [[], []]
    [up] = auto.decide([view(3000)], COOL_HOST)
    assert (up.step, up.from_count, up.to_count) == (Step.UP, 1, 2)
    assert up.per_worker == 3000 and up.reason == "backlog"
    # When the backlog stays for two workers, the next step doubles to the maximum of 4
    assert checks(auto, view(3000, 2), 2) == [[], []]
    [up] = auto.decide([view(3000, 2)], COOL_HOST)
    assert (up.from_count, up.to_count) == (2, 4)
    # Then at the maximum no check adds more
    assert checks(auto, view(3000, 4), 6) == [[]] * 6


def test_a_step_adds_only_what_the_backlog_needs() -> None:
    auto = scaler(Clock(), echo=FleetRange(2, 16))
    # 500 pending over 2 workers (250 each): 5 workers would hold 100 each, doubling allows 4
    checks(auto, view(500, 2), 2)
    [up] = auto.decide([view(500, 2)], COOL_HOST)
    assert up.to_count == 4
    checks(auto, view(500, 4), 2)  # 125 each: one more is what 500/100 asks for
    [up] = auto.decide([view(500, 4)], COOL_HOST)
    assert up.to_count == 5


def test_a_dip_under_the_threshold_starts_the_count_again() -> None:
    auto = scaler(Clock())
    assert checks(auto, view(3000), 2) == [[], []]
    assert checks(auto, view(100), 1) == [[]]  # 100 per worker is not above 100
    assert checks(auto, view(3000), 3) == [[], [], ["up"]]


def test_workers_still_starting_hold_the_judgement() -> None:
    auto = scaler(Clock())
    checks(auto, view(3000), 2)
    # a new worker launched but not yet heartbeating: no decision, and the count restarts
    assert checks(auto, view(3000, target=2, live=1, starting=1), 5) == [[]] * 5
    assert checks(auto, view(3000, 2), 3) == [[], [], ["up"]]


def test_a_type_at_zero_workers_scales_up_for_any_pending_task() -> None:
    auto = scaler(Clock(), echo=FleetRange(0, 2))
    assert checks(auto, view(1, target=0, live=0), 3) == [[], [], ["up"]]
    assert checks(auto, view(0, target=0, live=0), 3) == [[]] * 3


def test_fixed_counts_are_never_scaled() -> None:
    auto = Autoscaler({"echo": FleetRange(2, 2)}, CFG, Clock())
    assert checks(auto, view(10_000, 2), 5) == [[]] * 5
    assert auto.state() == {}


# ---- headroom ------------------------------------------------------------------------
def test_a_hot_host_blocks_the_step_once_per_backlog() -> None:
    auto = scaler(Clock())
    hot = HostView(cpu_percent=95.0, memory_percent=40.0, cpus=2, memory_total_bytes=GIB)
    # Given a backlog on a host over FOUNDRY_CPU_THRESHOLD: one blocked decision, then quiet
    steps = checks(auto, view(3000), 9, hot)
    assert steps == [[], [], ["blocked"]] + [[]] * 6
    # When the backlog ends and comes back, the refusal is announced again
    checks(auto, view(0), 1, hot)
    assert checks(auto, view(3000), 3, hot) == [[], [], ["blocked"]]
    # And once the host cools, the backlog is served
    assert checks(auto, view(3000), 3) == [[], [], ["up"]]


def test_the_blocked_decision_names_the_thresholds_and_the_figures() -> None:
    auto = scaler(Clock())
    full = HostView(cpu_percent=10.0, memory_percent=86.0, cpus=2, memory_total_bytes=GIB)
    checks(auto, view(3000), 2, full)
    [blocked] = auto.decide([view(3000)], full)
    assert blocked.to_count == blocked.from_count == 1 and blocked.reason == "no_headroom"
    assert "FOUNDRY_MEMORY_THRESHOLD=85" in blocked.why
    details = blocked.details()
    assert details["memory_percent"] == 86.0 and details["room_workers"] == 0
    assert details["backlog"] == 3000 and details["backlog_per_worker"] == 3000.0


def test_no_host_sample_means_no_step_up() -> None:
    auto = scaler(Clock())
    unknown = HostView(cpu_percent=None, memory_percent=None)
    [blocked] = [d for step in range(3) for d in auto.decide([view(3000)], unknown)]
    assert blocked.step is Step.BLOCKED and "headroom unknown" in blocked.why


def test_memory_headroom_caps_how_many_workers_are_added() -> None:
    auto = scaler(Clock(), echo=FleetRange(1, 8))
    # Given memory at 80% of 100 units (threshold 85) and workers of 2 units each:
    # 82% and 84% stay under the threshold, a third would reach 86%
    host = HostView(cpu_percent=10.0, memory_percent=80.0, cpus=2, memory_total_bytes=100)
    busy = view(3000, 4, worker_rss_bytes=2)
    checks(auto, busy, 2, host)
    [up] = auto.decide([busy], host)
    assert (up.from_count, up.to_count) == (4, 6)
    assert up.details()["room_workers"] == 2 and "headroom allows 2 more" in up.why


def test_cpu_headroom_counts_what_a_busy_worker_uses() -> None:
    auto = scaler(Clock(), echo=FleetRange(1, 8))
    # 2 cpus at 60% (threshold 90): a worker at 40% of one core adds 20% of the host
    host = HostView(cpu_percent=60.0, memory_percent=10.0, cpus=2, memory_total_bytes=GIB)
    busy = view(3000, 2, worker_cpu_percent=40.0)
    checks(auto, busy, 2, host)
    [up] = auto.decide([busy], host)
    assert up.to_count == 3  # 80% fits, 100% does not


def test_types_share_the_room_of_one_host_in_one_check() -> None:
    auto = Autoscaler({"a": FleetRange(1, 4), "b": FleetRange(1, 4)}, CFG, Clock())
    # Given memory at 82% of 100 units (threshold 85) and workers of 2 units: room for one
    host = HostView(cpu_percent=10.0, memory_percent=82.0, cpus=1, memory_total_bytes=100)
    a = TypeView("a", 3000, 1, 1, worker_rss_bytes=2)
    b = TypeView("b", 3000, 1, 1, worker_rss_bytes=2)
    for _ in range(2):
        assert auto.decide([a, b], host) == []
    # When both types have a backlog in the same check
    decisions = auto.decide([a, b], host)
    # Then the first takes the room (84%) and the second would reach 86%: blocked
    assert [(d.agent_type, d.step, d.to_count) for d in decisions] == [
        ("a", Step.UP, 2),
        ("b", Step.BLOCKED, 1),
    ]
    assert decisions[1].details()["memory_percent"] == 84.0


# ---- down ----------------------------------------------------------------------------
def test_an_empty_queue_for_the_cooldown_drains_the_idle_surplus_down_to_the_minimum() -> None:
    clock = Clock()
    auto = scaler(clock)
    idle = ("echo-3", "echo-2", "echo-1", "echo-0")
    # Given four workers, all idle, and nothing pending
    assert auto.decide([view(0, 4, idle=idle)], COOL_HOST) == []
    clock.now += 29.0
    assert auto.decide([view(0, 4, idle=idle)], COOL_HOST) == []
    # When the queue has stayed empty for the cooldown
    clock.now += 1.0
    [down] = auto.decide([view(0, 4, idle=idle)], COOL_HOST)
    # Then the surplus goes, highest index first, and the minimum stays
    assert (down.step, down.from_count, down.to_count) == (Step.DOWN, 4, 1)
    assert down.retire == ("echo-3", "echo-2", "echo-1") and down.reason == "idle"
    assert down.details()["retired"] == ["echo-3", "echo-2", "echo-1"]
    # and at the minimum nothing more is drained
    assert auto.decide([view(0, 1, idle=("echo-0",))], COOL_HOST) == []


def test_only_idle_workers_are_drained() -> None:
    clock = Clock()
    auto = scaler(clock)
    auto.decide([view(0, 4)], COOL_HOST)
    clock.now += 31
    assert auto.decide([view(0, 4, idle=())], COOL_HOST) == []  # all still finishing tasks
    [down] = auto.decide([view(0, 4, idle=("echo-2",))], COOL_HOST)
    assert down.retire == ("echo-2",) and down.to_count == 3


def test_a_pending_task_restarts_the_cooldown() -> None:
    clock = Clock()
    auto = scaler(clock)
    idle = ("echo-1",)
    auto.decide([view(0, 2, idle=idle)], COOL_HOST)
    clock.now += 20
    auto.decide([view(5, 2, idle=idle)], COOL_HOST)  # a few tasks: not a backlog, not calm
    clock.now += 20
    assert auto.decide([view(0, 2, idle=idle)], COOL_HOST) == []
    clock.now += 29
    assert auto.decide([view(0, 2, idle=idle)], COOL_HOST) == []
    clock.now += 1
    assert [d.step for d in auto.decide([view(0, 2, idle=idle)], COOL_HOST)] == [Step.DOWN]


def test_state_reports_ranges_and_counters() -> None:
    clock = Clock()
    auto = scaler(clock)
    checks(auto, view(3000), 2)
    assert auto.state()["echo"] == {
        "min": 1,
        "max": 4,
        "backlog_checks": 2,
        "calm_seconds": None,
        "blocked": False,
    }


# ---- FOUNDRY_FLEET ranges -------------------------------------------------------------
def test_fleet_ranges_parse_and_the_minimum_is_the_fleet() -> None:
    text = "echo=1..4, coder=2 ,critic=0..256"
    assert parse_fleet_ranges(text) == {
        "echo": FleetRange(1, 4),
        "coder": FleetRange(2, 2),
        "critic": FleetRange(0, 256),
    }
    assert parse_fleet(text) == {"echo": 1, "coder": 2, "critic": 0}
    settings = Settings.from_env({"FOUNDRY_FLEET": text})
    assert settings.fleet == {"echo": 1, "coder": 2, "critic": 0}
    assert settings.fleet_ranges["echo"] == FleetRange(1, 4)
    assert settings.to_env()["FOUNDRY_FLEET"] == "echo=1..4,coder=2,critic=0..256"
    assert Settings.from_env(settings.to_env()) == settings


def test_a_fleet_given_as_counts_has_fixed_ranges() -> None:
    settings = Settings(fleet={"coder": 2})
    assert settings.fleet_ranges == {"coder": FleetRange(2, 2)}
    ranged = Settings(fleet_ranges={"coder": FleetRange(1, 3)})
    assert ranged.fleet == {"coder": 1}
    with pytest.raises(ConfigError, match=r"^FOUNDRY_FLEET"):
        Settings(fleet={"coder": 2}, fleet_ranges={"coder": FleetRange(1, 3)})


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("echo=4..1", "minimum 4 above its maximum 1"),
        ("echo=-1..2", "between 0 and 256"),
        ("echo=1..257", "between 0 and 256"),
        ("echo=1..", "not a whole number"),
        ("echo=..3", "not a whole number"),
        ("echo=1...3", "not a whole number"),
        ("echo=1-3", "not a whole number"),
    ],
)
def test_bad_ranges_name_foundry_fleet(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"FOUNDRY_FLEET": text})
    assert str(caught.value).startswith("FOUNDRY_FLEET: ") and words in str(caught.value)


@pytest.mark.parametrize(
    "var",
    ["FOUNDRY_SCALE_BACKLOG", "FOUNDRY_SCALE_SAMPLES", "FOUNDRY_SCALE_INTERVAL"],
)
def test_bad_scale_settings_name_their_variable(var: str) -> None:
    with pytest.raises(ConfigError, match=rf"^{var}"):
        Settings.from_env({var: "0"})
    with pytest.raises(ConfigError, match=r"^FOUNDRY_SCALE_COOLDOWN"):
        Settings.from_env({"FOUNDRY_SCALE_COOLDOWN": "-1"})
