"""Binding agent types to handlers: built-in names or ``package.module:attr`` dotted paths."""

from __future__ import annotations

import importlib
import inspect

from foundry.bindings import DEFAULT_BINDINGS, FALLBACK_HANDLER, handler_spec
from foundry.errors import ConfigError
from workers.builtin import BUILTIN_HANDLERS
from workers.handlers import BaseHandler, Handler

__all__ = ["DEFAULT_BINDINGS", "FALLBACK_HANDLER", "handler_for", "resolve_handler"]


def _is_async(obj: object) -> bool:
    if inspect.isclass(obj):
        return False
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(
        getattr(obj, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def resolve_handler(spec: str, var: str = "FOUNDRY_HANDLERS") -> Handler:
    """Turn a built-in name or ``module:attr`` into a callable, or raise ConfigError.

    A built-in with lifecycle hooks comes as a fresh instance: its ``setup`` state
    (sessions, the sandbox check) belongs to the one worker that resolved it.
    """
    if spec in BUILTIN_HANDLERS:
        builtin = BUILTIN_HANDLERS[spec]
        return type(builtin)() if isinstance(builtin, BaseHandler) else builtin
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        known = ", ".join(sorted(BUILTIN_HANDLERS))
        raise ConfigError(
            f"{var}: handler {spec!r} is neither a built-in ({known}) nor 'package.module:function'"
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise ConfigError(f"{var}: cannot import {module_name!r} for {spec!r}: {exc!r}") from None
    try:
        handler = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{var}: module {module_name!r} has no attribute {attr!r}") from None
    if not callable(handler):
        raise ConfigError(f"{var}: {spec!r} is not callable")
    if not _is_async(handler):
        raise ConfigError(f"{var}: {spec!r} must be an async function: async def {attr}(ctx)")
    return handler  # type: ignore[no-any-return]


def handler_for(agent_type: str, bindings: dict[str, str]) -> tuple[str, Handler]:
    """The (spec, handler) bound to ``agent_type``: configured, else default, else echo."""
    spec = handler_spec(agent_type, bindings)
    return spec, resolve_handler(spec)
