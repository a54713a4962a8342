"""Value parsers for settings, and the field machinery shared by every settings class.

Each parser turns one variable's text into a value or raises ``ValueError``
(or :class:`ConfigError` when it names the variable itself). :func:`opt`
declares a field read from one variable; :func:`read_fields` and
:func:`write_fields` are the ``from_env`` / ``to_env`` of any dataclass whose
fields are declared with it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from foundry.errors import ConfigError, InvalidAgentType
from foundry.names import validate_agent_type
from foundry.urls import redact_url, split_urls

DEFAULT_FLEET = "architect=1,coder=1,executor=1,critic=1,deployer=1"
_NAMESPACE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_VAR_RE = re.compile(r"^[A-Z_][A-Z0-9_]{0,127}$")
_SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

T = TypeVar("T")


def opt(var: str, conv: Callable[[str], Any], default: Any, repr: bool = True) -> Any:
    """A field read from ``var`` with ``conv``; ``repr=False`` for anything that may be a secret."""
    return dataclasses.field(default=default, repr=repr, metadata={"env": var, "conv": conv})


def section(cls: type[Any]) -> Any:
    """A field holding a group of settings (a dataclass whose fields are declared with opt)."""
    return dataclasses.field(default_factory=cls, metadata={"section": cls})


def read_fields(
    cls: type[Any], env: Mapping[str, str], overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """The constructor arguments of ``cls`` found in ``env``; ``overrides`` are not parsed."""
    values: dict[str, Any] = {}
    # An override of a field wins over its variable for every field read from that variable.
    overridden = {
        f.metadata["env"]
        for f in dataclasses.fields(cls)
        if f.name in overrides and "env" in f.metadata
    }
    for f in dataclasses.fields(cls):
        if f.name in overrides:
            continue
        if "section" in f.metadata:
            part = f.metadata["section"]
            values[f.name] = part(**read_fields(part, env, {}))
            continue
        var = f.metadata["env"]
        if var not in env or var in overridden:
            continue
        text = env[var].strip()
        try:
            values[f.name] = f.metadata["conv"](text)
        except ConfigError:
            raise
        except (ValueError, TypeError) as exc:
            # A field kept out of repr may hold a secret: never echo its value.
            shown = f"={text!r}" if f.repr else ""
            raise ConfigError(f"{var}{shown} is invalid: {exc}") from None
    values.update(overrides)
    return values


def write_fields(obj: Any) -> dict[str, str]:
    """The variables that recreate ``obj`` (sections included) through :func:`read_fields`."""
    out: dict[str, str] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if "section" in f.metadata:
            out.update(write_fields(value))
            continue
        if isinstance(value, dict):
            text = ",".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            text = "1" if value else "0"
        else:
            text = str(value)
        out[f.metadata["env"]] = text
    return out


MAX_WORKERS_PER_TYPE = 256


@dataclass(frozen=True)
class FleetRange:
    """How many workers of one type a healer runs: at least ``minimum``, at most ``maximum``."""

    minimum: int
    maximum: int

    def __str__(self) -> str:  # the FOUNDRY_FLEET spelling: ``n`` or ``min..max``
        if self.minimum == self.maximum:
            return str(self.minimum)
        return f"{self.minimum}..{self.maximum}"

    @property
    def scales(self) -> bool:
        return self.maximum > self.minimum


def _count(text: str, var: str, name: str) -> int:
    try:
        count = int(text.strip())
    except ValueError:
        raise ConfigError(f"{var}: count for {name!r} is not a whole number") from None
    if count < 0 or count > MAX_WORKERS_PER_TYPE:
        raise ConfigError(f"{var}: count for {name!r} must be between 0 and {MAX_WORKERS_PER_TYPE}")
    return count


def parse_fleet_ranges(text: str, var: str = "FOUNDRY_FLEET") -> dict[str, FleetRange]:
    """Parse ``type=count`` or ``type=min..max`` items into an ordered mapping of ranges."""
    fleet: dict[str, FleetRange] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, count_text = item.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(
                f"{var}: {item!r} is not 'type=count' or 'type=min..max' (example: {DEFAULT_FLEET})"
            )
        try:
            validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ConfigError(f"{var}: {exc}") from None
        low_text, dots, high_text = count_text.partition("..")
        low = _count(low_text, var, name)
        high = _count(high_text, var, name) if dots else low
        if low > high:
            raise ConfigError(
                f"{var}: range for {name!r} has its minimum {low} above its maximum {high}"
            )
        if name in fleet:
            raise ConfigError(f"{var}: agent type {name!r} is listed twice")
        fleet[name] = FleetRange(low, high)
    if not fleet:
        raise ConfigError(f"{var}: no agent types given (example: {DEFAULT_FLEET})")
    return fleet


def parse_fleet(text: str, var: str = "FOUNDRY_FLEET") -> dict[str, int]:
    """Parse ``type=count,type=min..max`` into an ordered mapping of each type's minimum."""
    return {name: r.minimum for name, r in parse_fleet_ranges(text, var).items()}


