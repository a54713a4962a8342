"""Event loop and JSON codec variants of the *unchanged* services, through import shims.

The services use uvloop when ``import uvloop`` works (``foundry.runtime.run``,
``gateway.__main__``) and encode every message with orjson (``foundry.codec``).
To measure what each buys without editing them, a variant puts a folder first
on the children's ``PYTHONPATH`` holding a stand-in package: an ``uvloop`` whose
import fails (the services fall back to asyncio), or an ``orjson`` backed by
the standard library's json or by msgspec. The shims are written at run time
into the run's temporary folder; nothing in the repository imports them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

NO_UVLOOP = '''"""Benchmark shim: importing uvloop fails, so services fall back to asyncio."""

raise ImportError("uvloop disabled by the benchmark's asyncio variant")
'''

ORJSON_ON_STDLIB = '''"""Benchmark shim: orjson's dumps/loads on the standard library's json."""

import dataclasses as _dc
import json as _json

JSONDecodeError = _json.JSONDecodeError


def dumps(obj, default=None, option=None):
    def native(value):
        # orjson encodes dataclass instances as objects of their fields, before any default
        if _dc.is_dataclass(value) and not isinstance(value, type):
            return {f.name: getattr(value, f.name) for f in _dc.fields(value)}
        if default is None:
            raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")
        return default(value)

    return _json.dumps(obj, default=native, separators=(",", ":"), ensure_ascii=False).encode()


def loads(data):
    if isinstance(data, memoryview):
        data = bytes(data)
    return _json.loads(data)
'''

ORJSON_ON_MSGSPEC = '''"""Benchmark shim: orjson's dumps/loads on msgspec.json."""

import msgspec as _msgspec

JSONDecodeError = _msgspec.DecodeError  # a ValueError, like orjson's
_encoder = _msgspec.json.Encoder(enc_hook=str)
_decoder = _msgspec.json.Decoder()


def dumps(obj, default=None, option=None):
    if default is None or default is str:
        return _encoder.encode(obj)
    return _msgspec.json.encode(obj, enc_hook=default)


def loads(data):
    return _decoder.decode(data)
'''


@dataclass(frozen=True)
class Variant:
    loop: str  # uvloop | asyncio
    codec: str  # orjson | json | msgspec
    code: Path | None = None  # run the services from this copy of the code (--ab)

    @property
    def name(self) -> str:
        where = f" @{self.code}" if self.code else ""
        return f"{self.loop}+{self.codec}{where}"

    @property
    def is_default(self) -> bool:
        return self.loop == "uvloop" and self.codec == "orjson"

    def shims(self, root: Path) -> tuple[Path, ...]:
        """Write this variant's stand-in packages under ``root``; the folders to prepend."""
        code = (self.code,) if self.code else ()
        if self.is_default:
            return code
        folder = root / "shims" / f"{self.loop}-{self.codec}"
        if self.loop == "asyncio":
            (folder / "uvloop").mkdir(parents=True, exist_ok=True)
            (folder / "uvloop" / "__init__.py").write_text(NO_UVLOOP)
        if self.codec != "orjson":
            source = ORJSON_ON_STDLIB if self.codec == "json" else ORJSON_ON_MSGSPEC
            (folder / "orjson").mkdir(parents=True, exist_ok=True)
            (folder / "orjson" / "__init__.py").write_text(source)
        return (folder, *code)


DEFAULT = Variant("uvloop", "orjson")
BASELINE_VARIANTS = (DEFAULT, Variant("asyncio", "orjson"), Variant("uvloop", "json"))
HAVE_MSGSPEC = importlib.util.find_spec("msgspec") is not None  # the bench extra brings it
FOUNDRY_VARIANTS = (
    DEFAULT,
    Variant("asyncio", "orjson"),
    Variant("uvloop", "json"),
    Variant("asyncio", "json"),
    *((Variant("uvloop", "msgspec"),) if HAVE_MSGSPEC else ()),
)
