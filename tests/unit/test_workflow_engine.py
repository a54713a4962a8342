"""The workflow engine without servers: the built-in build workflow's rounds, approvals,
fan-out / fan-in, failures and cancels, driven by task results made up here."""

from __future__ import annotations

from typing import Any

import pytest

from foundry.contracts import TaskStatus
from foundry.contracts.workflow import StepStatus, WorkflowState, WorkflowStatus
from foundry.store import TaskRecord
from orchestrator.definition import builtin_definitions, parse_definition
from orchestrator.engine import Announce, CancelTask, Effect, Engine, Submit
from orchestrator.errors import WorkflowConflict, WorkflowInputError

APPROVE = '{"verdict": "approve", "reasons": []}'
CODE = "Here it is:\n```python\nprint('hi')\n```\nRun it with python."


def record(task_id: str, status: TaskStatus, result: Any = None, error: str = "") -> TaskRecord:
    return TaskRecord(task_id, None, status, result, error or None, 1, "w-0", 1.0, 2.0, 3.0)


class Run:
    """Drives one workflow: answers each submitted task from ``replies`` (per agent type)."""

    def __init__(self, engine: Engine, task_input: dict[str, Any]) -> None:
        self.engine = engine
        self.state, effects = engine.start("wf-1", task_input, "tester", 0.0)
        self.submitted: list[Submit] = []
        self.effects: list[Effect] = []
        self.take(effects)
        self.now = 0.0

    def take(self, effects: list[Effect]) -> None:
        self.effects += effects
        self.submitted += [e for e in effects if isinstance(e, Submit)]

    def pending(self) -> list[Submit]:
        return [s for s in self.submitted if self.state.by_task(s.run.task_id or "") is not None
                and s.run.status is StepStatus.RUNNING]  # fmt: skip

    def answer(self, replies: dict[str, list[Any]]) -> None:
        """Complete every running task with the next reply for its agent type, until none runs."""
        for _ in range(50):
            todo = self.pending()
            if not todo or self.state.status.final:
                return
            for submit in todo:
                agent = submit.run.agent_type or ""
                reply = replies[agent].pop(0) if len(replies[agent]) > 1 else replies[agent][0]
                self.now += 1
                result = reply if agent in ("executor", "deployer") else {"content": reply}
                rec = record(submit.run.task_id or "", TaskStatus.COMPLETED, result)
                self.take(self.engine.on_task(self.state, rec, self.now))

    def kinds(self) -> list[str]:
        return [e.kind.value for e in self.effects if isinstance(e, Announce)]


def build() -> Engine:
    return Engine(builtin_definitions()["build"])


def replies(*verdicts: str) -> dict[str, list[Any]]:
    return {
        "architect": ["the plan"],
        "coder": [CODE],
        "executor": [{"exit_code": 0, "stdout": "hi\n", "stderr": ""}],
        "critic": list(verdicts),
        "deployer": [{"status": 200}],
    }


def test_build_approved_on_the_first_round_runs_every_role_once() -> None:
    run = Run(build(), {"description": "a greeter"})
    run.answer(replies(APPROVE))
    assert run.state.status is WorkflowStatus.COMPLETED
    agents = [s.run.agent_type for s in run.submitted]
    assert agents == ["architect", "coder", "executor", "critic", "deployer"]
    # the executor got the code from the coder's fenced block, the deployer code and run
    executor = run.submitted[2]
    assert executor.input == {"code": "print('hi')\n", "language": "python"}
    deploy = run.submitted[4].input
    assert deploy["code"] == "print('hi')\n" and deploy["run"]["stdout"] == "hi\n"
    assert run.state.run("approval", 1).status is StepStatus.SKIPPED  # type: ignore[union-attr]
    assert [s.run.task_id for s in run.submitted][:2] == ["wf-1.plan.1", "wf-1.code.1"]


def test_revise_twice_then_approve_takes_three_rounds_and_the_coder_sees_the_critique() -> None:
    run = Run(build(), {"description": "a greeter"})
    revise = '{"verdict": "revise", "reasons": ["add tests", "handle empty names"]}'
    run.answer(replies(revise, "not json at all", APPROVE))
    assert run.state.status is WorkflowStatus.COMPLETED and run.state.round == 3
    coders = [s for s in run.submitted if s.run.agent_type == "coder"]
    assert [c.run.task_id for c in coders] == ["wf-1.code.1", "wf-1.code.2", "wf-1.code.3"]
    assert coders[0].input["critique"] is None
    assert coders[1].input["critique"] == ["add tests", "handle empty names"]
    # an unparseable reply is a revise with the reply as its reason
    assert coders[2].input["critique"] == ["not json at all"]
    assert run.kinds().count("round") == 2


