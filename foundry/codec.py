"""JSON encoding for every message and stored record (orjson: ~5x the stdlib)."""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError


def dumps(obj: Any) -> bytes:
    """Encode ``obj`` as compact UTF-8 JSON; non-JSON values are stringified."""
    return orjson.dumps(obj, default=str)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Decode JSON; raises :data:`JSONDecodeError` (a ValueError) on bad input."""
    return orjson.loads(data)
