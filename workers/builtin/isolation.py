"""Choosing how ``exec`` isolates task code, and checking that it works on this host.

``FOUNDRY_EXEC_ISOLATION=bwrap`` (the default) needs a working bubblewrap: it is
found, and a probe program is run in a box exactly as tasks are. When that
fails, the reason is kept and every task fails with it: code never runs with
less isolation than configured. ``FOUNDRY_EXEC_ISOLATION=none`` runs code with
rlimits only, and says so in a warning at every start.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from foundry.settings import Settings
from workers.builtin import bwrap
from workers.builtin.sandbox import Boxed, Limits, NoFreeUid, Plain, find_program, run_sandboxed
from workers.builtin.uidpool import UidPool, parse_range

log = logging.getLogger(__name__)
PROBE_MARK = "foundry-sandbox-ok"
PROBE_LIMITS = Limits(
    timeout=15.0,
    cpu_seconds=5,
    memory_bytes=512 * 1024 * 1024,
    file_bytes=1024 * 1024,
    max_procs=16,
    output_bytes=4096,
)


@dataclass(frozen=True)
class Decision:
    """How code runs (``isolation``), or why it must not run (``refusal``)."""

    isolation: Boxed | Plain | None
    refusal: str | None = None


_decided: dict[tuple[object, ...], Decision] = {}


def _key(settings: Settings) -> tuple[object, ...]:
    return (
        settings.exec.isolation,
        settings.exec.bwrap,
        settings.exec.uids,
        settings.exec.tmp_bytes,
        settings.exec.python,
        settings.exec.user,
        os.geteuid(),
    )


async def decide(settings: Settings, *, fresh: bool = False) -> Decision:
    """The isolation for ``settings`` (probed once per process and configuration)."""
    key = _key(settings)
    if fresh or key not in _decided:
        _decided[key] = await _decide(settings)
    return _decided[key]


def announce(decision: Decision) -> None:
    """Log what a worker's ``exec`` will do: refuse (an error) or run unisolated (a warning)."""
    if decision.refusal:
        log.error("%s", decision.refusal)
    elif isinstance(decision.isolation, Plain):
        log.warning(
            "exec: FOUNDRY_EXEC_ISOLATION=none: task code runs WITHOUT isolation (rlimits only: "
            "it shares this host's network, filesystem and processes); set "
            "FOUNDRY_EXEC_ISOLATION=bwrap for the bubblewrap sandbox"
        )
    else:
        log.info(
            "exec: task code runs under bubblewrap (%s)", getattr(decision.isolation, "bwrap", None)
        )


async def _decide(settings: Settings) -> Decision:
    if settings.exec.isolation == "none":
        return Decision(Plain(settings.exec.user))
    found = bwrap.find(settings.exec.bwrap)
    if isinstance(found, str):
        return _refuse(found)
    pool = None
    if os.geteuid() == 0:
        uids = parse_range(settings.exec.uids)
        if uids is None:
            return _refuse("the worker runs as root and FOUNDRY_EXEC_UIDS is empty")
        pool = UidPool(*uids)
        try:
            pool.check()
        except OSError as exc:
            return _refuse(f"cannot lease sandbox uids (FOUNDRY_EXEC_UIDS): {exc}")
    box = Boxed(found, pool, settings.exec.tmp_bytes)
    problem = await probe(box, settings)
    return _refuse(problem) if problem else Decision(box)


def _refuse(reason: str) -> Decision:
    return Decision(
        None,
        f"exec: no sandbox: {reason}. Task code is not run without isolation unless the "
        "operator sets FOUNDRY_EXEC_ISOLATION=none",
    )


async def probe(box: Boxed, settings: Settings) -> str | None:
    """Run a probe in ``box`` as tasks run; None when it worked, else what went wrong."""
    python = find_program(settings.exec.python)
    if python is not None:
        argv = [python, "-I", "-c", f"print({PROBE_MARK!r})"]
    else:
        shell = find_program("sh") or "/bin/sh"
        argv = [shell, "-c", f"echo {PROBE_MARK}"]
    try:
        outcome = await run_sandboxed(argv, {}, PROBE_LIMITS, isolation=box)
    except (OSError, NoFreeUid) as exc:
        return f"the probe could not start: {exc}"
    if outcome.exit_code == 0 and outcome.stdout.decode(errors="replace").strip() == PROBE_MARK:
        return None
    detail = outcome.stderr.decode("utf-8", "replace").strip()[:300] or "no output"
    return f"{box.bwrap.path} failed its probe (exit code {outcome.exit_code}): {detail}"
