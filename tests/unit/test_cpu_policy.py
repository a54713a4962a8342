"""CpuPolicy: N hot samples throttle the busiest type to half, N cool samples restore it."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import Heartbeat, HostSample, WorkerState
from foundry.settings import Settings
from healer.remediation.base import Action, Actuator, HostView
from healer.remediation.cpu import CpuPolicy
from tests.unit.samples import NOW

THRESHOLD = 80.0
SAMPLES = 3


class RecordingActuator:
    """The healer side of the policy: records what it was asked to change."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def recycle(self, worker_id: str, reason: str) -> dict[str, Any]:
        self.calls.append(("recycle", worker_id, reason))
        return {"recycled": True}

    async def set_concurrency(self, agent_type: str, concurrency: int | None) -> None:
        self.calls.append(("set_concurrency", agent_type, concurrency))

    def runs_server(self, name: str) -> bool:
        return False

    async def restart_server(self, name: str) -> dict[str, Any]:
        self.calls.append(("restart_server", name))
        return {}


def host(cpu: float) -> HostSample:
    return HostSample("host-1", NOW, cpu, 1.0, 30.0, 0.0)


def beat(worker_id: str, agent_type: str, cpu: float, concurrency: int) -> Heartbeat:
    return Heartbeat(
        worker_id, agent_type, "host-1", 1000 + len(worker_id), 0, WorkerState.BUSY,
        cpu_percent=cpu, concurrency=concurrency,
    )  # fmt: skip


def fleet(coder_concurrency: int = 16) -> dict[str, Heartbeat]:
    # coder uses 90% in all over two workers, critic 50% on one: coder is the busiest
    return {
        "coder-0": beat("coder-0", "coder", 60.0, coder_concurrency),
        "coder-1": beat("coder-1", "coder", 30.0, coder_concurrency),
        "critic-0": beat("critic-0", "critic", 50.0, 8),
    }


def view(cpu: float, beats: dict[str, Heartbeat] | None = None) -> HostView:
    return HostView(host(cpu), fleet() if beats is None else beats)


@pytest.fixture
def actuator() -> RecordingActuator:
    return RecordingActuator()


@pytest.fixture
def policy(actuator: RecordingActuator) -> CpuPolicy:
    settings = Settings(cpu_threshold=THRESHOLD, cpu_samples=SAMPLES)
    collaborator: Actuator = actuator  # checked against the protocol by mypy
    return CpuPolicy(settings, collaborator)


def hot_until_throttle(policy: CpuPolicy) -> Action:
    for _ in range(SAMPLES - 1):
        assert policy.evaluate(view(95.0)) == []
    (action,) = policy.evaluate(view(95.0))
    return action


async def test_hot_for_n_samples_throttles_the_busiest_type_to_half(
    policy: CpuPolicy, actuator: RecordingActuator
) -> None:
    action = hot_until_throttle(policy)
    assert (action.policy, action.action, action.target) == ("cpu", "throttle", "coder")
    assert action.params == {"concurrency": 8}
    assert action.before == {"cpu_percent": 95.0, "concurrency": 16}
    assert "FOUNDRY_CPU_THRESHOLD" in action.reason and action.key == "cpu:coder"
    assert actuator.calls == []  # evaluate changes nothing
    outcome = await policy.apply(action)
    assert (outcome.outcome, outcome.after) == ("done", {"concurrency": 8})
    assert actuator.calls == [("set_concurrency", "coder", 8)]
    assert policy.state() == {"throttled": {"coder": 8}, "hot_samples": SAMPLES}


async def test_the_same_level_is_not_asked_twice(policy: CpuPolicy) -> None:
    await policy.apply(hot_until_throttle(policy))
    # workers still report 16 until they take the control message: nothing new to ask
    assert policy.evaluate(view(95.0)) == []


async def test_still_hot_at_the_lower_level_halves_again_but_not_below_one(
    policy: CpuPolicy,
) -> None:
    await policy.apply(hot_until_throttle(policy))
    (again,) = policy.evaluate(view(95.0, fleet(coder_concurrency=8)))
    assert again.params == {"concurrency": 4}
    assert policy.evaluate(view(95.0, fleet(coder_concurrency=1))) == []


def test_a_cool_sample_resets_the_hot_count(policy: CpuPolicy) -> None:
    for cpu in (95.0, 95.0, 50.0, 95.0, 95.0):
        assert policy.evaluate(view(cpu)) == []
    assert len(policy.evaluate(view(THRESHOLD))) == 1  # at the threshold counts as hot


async def test_cool_for_n_samples_restores_the_default(
    policy: CpuPolicy, actuator: RecordingActuator
) -> None:
    await policy.apply(hot_until_throttle(policy))
    for _ in range(SAMPLES - 1):
        assert policy.evaluate(view(20.0)) == []
    (restore,) = policy.evaluate(view(20.0))
    assert (restore.action, restore.target) == ("restore", "coder")
    assert restore.key == "cpu:restore:coder"  # its own cool-down, apart from the throttle
    assert restore.before == {"cpu_percent": 20.0, "concurrency": 8}
    outcome = await policy.apply(restore)
    assert (outcome.outcome, outcome.after) == ("done", {"concurrency": "default"})
    assert actuator.calls[-1] == ("set_concurrency", "coder", None)
    assert policy.state()["throttled"] == {}
    assert policy.evaluate(view(20.0)) == []  # nothing left to restore


def test_cool_without_a_throttle_does_nothing(policy: CpuPolicy) -> None:
    for _ in range(SAMPLES * 2):
        assert policy.evaluate(view(10.0)) == []


def test_no_beats_no_action(policy: CpuPolicy, actuator: RecordingActuator) -> None:
    for _ in range(SAMPLES * 2):
        assert policy.evaluate(view(99.0, beats={})) == []
    assert actuator.calls == []


def test_no_sample_changes_no_counter(policy: CpuPolicy) -> None:
    policy.evaluate(view(95.0))
    for _ in range(5):
        assert policy.evaluate(HostView(None, fleet())) == []
    assert policy.state()["hot_samples"] == 1
