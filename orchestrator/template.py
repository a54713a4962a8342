"""Templates and conditions of workflow definitions: references into data, never code.

A template is a TOML value. In a string, ``{path|filter|…}`` is replaced by the
value at ``path``; ``{{`` and ``}}`` are literal braces. A string that is one
reference and nothing else yields the value itself (a table, a list, a number),
any other string yields text (non-text values as JSON). Tables and arrays are
rendered item by item. A reference to something that does not exist (yet) is
null — empty text inside a string.

A path is a root and dotted keys: ``input.description``, ``plan.content``,
``review.reasons.0``. Roots: ``input`` (the workflow's input), ``workflow``
(``id``, ``name``), ``loop`` (``round``, ``max_iterations``), ``result`` (in a
step's ``output`` only: its task's result), and the name of a step (its output).
Filters are listed in :mod:`orchestrator.filters`.

A condition is ``<operand>``, ``<operand> == <operand>`` or ``<operand> != <operand>``;
an operand is a path (with filters) or a literal: ``"text"``, ``'text'``, a number,
``true``, ``false``, ``null``. One operand alone is true when its value is not
null, false, 0, empty text or empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from foundry import codec
from orchestrator.errors import DefinitionError
from orchestrator.filters import FILTERS

_SEGMENT = r"[A-Za-z_][A-Za-z0-9_-]*|[0-9]+"
PATH_RE = re.compile(rf"^({_SEGMENT})(\.({_SEGMENT}))*$")
_PIECE_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Ref:
    """A reference: ``root.key.key|filter|filter``."""

    root: str
    path: tuple[str, ...]
    filters: tuple[str, ...]
    source: str

    @classmethod
    def parse(cls, source: str, where: str) -> Ref:
        path_text, *filters = (part.strip() for part in source.split("|"))
        if not PATH_RE.fullmatch(path_text):
            raise DefinitionError(
                f"{where}: {{{source}}} is not a reference like {{input.description}} or "
                "{plan.content|code}"
            )
        unknown = [f for f in filters if f not in FILTERS]
        if unknown:
            raise DefinitionError(
                f"{where}: unknown filter {unknown[0]!r} in {{{source}}} "
                f"(filters: {', '.join(FILTERS)})"
            )
        root, *path = path_text.split(".")
        return cls(root, tuple(path), tuple(filters), source)

    def apply(self, value: Any) -> Any:
        for name in self.filters:
            value = FILTERS[name](value)
        return value


Lookup = Callable[[Ref], Any]


def dig(value: Any, path: tuple[str, ...]) -> Any:
    """``value`` followed along ``path`` (keys of tables, indexes of lists); None if absent."""
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        else:
            return None
    return value


@dataclass(frozen=True)
class Text:
    """One template string: literal pieces and references."""

    parts: tuple[str | Ref, ...]

    @classmethod
    def parse(cls, source: str, where: str) -> Text:
        parts: list[str | Ref] = []
        at = 0
        for match in _PIECE_RE.finditer(source):
            parts.append(source[at : match.start()])
            token = match.group(0)
            if token in ("{{", "}}"):
                parts.append(token[0])
            elif match.group(1) is not None:
                parts.append(Ref.parse(match.group(1), where))
            else:
                raise DefinitionError(
                    f"{where}: unbalanced {token!r} in {source[:60]!r} (write {token * 2} for "
                    "a literal brace)"
                )
            at = match.end()
        parts.append(source[at:])
        return cls(tuple(p for p in parts if p != ""))

    def render(self, lookup: Lookup) -> Any:
        if len(self.parts) == 1 and isinstance(self.parts[0], Ref):
            return lookup(self.parts[0])
        out = []
        for part in self.parts:
            if isinstance(part, Ref):
                value = lookup(part)
                out.append(value if isinstance(value, str) else _inline(value))
            else:
                out.append(part)
        return "".join(out)


def _inline(value: Any) -> str:
    return "" if value is None else codec.dumps(value).decode()


Compiled = Any  # Text, dict[str, Compiled], list[Compiled], or a plain scalar


def compile_template(value: Any, where: str) -> Compiled:
    """A TOML value with every string parsed as a template."""
    if isinstance(value, str):
        return Text.parse(value, where)
    if isinstance(value, dict):
        return {k: compile_template(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [compile_template(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if hasattr(value, "isoformat"):  # TOML dates and times
        return value.isoformat()
    return value


def render(compiled: Compiled, lookup: Lookup) -> Any:
    if isinstance(compiled, Text):
        return compiled.render(lookup)
    if isinstance(compiled, dict):
        return {k: render(v, lookup) for k, v in compiled.items()}
    if isinstance(compiled, list):
        return [render(v, lookup) for v in compiled]
    return compiled


def refs(compiled: Compiled) -> Iterator[Ref]:
    """Every reference in a compiled template."""
    if isinstance(compiled, Text):
        yield from (p for p in compiled.parts if isinstance(p, Ref))
    elif isinstance(compiled, dict):
        for v in compiled.values():
            yield from refs(v)
    elif isinstance(compiled, list):
        for v in compiled:
            yield from refs(v)


_TOKEN_RE = re.compile(
    r"""\s*(?:(?P<op>==|!=)|"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<num>-?[0-9]+(?:\.[0-9]+)?)(?![\w.])"""
    r"""|(?P<word>[A-Za-z0-9_.|-]+))\s*"""
)
_LITERALS: dict[str, Any] = {"true": True, "false": False, "null": None}


