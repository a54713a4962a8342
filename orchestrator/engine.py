"""How a workflow moves: every change of a :class:`WorkflowState` happens here.

The service reports facts (started, a step's task finished, approved,
cancelled); the engine changes the state and returns the effects to carry out
(tasks to submit, events to announce, tasks to cancel). The service stores the
new state before it carries them out, and every effect is safe to repeat, so a
crash between the two only repeats effects.

- start: a new state, then advance.
- advance: each step whose turn has come is skipped (its ``when`` is false),
  waits for approval (an approval step) or runs (its task is submitted). When
  every step of the loop is done in this round, the loop's condition decides: it
  holds → the next round (or, rounds exhausted, the workflow fails); it does not
  → the loop is done. Every step done → completed.
- a task completed: its run completed with the result and output, then advance.
- a task failed, dead or cancelled: its run failed (cancelled); the workflow failed.
- approve: the waiting approval completed (who, comment), then advance.
- cancel: running runs and their tasks cancelled; the workflow cancelled.

A step's turn has come when the steps it waits for are done (completed or
skipped) — all of them, or any with ``join = "any"``. Inside the loop that means
done in this round; a step after the loop also waits for the loop to end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from foundry.contracts import TaskStatus
from foundry.contracts.workflow import (
    StepRun,
    StepStatus,
    WorkflowEventKind,
    WorkflowState,
    WorkflowStatus,
    step_task_id,
)
from foundry.store import TaskRecord
from orchestrator.definition import APPROVAL, Definition, StepDef
from orchestrator.errors import WorkflowConflict, WorkflowInputError
from orchestrator.filters import text
from orchestrator.template import Lookup, Ref, dig, render


@dataclass(frozen=True)
class Submit:
    """Publish the task of ``run`` (its id is ``run.task_id``)."""

    run: StepRun
    description: str
    input: Any


@dataclass(frozen=True)
class Announce:
    """Publish a workflow event."""

    kind: WorkflowEventKind
    run: StepRun | None = None


@dataclass(frozen=True)
class CancelTask:
    task_id: str


Effect = Submit | Announce | CancelTask


class Engine:
    """The transitions of workflows of one definition."""

    def __init__(self, definition: Definition) -> None:
        self.d = definition

    # ---- facts -----------------------------------------------------------------------
    def start(
        self, workflow_id: str, task_input: dict[str, Any], submitted_by: str | None, now: float
    ) -> tuple[WorkflowState, list[Effect]]:
        missing = [k for k in self.d.inputs if task_input.get(k) in (None, "", [], {})]
        if missing:
            raise WorkflowInputError(
                f"input.{missing[0]} is required by workflow {self.d.name!r} "
                f"(its inputs: {', '.join(self.d.inputs)})"
            )
        state = WorkflowState(
            workflow_id=workflow_id,
            workflow=self.d.name,
            input=task_input,
            submitted_by=submitted_by,
            created_at=now,
            updated_at=now,
            max_iterations=self.d.loop.max_iterations if self.d.loop else 0,
        )
        return state, [Announce(WorkflowEventKind.STARTED), *self.advance(state, now)]

    def on_task(self, state: WorkflowState, record: TaskRecord, now: float) -> list[Effect]:
        """The task of one of the state's runs reached a final status."""
        run = state.by_task(record.task_id)
        if run is None or state.status.final or run.status.final or not record.final:
            return []
        run.started_at = record.started_at
        run.finished_at = record.finished_at or now
        run.attempts = record.attempts
        run.result = record.result
        state.updated_at = now
        if record.status == TaskStatus.COMPLETED:
            step = self.d.step(run.step)
            run.output = (
                record.result
                if step.output is None
                else render(step.output, self._lookup(state, record.result))
            )
            run.status = StepStatus.COMPLETED
            return [Announce(WorkflowEventKind.STEP_FINISHED, run), *self.advance(state, now)]
        run.error = record.error
        if record.status == TaskStatus.CANCELLED:
            run.status = StepStatus.CANCELLED
            why = f"step {run.step!r} ({run.agent_type}) was cancelled"
        else:
            run.status = StepStatus.FAILED
            why = f"step {run.step!r} ({run.agent_type}) {record.status}: {record.error or '?'}"
        return [Announce(WorkflowEventKind.STEP_FINISHED, run), *self._finish(state, why, now)]

    def approve(
        self, state: WorkflowState, by: str | None, comment: str | None, now: float
    ) -> list[Effect]:
        waiting = [r for r in state.runs.values() if r.status is StepStatus.WAITING_APPROVAL]
        if not waiting:
            raise WorkflowConflict(
                f"workflow {state.workflow_id!r} is {state.status}: nothing waits for approval"
            )
        effects: list[Effect] = []
        for run in waiting:
            run.status, run.approved_by, run.comment = StepStatus.COMPLETED, by, comment
            run.started_at, run.finished_at = run.submitted_at, now
            effects.append(Announce(WorkflowEventKind.APPROVED, run))
        state.updated_at = now
        return effects + self.advance(state, now)

    def cancel(self, state: WorkflowState, now: float) -> list[Effect]:
        if state.status.final:
            raise WorkflowConflict(
                f"workflow {state.workflow_id!r} is already {state.status}: nothing to cancel"
            )
        effects: list[Effect] = []
        for run in state.runs.values():
            if not run.status.final:
                run.status, run.finished_at = StepStatus.CANCELLED, now
                run.error = "cancelled with its workflow"
                if run.task_id is not None:
                    effects.append(CancelTask(run.task_id))
        return effects + self._finish(state, "cancelled by request", now, WorkflowStatus.CANCELLED)

    # ---- advancing -------------------------------------------------------------------
    def advance(self, state: WorkflowState, now: float) -> list[Effect]:
        """Start every step whose turn has come, close rounds, finish the workflow."""
        effects: list[Effect] = []
        # each pass starts at least one step or closes a round: bounded by both counts
        for _ in range(len(self.d.steps) + state.max_iterations + 2):
            if state.status.final:
                return effects
            changed = False
            for step in self.d.steps:
                round_ = self._round(state, step.name)
                if state.run(step.name, round_) is not None:
                    continue
                ready_at = self._ready_at(state, step)
                if ready_at is None:
                    continue
                changed = True
                effects += self._begin(state, step, round_, ready_at, now)
            changed = self._close_round(state, now, effects) or changed
            if not changed:
                break
        if not state.status.final:
            effects += self._settle(state, now)
        return effects

    def _begin(
        self, state: WorkflowState, step: StepDef, round_: int, ready_at: float, now: float
    ) -> list[Effect]:
        lookup = self._lookup(state)
        overhead = round(max(0.0, now - ready_at), 6)
        run = StepRun(
            step.name, round_, StepStatus.RUNNING, step.agent, submitted_at=now,
            overhead_seconds=overhead,
        )  # fmt: skip
        state.add(run)
        state.updated_at = now
        if step.when is not None and not step.when.holds(lookup):
            run.status, run.finished_at = StepStatus.SKIPPED, now
            return [Announce(WorkflowEventKind.STEP_FINISHED, run)]
        if step.kind == APPROVAL:
            run.status = StepStatus.WAITING_APPROVAL
            state.status = WorkflowStatus.WAITING_APPROVAL
            return [Announce(WorkflowEventKind.WAITING_APPROVAL, run)]
        run.task_id = step_task_id(state.workflow_id, step.name, round_)
        return [self.task_of(state, run), Announce(WorkflowEventKind.STEP_STARTED, run)]

    def task_of(self, state: WorkflowState, run: StepRun) -> Submit:
        """The task of a running step, rendered from the state. Rendering again after a
        restart gives the same task: it reads only steps that finished before it began."""
        step = self.d.step(run.step)
        lookup = self._lookup(state)
        return Submit(run, text(render(step.description, lookup)), render(step.input, lookup))

    def _close_round(self, state: WorkflowState, now: float, effects: list[Effect]) -> bool:
        loop = self.d.loop
        if loop is None or state.loop_done:
            return False
        runs = [state.run(name, state.round) for name in loop.steps]
        if not all(run is not None and run.status.done for run in runs):
            return False
        lookup = self._lookup(state)
        if not loop.repeat_while.holds(lookup):
            state.loop_done = True
            return True
        if state.round >= state.max_iterations:
            effects += self._finish(state, text(render(loop.exhausted, lookup)), now)
            return True
        state.round += 1
        state.updated_at = now
        effects.append(Announce(WorkflowEventKind.ROUND))
        return True

    def _settle(self, state: WorkflowState, now: float) -> list[Effect]:
        every_done = all(
            (run := state.run(s.name, self._round(state, s.name))) is not None and run.status.done
            for s in self.d.steps
        )
        if every_done and (self.d.loop is None or state.loop_done):
            state.status, state.finished_at, state.updated_at = WorkflowStatus.COMPLETED, now, now
            return [Announce(WorkflowEventKind.COMPLETED)]
        waiting = any(r.status is StepStatus.WAITING_APPROVAL for r in state.runs.values())
        state.status = WorkflowStatus.WAITING_APPROVAL if waiting else WorkflowStatus.RUNNING
        return []

    def _finish(
        self,
        state: WorkflowState,
        error: str,
        now: float,
        status: WorkflowStatus = WorkflowStatus.FAILED,
    ) -> list[Effect]:
        state.status, state.error = status, error
        state.finished_at = state.updated_at = now
        effects: list[Effect] = []
        if status is WorkflowStatus.FAILED:  # runs still going on are of no use now
            for run in state.runs.values():
                if not run.status.final:
                    run.status, run.finished_at = StepStatus.CANCELLED, now
                    run.error = "cancelled: the workflow failed"
                    if run.task_id is not None:
                        effects.append(CancelTask(run.task_id))
        kind = WorkflowEventKind.FAILED if status is WorkflowStatus.FAILED else (
            WorkflowEventKind.CANCELLED)  # fmt: skip
        return [*effects, Announce(kind)]

    # ---- readiness -------------------------------------------------------------------
    def _round(self, state: WorkflowState, step: str) -> int:
        return state.round if self.d.in_loop(step) else 1

    def _done_at(self, state: WorkflowState, dep: str, step: str) -> float | None:
        """When ``dep`` finished, as far as ``step`` is concerned (None: not done)."""
        if self.d.in_loop(dep) and not self.d.in_loop(step) and not state.loop_done:
            return None
        run = state.run(dep, self._round(state, dep))
        if run is None or not run.status.done:
            return None
        return run.finished_at or state.updated_at

    def _ready_at(self, state: WorkflowState, step: StepDef) -> float | None:
        """When the step's turn came, or None while it has not."""
        times = [self._done_at(state, dep, step.name) for dep in step.after]
        done = [t for t in times if t is not None]
        if step.join == "all" and len(done) < len(times):
            return None
        if step.after and not done:
            return None
        ready = (max(done) if step.join == "all" else min(done)) if done else state.created_at
        if self.d.in_loop(step.name) and state.round > 1:
            ready = max(ready, self._round_began(state))
        return ready

    def _round_began(self, state: WorkflowState) -> float:
        """When the previous round's last step finished."""
        assert self.d.loop is not None
        ends = [
            run.finished_at or 0.0
            for name in self.d.loop.steps
            if (run := state.run(name, state.round - 1)) is not None
        ]
        return max(ends, default=state.created_at)

    # ---- lookups ---------------------------------------------------------------------
    def _lookup(self, state: WorkflowState, result: Any = None) -> Lookup:
        def lookup(ref: Ref) -> Any:
            return ref.apply(dig(self._root(state, ref.root, result), ref.path))

        return lookup

    def _root(self, state: WorkflowState, root: str, result: Any) -> Any:
        if root == "input":
            return state.input
        if root == "workflow":
            return {"id": state.workflow_id, "name": state.workflow}
        if root == "loop":
            return {"round": state.round, "max_iterations": state.max_iterations}
        if root == "result":
            return result
        latest = max(self._completed(state, root), key=lambda r: r.round, default=None)
        return latest.output if latest is not None else None

    @staticmethod
    def _completed(state: WorkflowState, step: str) -> Iterator[StepRun]:
        return (r for r in state.runs.values() if r.step == step and r.status.done)
