"""Sandbox launcher, run as ``python -I -S launch.py '<spec json>' <program> <args...>``.

It runs in the sandbox's own process, between fork and the program (bubblewrap,
or the user's code when there is no isolation): drops root when running as
root — to the spec's ``uid``/``gid``, or to ``user`` after handing it the
working folder — sets the rlimits, restores the signal dispositions Python
changed, then execs the program. Standard library only (it starts with ``-I -S``); its own
failures go to stderr prefixed ``foundry-sandbox:`` with exit code 125.
"""

from __future__ import annotations

import json
import os
import pwd
import resource
import signal
import sys
from typing import Any

LAUNCH_FAILED = 125
PREFIX = "foundry-sandbox:"


def tasks_of(uid: int) -> int:
    """Processes and threads owned by ``uid``: RLIMIT_NPROC counts them all."""
    total = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for name in entries:
        if not name.isdigit():
            continue
        owner, threads = -1, 0
        try:
            with open(f"/proc/{name}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        owner = int(line.split()[1])
                    elif line.startswith(b"Threads:"):
                        threads = int(line.split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if owner == uid:
            total += threads
    return total


def set_limit(which: int, soft: int, hard: int | None = None) -> None:
    """Lower a limit to ``soft``/``hard``, never above the hard limit already in force."""
    hard = soft if hard is None else hard
    _, current = resource.getrlimit(which)
    if current != resource.RLIM_INFINITY:
        soft, hard = min(soft, current), min(hard, current)
    resource.setrlimit(which, (soft, hard))


def drop_to(user: str, workdir: str) -> None:
    """Give ``workdir`` to ``user`` and become that user (no supplementary groups)."""
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(workdir):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files + dirs:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def drop_to_uid(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` (no supplementary groups)."""
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def launch(spec: dict[str, Any], argv: list[str]) -> None:
    if os.geteuid() == 0 and spec.get("uid") is not None:
        drop_to_uid(int(spec["uid"]), int(spec["gid"]))
    elif os.geteuid() == 0 and spec.get("user"):
        drop_to(str(spec["user"]), os.getcwd())
    set_limit(resource.RLIMIT_CORE, 0)
    cpu = int(spec["cpu_seconds"])
    set_limit(resource.RLIMIT_CPU, cpu, cpu + 1)  # SIGXCPU at the soft limit, SIGKILL 1 s on
    set_limit(resource.RLIMIT_AS, int(spec["memory_bytes"]))
    set_limit(resource.RLIMIT_FSIZE, int(spec["file_bytes"]))
    # Per uid, not per sandbox: allow this many more than the uid runs right now (and
    # bubblewrap's own processes, when it runs the program).
    extra = int(spec.get("extra_procs", 0))
    set_limit(resource.RLIMIT_NPROC, tasks_of(os.getuid()) + int(spec["max_procs"]) + extra)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    os.execv(argv[0], argv)


def main() -> None:
    try:
        launch(json.loads(sys.argv[1]), sys.argv[2:])
    except BaseException as exc:
        print(f"{PREFIX} {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        os._exit(LAUNCH_FAILED)


if __name__ == "__main__":
    main()