@dataclass(frozen=True)
class Operand:
    ref: Ref | None = None
    literal: Any = None

    def value(self, lookup: Lookup) -> Any:
        return lookup(self.ref) if self.ref is not None else self.literal


@dataclass(frozen=True)
class Condition:
    """``left``, or ``left == right`` / ``left != right``."""

    left: Operand
    op: str | None = None
    right: Operand | None = None
    source: str = ""

    @classmethod
    def parse(cls, source: str, where: str) -> Condition:
        if not isinstance(source, str) or not source.strip():
            raise DefinitionError(
                f"{where}: a condition must be text like 'review.verdict == \"revise\"'"
            )
        tokens: list[tuple[str, str]] = []
        at = 0
        while at < len(source):
            match = _TOKEN_RE.match(source, at)
            if match is None or match.end() == at:
                raise DefinitionError(
                    f"{where}: cannot read {source[at : at + 30]!r} in {source!r}"
                )
            kind = match.lastgroup or ""
            tokens.append((kind, match.group(kind)))
            at = match.end()
        shape = [kind == "op" for kind, _ in tokens]
        if shape not in ([False], [False, True, False]):
            raise DefinitionError(
                f"{where}: {source!r} is not '<value>' or '<value> == <value>' / '!=' "
                '(values: a path like review.verdict, "text", a number, true, false, null)'
            )
        left = cls._operand(tokens[0], where)
        if len(tokens) == 1:
            return cls(left, source=source)
        return cls(left, tokens[1][1], cls._operand(tokens[2], where), source)

    @staticmethod
    def _operand(token: tuple[str, str], where: str) -> Operand:
        kind, text = token
        if kind in ("dq", "sq"):
            return Operand(literal=text)
        if kind == "num":
            return Operand(literal=float(text) if "." in text else int(text))
        if text in _LITERALS:
            return Operand(literal=_LITERALS[text])
        return Operand(ref=Ref.parse(text, where))

    def refs(self) -> Iterator[Ref]:
        for operand in (self.left, self.right):
            if operand is not None and operand.ref is not None:
                yield operand.ref

    def holds(self, lookup: Lookup) -> bool:
        left = self.left.value(lookup)
        if self.op is None or self.right is None:
            return left not in (None, False, 0, "", [], {})
        right = self.right.value(lookup)
        same = (left == right and type(left) is type(right)) or _numbers_equal(left, right)
        return same if self.op == "==" else not same


def _numbers_equal(a: Any, b: Any) -> bool:
    numeric = (int, float)
    return (
        isinstance(a, numeric)
        and isinstance(b, numeric)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )
