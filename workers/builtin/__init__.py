"""The built-in handlers, by the name ``FOUNDRY_HANDLERS`` binds them with.

``echo`` returns its input; ``exec`` runs code in a bubblewrap sandbox; ``llm``
asks an OpenAI-compatible chat-completions server; ``webhook`` POSTs the task
to a deploy webhook. See docs/handlers.md.
"""

from __future__ import annotations

from workers.builtin.exec import exec_handler
from workers.builtin.llm import llm_handler
from workers.builtin.webhook import webhook_handler
from workers.handlers import Handler, echo

BUILTIN_HANDLERS: dict[str, Handler] = {
    "echo": echo,
    "exec": exec_handler,
    "llm": llm_handler,
    "webhook": webhook_handler,
}

__all__ = ["BUILTIN_HANDLERS", "echo", "exec_handler", "llm_handler", "webhook_handler"]
