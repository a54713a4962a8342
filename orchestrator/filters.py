"""The filters a template may apply to a value (``{code.reply|code}``): pure, total functions.

Each takes any JSON value and returns one; none raises on odd input, so a step
whose agent answered something unexpected still yields a value the next step
(or the loop condition) can judge.

- ``code``: the program in a reply: its first fenced block in python or bash (or
  with no language), else its first fenced block, else the whole text.
- ``language``: that block's language as the ``exec`` handler names it (``python``
  or ``bash``; ``python`` when the block names none or another).
- ``verdict``: a critic's reply as ``{"verdict": "approve"|"revise", "reasons": [...]}``.
  The reply should be that JSON object (alone, in a fenced block, or inside text);
  anything else counts as ``revise`` with the reply itself as the reason.
- ``json``: the value as JSON text. ``text``: the value as text (JSON for non-strings).
- ``lines``: a list as one line per item (other values as text).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from foundry import codec

FENCE_RE = re.compile(r"^(```|~~~)[ \t]*([\w+#.-]*)[^\n]*\n(.*?)^\1[ \t]*$", re.S | re.M)
LANGUAGES = {"python": "python", "py": "python", "python3": "python", "bash": "bash",
             "sh": "bash", "shell": "bash", "": "python"}  # fmt: skip
VERDICTS = ("approve", "revise")
MAX_REASONS = 50
MAX_REASON_CHARS = 4000


def text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return codec.dumps(value).decode()


def _blocks(value: Any) -> list[tuple[str, str]]:
    return [(m.group(2).lower(), m.group(3)) for m in FENCE_RE.finditer(text(value))]


def _program(value: Any) -> tuple[str, str]:
    blocks = _blocks(value)
    for language, body in blocks:
        if language in LANGUAGES:
            return LANGUAGES[language], body
    if blocks:
        return "python", blocks[0][1]
    return "python", text(value).strip() + "\n"


def code(value: Any) -> str:
    return _program(value)[1]


def language(value: Any) -> str:
    return _program(value)[0]


def _objects(reply: str) -> list[Any]:
    """JSON objects the reply may hold: all of it, its fenced blocks, its outermost braces."""
    candidates = [reply.strip()]
    candidates += [body.strip() for _, body in _blocks(reply)]
    first, last = reply.find("{"), reply.rfind("}")
    if 0 <= first < last:
        candidates.append(reply[first : last + 1])
    out = []
    for candidate in candidates:
        try:
            out.append(codec.loads(candidate))
        except codec.JSONDecodeError:
            continue
    return out


def verdict(value: Any) -> dict[str, Any]:
    reply = text(value)
    for body in _objects(reply):
        if not isinstance(body, dict):
            continue
        said = body.get("verdict")
        if not isinstance(said, str) or said.strip().lower() not in VERDICTS:
            continue
        reasons = body.get("reasons", [])
        if isinstance(reasons, str):
            reasons = [reasons]
        if not isinstance(reasons, list):
            reasons = [text(reasons)]
        kept = [text(r)[:MAX_REASON_CHARS] for r in reasons[:MAX_REASONS]]
        return {"verdict": said.strip().lower(), "reasons": kept}
    return {"verdict": "revise", "reasons": [reply.strip()[:MAX_REASON_CHARS] or "(empty reply)"]}


def as_json(value: Any) -> str:
    return codec.dumps(value).decode()


def lines(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(text(item) for item in value)
    return text(value)


FILTERS: dict[str, Callable[[Any], Any]] = {
    "code": code,
    "language": language,
    "verdict": verdict,
    "json": as_json,
    "text": text,
    "lines": lines,
}
