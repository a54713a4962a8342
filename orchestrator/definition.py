"""Workflow definitions: TOML files read and checked once, at start-up.

The format (README "Workflows" shows it whole)::

    name = "review"                 # the workflow's name (lowercase, as agent types)
    description = "…"
    inputs = ["description"]        # input fields a start must give

    [[steps]]
    name = "plan"                   # a step's name: its results are {plan…}
    agent = "architect"             # the agent type that runs it (kind = "task")
    description = "Design: {input.description}"   # the task's description (a template)
    input = { request = "{input.description}" }   # the task's input (a template)
    output = "{result.content}"     # what later steps see as {plan} (default: the result)
    after = []                      # steps it waits for; join = "all" (default) or "any"
    when = "input.fast != true"     # a condition: false → the step is skipped

    [[steps]]
    name = "approve"
    kind = "approval"               # waits for POST …/approve
    after = ["plan"]

    [loop]                          # at most one: these steps run again, in rounds,
    steps = ["code", "review"]      # while the condition holds after each round
    while = 'review.verdict == "revise"'
    max_iterations = 3              # rounds at most; then the workflow fails with
    exhausted = "still revising: {review.reasons}"   # this message

Every reference must name something that exists before the step runs: the
input, the workflow, the loop, steps it waits for (directly or not), and — for
a step in the loop — the loop's other steps (their previous round's output
until this round's is there).
"""

from __future__ import annotations

import logging
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from foundry.contracts.workflow import STEP_NAME_RE, WORKFLOW_NAME_RE
from foundry.names import AGENT_TYPE_HINT, AGENT_TYPE_RE
from orchestrator.errors import DefinitionError
from orchestrator.template import Compiled, Condition, Ref, compile_template, refs

log = logging.getLogger(__name__)
ROOTS = ("input", "workflow", "loop", "result")
TASK, APPROVAL = "task", "approval"
MAX_STEPS = 64
MAX_ITERATIONS = 100
DEFAULT_ITERATIONS = 3
_TOP = {"name", "description", "inputs", "steps", "loop"}
_STEP = {"name", "agent", "kind", "after", "join", "description", "input", "output", "when"}
_LOOP = {"steps", "while", "max_iterations", "exhausted"}


@dataclass(frozen=True)
class StepDef:
    name: str
    kind: str
    agent: str | None
    after: tuple[str, ...]
    join: str
    description: Compiled
    input: Compiled
    output: Compiled
    when: Condition | None


@dataclass(frozen=True)
class LoopDef:
    steps: tuple[str, ...]
    repeat_while: Condition
    max_iterations: int
    exhausted: Compiled


@dataclass(frozen=True)
class Definition:
    name: str
    description: str
    inputs: tuple[str, ...]
    steps: tuple[StepDef, ...]  # in an order where every step follows those it waits for
    loop: LoopDef | None
    source: str

    def step(self, name: str) -> StepDef:
        return next(s for s in self.steps if s.name == name)

    def in_loop(self, name: str) -> bool:
        return self.loop is not None and name in self.loop.steps


