"""Built-in handler ``exec`` (default for ``executor``): run ``input.code`` in a sandbox.

Input: ``code`` (text), ``language`` (``python``, the default, or ``bash``),
optional ``stdin`` (text), ``network`` (true: the box shares the host's network;
only when ``FOUNDRY_EXEC_ALLOW_NETWORK=1``) and ``limits`` (any of ``timeout``,
``cpu_seconds``, ``memory_bytes``, ``file_bytes``, ``max_procs``,
``output_bytes``; each is capped by its ``FOUNDRY_EXEC_*`` setting).

The ``setup`` hook decides the isolation once per worker
(:mod:`workers.builtin.isolation`): bubblewrap, probed; or none, when the
operator says so. When no sandbox works, every task fails saying why.

The program ran → a completed result with ``exit_code`` (non-zero included),
``stdout``, ``stderr`` and ``duration_seconds``. A limit stopped it → a failed
task whose error names the limit, with the same fields as the result.
"""

from __future__ import annotations

import dataclasses
import math
import signal
from typing import Any

from foundry.settings import Settings
from workers.builtin.isolation import Decision, announce, decide
from workers.builtin.launch import LAUNCH_FAILED, PREFIX
from workers.builtin.sandbox import (
    Boxed,
    Limits,
    NoFreeUid,
    Outcome,
    Plain,
    find_program,
    run_sandboxed,
)
from workers.handlers import BaseHandler, RetryableError, TaskContext, TaskFailed

# limit name (a field of settings.exec) -> (environment variable, unit shown in errors)
LIMITS: dict[str, tuple[str, str]] = {
    "timeout": ("FOUNDRY_EXEC_TIMEOUT", "s"),
    "cpu_seconds": ("FOUNDRY_EXEC_CPU_SECONDS", "s"),
    "memory_bytes": ("FOUNDRY_EXEC_MEMORY_BYTES", " bytes"),
    "file_bytes": ("FOUNDRY_EXEC_FILE_BYTES", " bytes"),
    "max_procs": ("FOUNDRY_EXEC_MAX_PROCS", " processes"),
    "output_bytes": ("FOUNDRY_EXEC_OUTPUT_BYTES", " bytes per stream"),
}
LANGUAGES = {"python": "main.py", "bash": "main.sh"}

# What a program prints when an rlimit refused it something (checked only on failure).
_STDERR_SIGNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "memory_bytes",
        (
            "MemoryError",
            "Cannot allocate memory",
            "cannot allocate",
            "std::bad_alloc",
            "out of memory",
        ),
    ),
    ("file_bytes", ("File too large", "File size limit exceeded")),
    ("cpu_seconds", ("CPU time limit exceeded",)),
    ("max_procs", ("Resource temporarily unavailable",)),
)


def effective_limits(settings: Settings, requested: Any) -> Limits:
    """The settings' caps, lowered where the task asked for less."""
    if requested is None:
        requested = {}
    if not isinstance(requested, dict):
        raise TaskFailed('exec: input.limits must be an object like {"timeout": 5}')
    unknown = sorted(set(requested) - set(LIMITS))
    if unknown:
        raise TaskFailed(f"exec: unknown limit(s) {unknown}; known: {', '.join(LIMITS)}")
    values: dict[str, Any] = {}
    for name in LIMITS:
        cap = getattr(settings.exec, name)
        asked = requested.get(name)
        if asked is None:
            values[name] = cap
            continue
        if isinstance(asked, bool) or not isinstance(asked, int | float) or not asked > 0:
            raise TaskFailed(f"exec: input.limits.{name} must be a positive number")
        values[name] = min(max(1, math.ceil(asked)) if isinstance(cap, int) else asked, cap)
    return Limits(**values)


def _program(settings: Settings, language: str) -> list[str]:
    if language == "python":
        path = find_program(settings.exec.python)
        if path is None:
            raise TaskFailed(
                f"exec: Python interpreter {settings.exec.python!r} not found on the sandbox "
                "PATH; set FOUNDRY_EXEC_PYTHON to an interpreter's absolute path"
            )
        return [path, "-B", "-u", LANGUAGES[language]]
    path = find_program("bash")
    if path is None:
        raise TaskFailed("exec: bash not found on the sandbox PATH (/usr/local/bin:/usr/bin:/bin)")
    return [path, "--noprofile", "--norc", LANGUAGES[language]]


def _limit_hit(outcome: Outcome) -> str | None:
    """Which limit stopped the program, if one did."""
    if outcome.limit is not None:
        return outcome.limit
    code = outcome.exit_code
    if code == -signal.SIGXCPU:
        return "cpu_seconds"
    if code == -signal.SIGXFSZ:
        return "file_bytes"
    if code == 0:
        return None
    stderr = outcome.stderr.decode("utf-8", "replace")
    for name, signs in _STDERR_SIGNS:
        if any(sign in stderr for sign in signs):
            return name
    return None


def _describe(limit: str, limits: Limits) -> str:
    var, unit = LIMITS[limit]
    value = getattr(limits, limit)
    shown = f"{value:g}" if isinstance(value, float) else str(value)
    what = {"timeout": "wall-clock timeout", "output_bytes": "output limit"}.get(
        limit, f"{limit} limit"
    )
    return f"exec: {what} hit ({shown}{unit}; input.limits.{limit} or {var})"


def _bwrap_failed(stderr: str) -> bool:
    """bubblewrap could not build the box (its own messages start ``bwrap:``)."""
    return stderr.startswith("bwrap: ")


def _signal_name(code: int | None) -> str | None:
    if code is None or code >= 0:
        return None
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _network(spec: dict[str, Any], settings: Settings) -> bool:
    asked = spec.get("network", False)
    if not isinstance(asked, bool):
        raise TaskFailed("exec: input.network must be true or false")
    if asked and not settings.exec.allow_network:
        raise TaskFailed(
            "exec: input.network is refused: this worker's operator has not allowed "
            "networked tasks (FOUNDRY_EXEC_ALLOW_NETWORK=1)"
        )
    return asked


def _isolation(decision: Decision, network: bool) -> Boxed | Plain:
    if decision.refusal or decision.isolation is None:
        raise TaskFailed(decision.refusal or "exec: no sandbox")
    if isinstance(decision.isolation, Boxed) and network:
        return dataclasses.replace(decision.isolation, network=True)
    return decision.isolation


class ExecHandler(BaseHandler):
    """Run ``input.code`` in the sandbox and report how it went."""

    def __init__(self) -> None:
        self.decision: Decision | None = None

    async def setup(self, settings: Settings) -> None:
        self.decision = await decide(settings, fresh=True)
        announce(self.decision)

    async def close(self) -> None:
        self.decision = None

    async def __call__(self, ctx: TaskContext) -> dict[str, Any]:
        # Called without a worker (no setup): decide for this context's settings.
        decision = self.decision or await decide(ctx.settings)
        return await _run(ctx, decision)


async def _run(ctx: TaskContext, decision: Decision) -> dict[str, Any]:
    spec = ctx.input if isinstance(ctx.input, dict) else {}
    code = spec.get("code")
    if not isinstance(code, str) or not code.strip():
        raise TaskFailed("exec: input.code is required (the program text to run)")
    language = spec.get("language", "python")
    if language not in LANGUAGES:
        raise TaskFailed(f"exec: input.language must be one of {', '.join(LANGUAGES)}")
    stdin = spec.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise TaskFailed("exec: input.stdin must be text")
    settings = ctx.settings
    limits = effective_limits(settings, spec.get("limits"))
    isolation = _isolation(decision, _network(spec, settings))
    argv = _program(settings, language)
    await ctx.progress(f"running {language}")
    try:
        outcome = await run_sandboxed(
            argv, {LANGUAGES[language]: code}, limits, isolation=isolation, stdin=stdin,
            on_output=lambda stream, data: ctx.emit(data, stream),
        )  # fmt: skip
    except NoFreeUid as exc:
        raise RetryableError(f"exec: {exc} (FOUNDRY_EXEC_UIDS)") from None
    result: dict[str, Any] = {
        "exit_code": outcome.exit_code,
        "signal": _signal_name(outcome.exit_code),
        "stdout": outcome.stdout.decode("utf-8", "replace"),
        "stderr": outcome.stderr.decode("utf-8", "replace"),
        "stdout_truncated": outcome.stdout_truncated,
        "stderr_truncated": outcome.stderr_truncated,
        "duration_seconds": round(outcome.duration, 6),
        "language": language,
        "limits": {name: getattr(limits, name) for name in LIMITS},
        "limit": None,
        "isolation": "bwrap" if isinstance(isolation, Boxed) else "none",
        "network": isolation.network if isinstance(isolation, Boxed) else True,
    }
    if outcome.exit_code == LAUNCH_FAILED and result["stderr"].startswith(PREFIX):
        raise TaskFailed(f"exec: the sandbox did not start: {result['stderr'].strip()}", result)
    if isinstance(isolation, Boxed) and outcome.exit_code == 1 and _bwrap_failed(result["stderr"]):
        raise TaskFailed(f"exec: the sandbox did not start: {result['stderr'].strip()}", result)
    limit = _limit_hit(outcome)
    if limit is not None:
        result["limit"] = limit
        raise TaskFailed(_describe(limit, limits), result)
    return result


exec_handler = ExecHandler()
