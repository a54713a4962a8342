"""The built-in handlers' knobs, one frozen section each: ``Settings.exec``, ``.llm``, ``.webhook``.

Every field is still read from its own ``FOUNDRY_*`` variable by
:meth:`foundry.settings.Settings.from_env` and written back by ``to_env``; a
section only groups them. Fields that may hold a secret stay out of ``repr``.
"""

from __future__ import annotations

from dataclasses import dataclass

from foundry.settingsparse import choice, flag, opt, optional_url, positive, size, uid_range, words


@dataclass(frozen=True)
class ExecSettings:
    """Built-in handler ``exec``: caps on what one run may use (a task may ask for less)."""

    timeout: float = opt("FOUNDRY_EXEC_TIMEOUT", positive(float), 30.0)
    cpu_seconds: int = opt("FOUNDRY_EXEC_CPU_SECONDS", positive(int), 10)
    memory_bytes: int = opt("FOUNDRY_EXEC_MEMORY_BYTES", positive(int), 512 * 1024 * 1024)
    file_bytes: int = opt("FOUNDRY_EXEC_FILE_BYTES", positive(int), 16 * 1024 * 1024)
    max_procs: int = opt("FOUNDRY_EXEC_MAX_PROCS", positive(int), 64)
    output_bytes: int = opt("FOUNDRY_EXEC_OUTPUT_BYTES", positive(int), 64 * 1024)
    python: str = opt("FOUNDRY_EXEC_PYTHON", str, "python3")
    user: str = opt("FOUNDRY_EXEC_USER", str, "nobody")
    # How task code is isolated: bubblewrap, or (explicitly) nothing beyond rlimits.
    isolation: str = opt("FOUNDRY_EXEC_ISOLATION", choice("bwrap", "none"), "bwrap")
    bwrap: str = opt("FOUNDRY_EXEC_BWRAP", str, "bwrap")
    allow_network: bool = opt("FOUNDRY_EXEC_ALLOW_NETWORK", flag, False)
    # Host uids for sandboxes when the worker runs as root: one per concurrent task.
    uids: str = opt("FOUNDRY_EXEC_UIDS", uid_range, "60000-60999")
    tmp_bytes: int = opt("FOUNDRY_EXEC_TMP_BYTES", size, 64 * 1024 * 1024)


@dataclass(frozen=True)
class LlmSettings:
    """Built-in handler ``llm``: an OpenAI-compatible chat-completions server."""

    url: str = opt("FOUNDRY_LLM_URL", optional_url(("http", "https")), "", repr=False)
    model: str = opt("FOUNDRY_LLM_MODEL", str, "")
    api_key: str = opt("FOUNDRY_LLM_API_KEY", str, "", repr=False)
    timeout: float = opt("FOUNDRY_LLM_TIMEOUT", positive(float), 120.0)
    retries: int = opt("FOUNDRY_LLM_RETRIES", positive(int, 0, strict=False), 4)
    backoff: float = opt("FOUNDRY_LLM_BACKOFF", positive(float, 0.0, strict=False), 1.0)
    stream: bool = opt("FOUNDRY_LLM_STREAM", flag, True)
    prompts_dir: str = opt("FOUNDRY_LLM_PROMPTS_DIR", str, "")
    # Models a task may pick (``model`` is always allowed), the max_tokens cap,
    # and whether a task may bring its own system messages.
    models: tuple[str, ...] = opt("FOUNDRY_LLM_MODELS", words, ())
    max_tokens: int = opt("FOUNDRY_LLM_MAX_TOKENS", positive(int), 4096)
    allow_system: bool = opt("FOUNDRY_LLM_ALLOW_SYSTEM", flag, False)


@dataclass(frozen=True)
class WebhookSettings:
    """Built-in handler ``webhook``. The URL may embed a token: kept out of repr too."""

    url: str = opt("FOUNDRY_DEPLOY_WEBHOOK_URL", optional_url(("http", "https")), "", repr=False)
    secret: str = opt("FOUNDRY_WEBHOOK_SECRET", str, "", repr=False)
    timeout: float = opt("FOUNDRY_WEBHOOK_TIMEOUT", positive(float), 10.0)
