"""Workflow definitions, templates and filters: what loads, and what is refused with a clear
message naming the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orchestrator.definition import load_definitions, parse_definition
from orchestrator.errors import DefinitionError
from orchestrator.filters import code, language, verdict
from orchestrator.template import Condition, Ref, Text, compile_template, render

ONE = '[[steps]]\nname = "a"\nagent = "coder"\n'


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 'x'\n[[steps]\n", "not valid TOML"),
        ("name = 'Bad Name'\n" + ONE, "name 'Bad Name'"),
        ("name = 'x'\n", "at least one [[steps]]"),
        ("name = 'x'\nextra = 1\n" + ONE, "unknown key 'extra'"),
        ("name = 'x'\n[[steps]]\nname = 'a'\n", "agent None is not an agent type"),
        ("name = 'x'\n[[steps]]\nname = 'a'\nagent = 'a.b'\n", "agent 'a.b'"),
        ("name = 'x'\n" + ONE + ONE, "step 'a' is defined twice"),
        ("name = 'x'\n" + ONE + "after = ['nope']\n", "after names unknown step 'nope'"),
        ("name = 'x'\n[[steps]]\nname = 'a'\nagent = 'coder'\nafter = ['b']\n"
         "[[steps]]\nname = 'b'\nagent = 'coder'\nafter = ['a']\n", "cycle: a, b"),
        ("name = 'x'\n" + ONE + "description = '{b.content}'\n", "refers to 'b'"),
        ("name = 'x'\n" + ONE + "description = '{input.x|shout}'\n", "unknown filter 'shout'"),
        ("name = 'x'\n" + ONE + "description = 'a } b'\n", "unbalanced '}'"),
        ("name = 'x'\n" + ONE + "description = '{result.x}'\n", "only known in output"),
        ("name = 'x'\n" + ONE + "when = 'input.a === 1'\n", "when: cannot read"),
        ("name = 'x'\n" + ONE + "[loop]\nsteps = ['a']\n", "needs a while condition"),
        ("name = 'x'\n" + ONE + "[loop]\nsteps = ['a']\nwhile = 'a'\nmax_iterations = 0\n",
         "max_iterations must be 1-100"),
        ("name = 'x'\n" + ONE + "[loop]\nsteps = ['zz']\nwhile = 'a'\n", "unknown step 'zz'"),
        ("name = 'x'\n[[steps]]\nname = 'ok'\nkind = 'approval'\nagent = 'coder'\n",
         "an approval step has no 'agent'"),
    ],
)  # fmt: skip
def test_bad_definitions_are_refused_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition(text, "bad.toml")
    assert str(caught.value).startswith("bad.toml: ") and message in str(caught.value)


def test_the_folder_adds_definitions_and_names_the_bad_file(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text("name = 'mine'\n" + ONE)
    loaded = load_definitions(str(tmp_path))
    assert set(loaded) == {"build", "mine"}
    (tmp_path / "worse.toml").write_text("name = 'worse'\n" + ONE + "after = ['x']\n")
    with pytest.raises(DefinitionError) as caught:
        load_definitions(str(tmp_path))
    assert f"FOUNDRY_WORKFLOWS_DIR: {tmp_path / 'worse.toml'}: step 'a'" in str(caught.value)
    with pytest.raises(DefinitionError, match="is not a folder"):
        load_definitions(str(tmp_path / "missing"))


def test_templates_render_values_and_text() -> None:
    data = {"input": {"n": 3, "name": "ada"}, "plan": {"items": ["a", "b"]}}

    def lookup(ref: Ref) -> object:
        value: object = data.get(ref.root)
        for key in ref.path:
            value = value.get(key) if isinstance(value, dict) else None
        return ref.apply(value)

    compiled = compile_template(
        {"whole": "{plan.items}", "text": "hi {input.name}: {input.n} {{x}}", "gone": "{plan.z}"},
        "t",
    )
    assert render(compiled, lookup) == {"whole": ["a", "b"], "text": "hi ada: 3 {x}", "gone": None}
    assert Text.parse("{plan.items|lines}", "t").render(lookup) == "a\nb"
    assert Condition.parse("input.n == 3", "c").holds(lookup)
    assert Condition.parse("input.name != 'bob'", "c").holds(lookup)
    assert not Condition.parse("input.missing", "c").holds(lookup)
    assert not Condition.parse('input.n == "3"', "c").holds(lookup)


def test_filters_find_code_and_verdicts() -> None:
    reply = "Plan first.\n```js\nlet x\n```\nThen:\n```bash\necho hi\n```\n"
    assert code(reply) == "echo hi\n" and language(reply) == "bash"
    assert code("print(1)") == "print(1)\n" and language("print(1)") == "python"
    assert verdict('```json\n{"verdict": "Approve", "reasons": "fine"}\n```') == {
        "verdict": "approve",
        "reasons": ["fine"],
    }
    assert verdict('Sure! {"verdict": "revise", "reasons": ["x"]} hope it helps') == {
        "verdict": "revise",
        "reasons": ["x"],
    }
    assert verdict("looks great to me") == {"verdict": "revise", "reasons": ["looks great to me"]}
    assert verdict('{"verdict": "maybe"}')["verdict"] == "revise"


ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_definitions_load_as_written() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Workflows") : readme.index("## HTTP API")]
    docs = (ROOT / "docs" / "workflows.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", section + docs, re.S)
    assert len(blocks) == 2
    for block in blocks:
        definition = parse_definition(block, "documented")
        assert definition.loop is not None and definition.steps
