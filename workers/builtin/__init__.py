"""The built-in handlers, by the name ``FOUNDRY_HANDLERS`` binds them with.

``echo`` returns its input. See docs/handlers.md.
"""

from __future__ import annotations

from workers.handlers import Handler, echo

BUILTIN_HANDLERS: dict[str, Handler] = {"echo": echo}

__all__ = ["BUILTIN_HANDLERS", "echo"]