def test_revise_every_round_fails_after_max_iterations_with_the_last_critique() -> None:
    run = Run(build(), {"description": "a greeter"})
    run.answer(replies('{"verdict": "revise", "reasons": ["round %d still wrong"]}'))
    assert run.state.status is WorkflowStatus.FAILED and run.state.round == 3
    assert "all 3 rounds" in (run.state.error or "") and "still wrong" in (run.state.error or "")
    assert not any(s.run.agent_type == "deployer" for s in run.submitted)


def test_approval_waits_for_a_person_then_deploys() -> None:
    engine = build()
    run = Run(engine, {"description": "x", "require_approval": True})
    run.answer(replies(APPROVE))
    assert run.state.status is WorkflowStatus.WAITING_APPROVAL
    assert not any(s.run.agent_type == "deployer" for s in run.submitted)
    run.take(engine.approve(run.state, "ops", "ship it", 10.0))
    run.answer(replies(APPROVE))
    assert run.state.status.value == "completed"
    approval = run.state.run("approval", 1)
    assert approval is not None and approval.approved_by == "ops"
    with pytest.raises(WorkflowConflict):
        engine.approve(run.state, "ops", None, 11.0)


def test_a_failed_step_fails_the_workflow_and_cancel_cascades() -> None:
    engine = build()
    state, _ = engine.start("wf-2", {"description": "x"}, None, 0.0)
    effects = engine.on_task(state, record("wf-2.plan.1", TaskStatus.FAILED, error="boom"), 1.0)
    assert state.status is WorkflowStatus.FAILED and "boom" in (state.error or "")
    assert not any(isinstance(e, Submit) for e in effects)
    # cancel while the coder runs: its task is cancelled, nothing after it starts
    state, _ = engine.start("wf-3", {"description": "x"}, None, 0.0)
    engine.on_task(state, record("wf-3.plan.1", TaskStatus.COMPLETED, {"content": "p"}), 1.0)
    effects = engine.cancel(state, 2.0)
    assert [e for e in effects if isinstance(e, CancelTask)] == [CancelTask("wf-3.code.1")]
    assert state.status is WorkflowStatus.CANCELLED
    late = record("wf-3.code.1", TaskStatus.COMPLETED, {"content": CODE})
    assert engine.on_task(state, late, 3.0) == []
    with pytest.raises(WorkflowConflict):
        engine.cancel(state, 4.0)


def test_missing_input_is_refused_naming_the_field() -> None:
    with pytest.raises(WorkflowInputError, match=r"input\.description"):
        build().start("wf-4", {}, None, 0.0)


FAN = """
name = "fan"
[[steps]]
name = "a"
agent = "architect"
[[steps]]
name = "left"
agent = "coder"
after = ["a"]
[[steps]]
name = "right"
agent = "critic"
after = ["a"]
[[steps]]
name = "both"
agent = "deployer"
after = ["left", "right"]
input = { l = "{left}", r = "{right}" }
[[steps]]
name = "first"
agent = "executor"
after = ["left", "right"]
join = "any"
"""


def test_fan_out_then_fan_in_all_and_any() -> None:
    engine = Engine(parse_definition(FAN, "fan.toml"))
    state, effects = engine.start("wf-5", {}, None, 0.0)
    engine.on_task(state, record("wf-5.a.1", TaskStatus.COMPLETED, "A"), 1.0)
    assert {k for k in state.runs} == {"a.1", "left.1", "right.1"}  # fan-out
    effects = engine.on_task(state, record("wf-5.left.1", TaskStatus.COMPLETED, "L"), 2.0)
    started = [e.run.step for e in effects if isinstance(e, Submit)]
    assert started == ["first"]  # any: one branch is enough; all: not yet
    effects = engine.on_task(state, record("wf-5.right.1", TaskStatus.COMPLETED, "R"), 3.0)
    [both] = [e for e in effects if isinstance(e, Submit)]
    assert both.input == {"l": "L", "r": "R"}
    engine.on_task(state, record("wf-5.first.1", TaskStatus.COMPLETED, 1), 4.0)
    engine.on_task(state, record("wf-5.both.1", TaskStatus.COMPLETED, 2), 5.0)
    assert state.status is WorkflowStatus.COMPLETED


def test_state_survives_its_own_serialisation() -> None:
    run = Run(build(), {"description": "a greeter"})
    run.answer(replies(APPROVE))
    again = WorkflowState.from_payload(run.state.to_payload())
    assert again.to_json() == run.state.to_json()
