"""Validation of decoded messages: typed field readers that raise :class:`MessageRejected`.

Every reader takes the decoded JSON object and a key, checks type, range,
pattern and size, and returns the value. A failure names the message kind, a
short machine reason (a label value: ``missing``, ``type``, ``range``,
``pattern``, ``size``, ``enum``, ``json``, ``subject``) and a sentence for
people.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import StrEnum
from typing import Any, TypeVar

from foundry import codec

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")

# ids chosen by people or derived from sequences: task ids, worker ids, slot names
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$")
MAX_TEXT = 4096  # characters of a free-text field (reasons, errors, notes)
MAX_INT = 2**53  # what a JSON number carries exactly


class MessageRejected(ValueError):
    """A message failed validation: ``kind`` and ``reason`` label the rejection counter."""

    def __init__(self, kind: str, reason: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.reason = reason
        self.detail = detail


class Reader:
    """Field readers bound to one message kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def reject(self, reason: str, detail: str) -> MessageRejected:
        return MessageRejected(self.kind, reason, detail)

    def object(self, data: bytes | str, max_bytes: int) -> dict[str, Any]:
        """Decode ``data`` as one JSON object of at most ``max_bytes``."""
        if len(data) > max_bytes:
            raise self.reject("size", f"{len(data)} bytes, over the {max_bytes} byte limit")
        try:
            body = codec.loads(data)
        except codec.JSONDecodeError as exc:
            raise self.reject("json", f"not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise self.reject("type", f"a JSON object is required, not {type(body).__name__}")
        return body

    def _get(self, body: dict[str, Any], key: str, required: bool) -> Any:
        if key not in body or body[key] is None:
            if required:
                raise self.reject("missing", f"{key!r} is required")
            return None
        return body[key]

    def string(
        self,
        body: dict[str, Any],
        key: str,
        *,
        required: bool = True,
        pattern: re.Pattern[str] | None = None,
        max_len: int = MAX_TEXT,
        default: str | None = None,
    ) -> Any:
        value = self._get(body, key, required)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.reject("type", f"{key!r} must be a string, not {type(value).__name__}")
        if len(value) > max_len:
            raise self.reject("size", f"{key!r} is {len(value)} characters, over {max_len}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.reject("pattern", f"{key!r}={value[:40]!r} does not match {pattern.pattern}")
        return value

    def integer(
        self,
        body: dict[str, Any],
        key: str,
        *,
        required: bool = True,
        low: int = 0,
        high: int = MAX_INT,
        default: int | None = None,
    ) -> Any:
        value = self._get(body, key, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.reject("type", f"{key!r} must be a whole number, not {value!r:.40}")
        if not low <= value <= high:
            raise self.reject("range", f"{key!r}={value} is outside {low}..{high}")
        return value

    def number(
        self,
        body: dict[str, Any],
        key: str,
        *,
        required: bool = True,
        low: float = 0.0,
        high: float = 1e15,
        default: float | None = None,
    ) -> Any:
        value = self._get(body, key, required)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.reject("type", f"{key!r} must be a number, not {value!r:.40}")
        if not math.isfinite(value) or not low <= value <= high:
            raise self.reject("range", f"{key!r}={value!r} is outside {low:g}..{high:g}")
        return float(value)

    def boolean(
        self, body: dict[str, Any], key: str, *, required: bool = True, default: bool = False
    ) -> bool:
        value = self._get(body, key, required)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.reject("type", f"{key!r} must be true or false, not {value!r:.40}")
        return value

    def enum(
        self,
        body: dict[str, Any],
        key: str,
        enum: type[E],
        *,
        required: bool = True,
        default: E | None = None,
    ) -> Any:
        value = self._get(body, key, required)
        if value is None:
            return default
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(m.value for m in enum)
            raise self.reject("enum", f"{key!r}={value!r:.40} is not one of {allowed}") from None

    def items(
        self,
        body: dict[str, Any],
        key: str,
        parse: Callable[[Any], T],
        *,
        max_items: int,
        required: bool = False,
    ) -> list[T]:
        value = self._get(body, key, required)
        if value is None:
            return []
        if not isinstance(value, list):
            raise self.reject("type", f"{key!r} must be a list, not {type(value).__name__}")
        if len(value) > max_items:
            raise self.reject("size", f"{key!r} has {len(value)} items, over {max_items}")
        return [parse(item) for item in value]

    def mapping(self, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.reject("type", f"{what} must be a JSON object, not {type(value).__name__}")
        return value