def parse_bindings(text: str, var: str = "FOUNDRY_HANDLERS") -> dict[str, str]:
    """Parse ``type=handler,type=handler`` (built-in names or ``package.module:attr``)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        name, sep, spec = (part.strip() for part in item.partition("="))
        if not sep or not spec:
            raise ConfigError(f"{var}: {item!r} is not 'type=handler' (example: coder=echo)")
        try:
            validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ConfigError(f"{var}: {exc}") from None
        out[name] = spec
    return out


def parse_role_secrets(text: str, var: str = "FOUNDRY_NATS_ROLE_PASSWORDS") -> dict[str, str]:
    """Parse ``role=password,role=password`` (never echoing a password in an error)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        role, sep, secret = item.partition("=")
        if not sep or not role.strip() or not secret:
            raise ConfigError(f"{var}: an item is not 'role=password'")
        out[role.strip()] = secret
    return out


def url(schemes: tuple[str, ...], many: bool = False) -> Callable[[str], str]:
    """A URL with one of ``schemes`` (``many``: a comma-separated list of them)."""

    def check(text: str) -> str:
        try:
            parts = urlsplit(text)
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise ValueError(f"{redact_url(text)!r} is not a URL") from None
        if parts.scheme not in schemes or not (parts.hostname or parts.scheme == "unix"):
            raise ValueError(
                f"{redact_url(text)!r}: expected a URL like {schemes[0]}://127.0.0.1:port"
            )
        return text

    def conv(text: str) -> str:
        if not many:
            return check(text)
        urls = split_urls(text)
        if not urls:
            raise ValueError(f"expected a URL like {schemes[0]}://127.0.0.1:port")
        return ",".join(check(one) for one in urls)

    return conv


def optional_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    """A URL as :func:`url`, or empty."""
    conv = url(schemes)
    return lambda text: conv(text) if text else ""


def positive(conv: Callable[[str], T], minimum: float = 0.0, strict: bool = True) -> Any:
    """``conv``'s value, greater than ``minimum`` (``strict=False``: at least ``minimum``)."""

    def check(text: str) -> T:
        value = conv(text)
        if strict and not value > minimum:  # type: ignore[operator]
            raise ValueError(f"must be greater than {minimum}")
        if not strict and value < minimum:  # type: ignore[operator]
            raise ValueError(f"must be at least {minimum}")
        return value

    return check


def flag(text: str) -> bool:
    """A switch: 1/0, true/false, yes/no, on/off; empty is off."""
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected 1/0, true/false, yes/no")


def default_on(text: str) -> bool:
    """A switch that an empty value leaves on (``off``/``0``/``false`` turn it off)."""
    return True if not text.strip() else flag(text)


def percent(text: str) -> float:
    value = float(text)
    if not 0 < value <= 100:
        raise ValueError("must be a percentage in (0, 100]")
    return value


def paths(text: str) -> tuple[Path, ...]:
    return tuple(Path(p.strip()) for p in text.split(",") if p.strip())


def size(text: str) -> int:
    """Bytes, with an optional K/M/G/T suffix (binary units); 0 means off."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*", text.upper())
    if not match:
        raise ValueError("expected a size like 512M, 2G or a number of bytes")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def namespace_name(text: str) -> str:
    if text and not _NAMESPACE_RE.fullmatch(text):
        raise ValueError("lowercase letters, digits, '_' or '-', starting with a letter")
    return text


def words(text: str) -> tuple[str, ...]:
    """A comma-separated list of names, blanks dropped."""
    return tuple(w.strip() for w in text.split(",") if w.strip())


def lower_words(text: str) -> tuple[str, ...]:
    return tuple(w.lower() for w in words(text))


def origins(text: str) -> tuple[str, ...]:
    out = lower_words(text)
    for origin in out:
        parts = urlsplit(origin)
        if (
            parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.path not in ("", "/")
        ):
            raise ValueError(f"{origin!r} is not an origin like https://app.example.com:8443")
    return tuple(o.rstrip("/") for o in out)


def max_wait(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise ValueError("must be seconds in (0, 3600]")
    return value


def port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a port number 0-65535")
    return value


def choice(*allowed: str) -> Callable[[str], str]:
    def conv(text: str) -> str:
        if text not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return text

    return conv


def uid_range(text: str) -> str:
    """``first-last`` (inclusive) of unprivileged uids; empty: none."""
    if not text:
        return ""
    match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", text)
    if not match:
        raise ValueError("expected a uid range like 60000-60999")
    first, last = int(match.group(1)), int(match.group(2))
    if not 1000 <= first <= last < 2**31:
        raise ValueError("the range must be ascending, from 1000 up (never root or system uids)")
    return f"{first}-{last}"


def grants(text: str) -> tuple[str, ...]:
    """``type=VARIABLE`` items: which extra secret variables a type's worker may have."""
    out: list[str] = []
    for item in words(text):
        name, sep, var = (part.strip() for part in item.partition("="))
        if not sep or not _VAR_RE.fullmatch(var):
            raise ValueError(
                f"{item!r} is not 'type=VARIABLE' (example: reviewer=FOUNDRY_LLM_API_KEY)"
            )
        try:
            validate_agent_type(name)
        except InvalidAgentType as exc:
            raise ValueError(str(exc)) from None
        out.append(f"{name}={var}")
    return tuple(out)


def subject_prefix(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_$-]+(\.[A-Za-z0-9_$-]+)*", text):
        raise ValueError("expected subject tokens such as _INBOX (no wildcards or spaces)")
    return text


def existing_file(text: str) -> str:
    """A path to a file that exists, or empty."""
    if text and not Path(text).is_file():
        raise ValueError("no such file")
    return text


def lease_ttl(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 300:
        raise ValueError("must be whole seconds from 1 to 300")
    return value