def _table(value: Any, what: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise DefinitionError(f"{what} must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise DefinitionError(
            f"{what}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return value


def _names(value: Any, what: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DefinitionError(f"{what} must be a list of step names")
    return tuple(value)


def _step(raw: Any, index: int) -> StepDef:
    what = f"steps[{index}]"
    body = _table(raw, what, _STEP)
    name = body.get("name")
    if not isinstance(name, str) or not STEP_NAME_RE.fullmatch(name) or name in ROOTS:
        raise DefinitionError(
            f"{what}: name {name!r} must be 1-32 lowercase letters, digits, '_' or '-' "
            f"(starting with a letter) and not one of {', '.join(ROOTS)}"
        )
    what = f"step {name!r}"
    kind = body.get("kind", TASK)
    if kind not in (TASK, APPROVAL):
        raise DefinitionError(f"{what}: kind must be 'task' or 'approval', not {kind!r}")
    agent = body.get("agent")
    if kind == TASK and (not isinstance(agent, str) or not AGENT_TYPE_RE.fullmatch(agent)):
        raise DefinitionError(f"{what}: agent {agent!r} is not an agent type ({AGENT_TYPE_HINT})")
    if kind == APPROVAL:
        extra = sorted({"agent", "input", "output", "description"} & set(body))
        if extra:
            raise DefinitionError(f"{what}: an approval step has no {extra[0]!r}")
    join = body.get("join", "all")
    if join not in ("all", "any"):
        raise DefinitionError(f"{what}: join must be 'all' or 'any', not {join!r}")
    after = _names(body.get("after", []), f"{what}: after")
    description = body.get("description", "")
    if not isinstance(description, str):
        raise DefinitionError(f"{what}: description must be text (a template)")
    when = body.get("when")
    return StepDef(
        name=name,
        kind=kind,
        agent=agent if kind == TASK else None,
        after=after,
        join=join,
        description=compile_template(description, f"{what}: description"),
        input=compile_template(body.get("input"), f"{what}: input"),
        output=compile_template(body.get("output"), f"{what}: output"),
        when=Condition.parse(when, f"{what}: when") if when is not None else None,
    )


def _order(steps: list[StepDef]) -> tuple[StepDef, ...]:
    """Steps so that each follows the steps it waits for; refuses unknown names and cycles."""
    by_name: dict[str, StepDef] = {}
    for step in steps:
        if step.name in by_name:
            raise DefinitionError(f"step {step.name!r} is defined twice")
        by_name[step.name] = step
    for step in steps:
        for dep in step.after:
            if dep not in by_name:
                raise DefinitionError(f"step {step.name!r}: after names unknown step {dep!r}")
            if dep == step.name:
                raise DefinitionError(f"step {step.name!r} waits for itself")
    done: list[StepDef] = []
    placed: set[str] = set()
    while len(done) < len(steps):
        ready = [s for s in steps if s.name not in placed and set(s.after) <= placed]
        if not ready:
            stuck = sorted(s.name for s in steps if s.name not in placed)
            raise DefinitionError(f"steps wait for each other in a cycle: {', '.join(stuck)}")
        done.append(ready[0])
        placed.add(ready[0].name)
    return tuple(done)


def _ancestors(steps: tuple[StepDef, ...]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for step in steps:  # ordered: a step's dependencies are already there
        out[step.name] = set(step.after).union(*(out[d] for d in step.after))
    return out


def _loop(raw: Any, steps: tuple[StepDef, ...], ancestors: dict[str, set[str]]) -> LoopDef:
    body = _table(raw, "[loop]", _LOOP)
    names = _names(body.get("steps"), "[loop] steps")
    known = {s.name: s for s in steps}
    if not names:
        raise DefinitionError("[loop] steps must name at least one step")
    for name in names:
        if name not in known:
            raise DefinitionError(f"[loop] steps names unknown step {name!r}")
        if known[name].kind == APPROVAL:
            raise DefinitionError(f"[loop] step {name!r} is an approval: approvals run once")
        for dep in known[name].after:
            downstream = [b for b in names if b in ancestors[dep]]
            if dep not in names and downstream:
                raise DefinitionError(
                    f"[loop] step {name!r} waits for {dep!r}, which runs after the loop's "
                    f"step {downstream[0]!r}: put {dep!r} in the loop or before it"
                )
    iterations = body.get("max_iterations", DEFAULT_ITERATIONS)
    if isinstance(iterations, bool) or not isinstance(iterations, int):
        raise DefinitionError("[loop] max_iterations must be a whole number")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise DefinitionError(f"[loop] max_iterations must be 1-{MAX_ITERATIONS}, not {iterations}")
    if "while" not in body:
        raise DefinitionError("[loop] needs a while condition, e.g. 'review.verdict == \"revise\"'")
    exhausted = body.get(
        "exhausted", "the loop ran {loop.max_iterations} rounds and its condition still holds"
    )
    if not isinstance(exhausted, str):
        raise DefinitionError("[loop] exhausted must be text (a template)")
    return LoopDef(
        steps=tuple(s.name for s in steps if s.name in names),
        repeat_while=Condition.parse(body["while"], "[loop] while"),
        max_iterations=iterations,
        exhausted=compile_template(exhausted, "[loop] exhausted"),
    )


def _check_refs(
    where: str, found: list[Ref], visible: set[str], has_loop: bool, output: bool
) -> None:
    for ref in found:
        if ref.root == "result" and not output:
            raise DefinitionError(f"{where}: {{{ref.source}}}: result is only known in output")
        if ref.root == "loop" and not has_loop:
            raise DefinitionError(f"{where}: {{{ref.source}}}: this workflow has no [loop]")
        if ref.root in ROOTS:
            continue
        if ref.root not in visible:
            raise DefinitionError(
                f"{where}: {{{ref.source}}} refers to {ref.root!r}, which is not a step this "
                "one waits for (add it to after, directly or through another step)"
            )


def _checked(definition: Definition) -> Definition:
    ancestors = _ancestors(definition.steps)
    loop = definition.loop
    has_loop = loop is not None
    body = set(loop.steps) if loop else set()
    for step in definition.steps:
        visible = ancestors[step.name] | (body if step.name in body else set())
        where = f"step {step.name!r}"
        inputs = [*refs(step.description), *refs(step.input)]
        if step.when is not None:
            inputs += step.when.refs()
        _check_refs(where, inputs, visible, has_loop, output=False)
        _check_refs(f"{where}: output", list(refs(step.output)), visible, has_loop, output=True)
    if loop is not None:
        all_steps = {s.name for s in definition.steps}
        _check_refs("[loop] while", list(loop.repeat_while.refs()), body, True, output=False)
        _check_refs("[loop] exhausted", list(refs(loop.exhausted)), all_steps, True, output=False)
    return definition


def parse_definition(text: str, source: str) -> Definition:
    """One definition from TOML text; DefinitionError names ``source`` and the problem."""
    try:
        raw = tomllib.loads(text)
        body = _table(raw, "the file", _TOP)
        name = body.get("name")
        if not isinstance(name, str) or not WORKFLOW_NAME_RE.fullmatch(name):
            raise DefinitionError(
                f"name {name!r} must be 1-32 lowercase letters, digits, '_' or '-', "
                "starting with a letter"
            )
        inputs = body.get("inputs", [])
        if not isinstance(inputs, list) or not all(isinstance(i, str) and i for i in inputs):
            raise DefinitionError("inputs must be a list of input field names")
        raw_steps = body.get("steps")
        if not isinstance(raw_steps, list) or not raw_steps:
            raise DefinitionError("a workflow needs at least one [[steps]] table")
        if len(raw_steps) > MAX_STEPS:
            raise DefinitionError(f"{len(raw_steps)} steps, over the limit of {MAX_STEPS}")
        steps = _order([_step(s, i) for i, s in enumerate(raw_steps)])
        loop = _loop(body["loop"], steps, _ancestors(steps)) if "loop" in body else None
        description = body.get("description", "")
        if not isinstance(description, str):
            raise DefinitionError("description must be text")
        return _checked(Definition(name, description, tuple(inputs), steps, loop, source))
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{source}: not valid TOML: {exc}") from None
    except DefinitionError as exc:
        raise DefinitionError(f"{source}: {exc}") from None


BUILTIN = ("build",)


def builtin_definitions() -> dict[str, Definition]:
    out = {}
    for name in BUILTIN:
        text = resources.files("orchestrator.builtin").joinpath(f"{name}.toml").read_text("utf-8")
        out[name] = parse_definition(text, f"built-in {name}.toml")
    return out


def load_definitions(folder: str) -> dict[str, Definition]:
    """The built-in definitions, then every ``*.toml`` in ``folder`` (FOUNDRY_WORKFLOWS_DIR);
    a file may replace a built-in of the same name."""
    out = builtin_definitions()
    if not folder:
        return out
    path = Path(folder)
    if not path.is_dir():
        raise DefinitionError(f"FOUNDRY_WORKFLOWS_DIR: {folder} is not a folder")
    seen: dict[str, str] = {}
    for file in sorted(path.glob("*.toml")):
        try:
            text = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise DefinitionError(f"FOUNDRY_WORKFLOWS_DIR: {file}: cannot read it: {exc}") from None
        try:
            definition = parse_definition(text, str(file))
        except DefinitionError as exc:
            raise DefinitionError(f"FOUNDRY_WORKFLOWS_DIR: {exc}") from None
        if definition.name in seen:
            raise DefinitionError(
                f"FOUNDRY_WORKFLOWS_DIR: {file}: workflow {definition.name!r} is also "
                f"defined in {seen[definition.name]}"
            )
        if definition.name in out:
            log.info("workflow %r from %s replaces the built-in one", definition.name, file)
        seen[definition.name] = str(file)
        out[definition.name] = definition
    return out
