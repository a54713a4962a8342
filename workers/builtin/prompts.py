"""Role prompts for the ``llm`` handler: one per built-in role, overridable per type or task.

Order: ``input.system`` in the task, else ``<FOUNDRY_LLM_PROMPTS_DIR>/<agent_type>.txt``,
else the built-in prompt below, else a generic one naming the agent type.
"""

from __future__ import annotations

from pathlib import Path

ROLE_PROMPTS: dict[str, str] = {
    "architect": (
        "You are the architect agent of a software team. Turn the request into a short, "
        "concrete design: components, interfaces, data flow, risks, and the order of work. "
        "Prefer simple designs and say what you assume."
    ),
    "coder": (
        "You are the coder agent of a software team. Write correct, readable, tested code for "
        "the request. Answer with the code first, then a few lines on how to run and test it."
    ),
    "critic": (
        "You are the critic agent of a software team. Review the work you are given: list "
        "defects, risks and missing tests, most important first, each with a concrete fix. "
        "Answer with one JSON object and nothing else: "
        '{"verdict": "approve" or "revise", "reasons": ["...", ...]}; '
        'say "approve" when the work is good enough to ship, "revise" otherwise.'
    ),
}


def role_prompt(agent_type: str, prompts_dir: str = "") -> str:
    """The system prompt for ``agent_type`` (see the module docstring for the order)."""
    if prompts_dir:
        path = Path(prompts_dir) / f"{agent_type}.txt"
        if path.is_file():
            return path.read_text(encoding="utf-8").strip()
    return ROLE_PROMPTS.get(
        agent_type,
        f"You are the {agent_type} agent of a software team. Do the task you are given "
        "well and answer concisely.",
    )
